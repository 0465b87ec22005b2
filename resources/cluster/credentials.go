package cluster

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/upshift-io/upshift/resources"
)

// CredentialsType is the type of Credentials resources.
const CredentialsType = resource.Type("Credentials.upshift.dev")

// Credentials are what the engine needs to reach one cluster: a talosconfig for the Talos API and a kubeconfig for
// Kubernetes. Its ID is the cluster's ID.
// The definition is marked sensitive: the store encrypts them at rest and the API shows them redacted.
type Credentials = typed.Resource[CredentialsSpec, CredentialsExtension]

// CredentialsSpec holds the two client configurations of a cluster.
type CredentialsSpec struct {
	// Talosconfig is a talosctl client configuration with access to every machine of the cluster.
	Talosconfig string `yaml:"talosconfig,omitempty" protobuf:"1"`
	// Kubeconfig is a kubectl client configuration with cluster-admin rights.
	Kubeconfig string `yaml:"kubeconfig,omitempty" protobuf:"2"`
}

// NewCredentials returns empty Credentials for the cluster named id.
func NewCredentials(id resource.ID) *Credentials {
	return resources.NewTyped[CredentialsSpec, CredentialsExtension](CredentialsType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s CredentialsSpec) DeepCopy() CredentialsSpec { return s }

// Validate implements resources.Validator: the name is the cluster's, which must exist.
func (s *CredentialsSpec) Validate(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v violations

	v.CheckDNSLabel("metadata.id", md.ID())

	if err := v.checkCluster(ctx, st, "metadata.id", md.ID()); err != nil {
		return err
	}

	if s.Talosconfig == "" && s.Kubeconfig == "" {
		v.Add("spec", "needs spec.talosconfig, spec.kubeconfig or both")
	}

	// The parsers' errors may quote the text they choke on, which here is a secret: they are not passed on.
	switch {
	case s.Talosconfig == resources.Redacted:
		v.Add("spec.talosconfig", "%s", redactedProblem)
	case s.Talosconfig != "":
		if _, err := clientconfig.FromString(s.Talosconfig); err != nil {
			v.Add("spec.talosconfig", "is not a talosconfig (YAML with a context naming endpoints, CA, certificate and key)")
		}
	}

	switch {
	case s.Kubeconfig == resources.Redacted:
		v.Add("spec.kubeconfig", "%s", redactedProblem)
	case s.Kubeconfig != "":
		if _, err := clientcmd.Load([]byte(s.Kubeconfig)); err != nil {
			v.Add("spec.kubeconfig", "is not a kubeconfig (YAML with clusters, users and contexts)")
		}
	}

	return v.Err()
}

// redactedProblem refuses writing back what a read without --show-secrets returned.
var redactedProblem = fmt.Sprintf("is %q, the placeholder a read without --show-secrets shows; write the configuration itself", resources.Redacted)

// Redact implements resources.Redactor: which of the two configurations are set stays visible, not their content.
func (s *CredentialsSpec) Redact() {
	for _, secret := range []*string{&s.Talosconfig, &s.Kubeconfig} {
		if *secret != "" {
			*secret = resources.Redacted
		}
	}
}

// CredentialsExtension gives Credentials its resource definition.
type CredentialsExtension struct{}

// ResourceDefinition implements typed.Extension.
func (CredentialsExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             CredentialsType,
		Aliases:          []resource.Type{"creds"},
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Talosconfig", JSONPath: "{.talosconfig}"},
			{Name: "Kubeconfig", JSONPath: "{.kubeconfig}"},
		},
		Sensitivity: meta.Sensitive,
	}
}

func init() {
	resources.MustRegisterType[CredentialsSpec, CredentialsExtension](CredentialsType)
}
