package cluster

import (
	"context"
	"net"
	"strconv"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// MachineType is the type of Machine resources.
const MachineType = resource.Type("Machines.upshift.dev")

// DefaultInstallerImage is the installer image repository used when a Machine names none.
const DefaultInstallerImage = "ghcr.io/siderolabs/installer"

// Role is the part a machine plays in its cluster; it decides the upgrade order and the etcd checks.
type Role string

// Machine roles.
const (
	// RoleControlPlane machines run etcd and the Kubernetes control plane; they upgrade first, one at a time.
	RoleControlPlane Role = "controlplane"
	// RoleWorker machines run workloads; they upgrade after the control planes, Cluster.Parallelism at a time.
	RoleWorker Role = "worker"
)

// checkRole adds a violation for field unless role is known (or empty when not required).
func (v *violations) checkRole(field string, role Role, required bool) {
	switch role {
	case RoleControlPlane, RoleWorker:
	case "":
		if required {
			v.Add(field, "is required (%q or %q)", RoleControlPlane, RoleWorker)
		}
	default:
		v.Add(field, "%q is not a role (%q or %q)", role, RoleControlPlane, RoleWorker)
	}
}

// violations adds the rules shared by this package's types to resources.Violations.
type violations struct{ resources.Violations }

// Machine is one Talos machine of a cluster, and how to reach it. Its ID is the machine's name, which is also its
// Talos node name and its Kubernetes node name.
type Machine = typed.Resource[MachineSpec, MachineExtension]

// MachineSpec says where a machine belongs and how to reach it.
type MachineSpec struct {
	// Cluster is the ID of the Cluster the machine belongs to.
	Cluster string `yaml:"cluster" protobuf:"1"`
	// Role is RoleControlPlane or RoleWorker.
	Role Role `yaml:"role" protobuf:"2"`
	// Endpoint is the machine's Talos API address, host:port.
	Endpoint string `yaml:"endpoint" protobuf:"3"`
	// InstallerImage is the installer image repository, without a tag; the target version is the tag.
	// Empty means DefaultInstallerImage.
	InstallerImage string `yaml:"installerImage,omitempty" protobuf:"4"`
}

// LabelCluster names a resource's cluster on every per-machine resource (Machine, MachineStatus,
// MachineUpgradeStatus), so a cluster's are found with a label query (`upshift get machines -l
// upshift.dev/cluster=c1`, or a controller's list).
const LabelCluster = "upshift.dev/cluster"

// Labels implements resources.Labeller: a Machine carries its cluster as LabelCluster.
func (s *MachineSpec) Labels() map[string]string {
	return map[string]string{LabelCluster: s.Cluster}
}

// NewMachine returns an empty Machine named id.
func NewMachine(id resource.ID) *Machine {
	return resources.NewTyped[MachineSpec, MachineExtension](MachineType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s MachineSpec) DeepCopy() MachineSpec { return s }

// Validate implements resources.Validator. The name is a DNS-1123 label: it is also the machine's Talos and
// Kubernetes node name. A Machine never changes cluster: its upgrade, observations and locks belong to the cluster
// it was created in, and a Talos machine only joins another cluster after a reset, so it is deleted and created
// again there; while one of its upgrade steps runs, not even that (CheckDestroy), and the refusal says which.
func (s *MachineSpec) Validate(ctx context.Context, md *resource.Metadata, st resources.Getter) error {
	var v violations

	v.CheckDNSLabel("metadata.id", md.ID())

	if err := v.checkCluster(ctx, st, "spec.cluster", s.Cluster); err != nil {
		return err
	}

	if err := v.checkSameCluster(ctx, st, md, s.Cluster); err != nil {
		return err
	}

	v.checkRole("spec.role", s.Role, true)

	if s.Endpoint == "" {
		v.Add("spec.endpoint", "is required (the Talos API address, host:port)")
	} else if host, port, err := net.SplitHostPort(s.Endpoint); err != nil || host == "" || !validPort(port) {
		v.Add("spec.endpoint", "%q is not an address like 192.0.2.10:50000", s.Endpoint)
	}

	if s.InstallerImage != "" {
		lastPart := s.InstallerImage[strings.LastIndex(s.InstallerImage, "/")+1:]
		if strings.ContainsAny(s.InstallerImage, " \t@") || strings.Contains(lastPart, ":") {
			v.Add("spec.installerImage", "%q is not an image repository without tag or digest, like %s", s.InstallerImage, DefaultInstallerImage)
		}
	}

	return v.Err()
}

// Image returns the installer image reference for version.
func (s *MachineSpec) Image(version string) string {
	repo := s.InstallerImage
	if repo == "" {
		repo = DefaultInstallerImage
	}

	return repo + ":" + version
}

func validPort(port string) bool {
	n, err := strconv.Atoi(port)

	return err == nil && n > 0 && n < 65536
}

// checkSameCluster adds a violation when the stored Machine md belongs to a cluster other than cluster.
func (v *violations) checkSameCluster(ctx context.Context, st resources.Getter, md *resource.Metadata, cluster string) error {
	current, err := getOptional[*Machine](ctx, st, resource.NewMetadata(md.Namespace(), md.Type(), md.ID(), resource.VersionUndefined))
	if err != nil || current == nil || current.TypedSpec().Cluster == cluster {
		return err
	}

	was := current.TypedSpec().Cluster

	step, err := stepInFlight(ctx, st, md.ID(), was)
	if err != nil {
		return err
	}

	if step != "" {
		v.Add("spec.cluster", "cannot change from %q to %q while an upgrade of the machine runs: %s", was, cluster, step)

		return nil
	}

	v.Add("spec.cluster", "cannot change from %q to %q: delete the Machine and create it in the other cluster", was, cluster)

	return nil
}

// checkCluster adds a violation unless id names an existing Cluster.
func (v *violations) checkCluster(ctx context.Context, st resources.Getter, field, id string) error {
	if id == "" {
		v.Add(field, "is required (the name of a Cluster)")

		return nil
	}

	_, err := v.CheckExists(ctx, st, field, NewCluster(id).Metadata())

	return err
}

// MachineExtension gives Machine its resource definition.
type MachineExtension struct{}

// ResourceDefinition implements typed.Extension.
func (MachineExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             MachineType,
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Cluster", JSONPath: "{.cluster}"},
			{Name: "Role", JSONPath: "{.role}"},
			{Name: "Endpoint", JSONPath: "{.endpoint}"},
		},
	}
}

func init() {
	resources.MustRegisterType[MachineSpec, MachineExtension](MachineType)
}
