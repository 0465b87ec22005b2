// Package cluster holds the input resources users write to describe their fleet and what it should run: Cluster,
// Machine, MachineLock, ConfigPatch and Credentials.
package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/typed"

	"github.com/upshift-io/upshift/resources"
)

// ClusterType is the type of Cluster resources.
const ClusterType = resource.Type("Clusters.upshift.dev")

// Defaults applied when a Cluster leaves a field empty.
const (
	// DefaultParallelism upgrades one worker at a time.
	DefaultParallelism = "1"
	// DefaultDrainTimeout bounds how long draining one node may take.
	DefaultDrainTimeout = 5 * time.Minute
)

// ManifestSyncMode says whether bootstrap manifests are applied only on request or by themselves.
type ManifestSyncMode string

// Manifest sync modes.
const (
	// ManifestSyncManual shows the diff and waits for `upshift manifests sync` (the default).
	ManifestSyncManual ManifestSyncMode = "manual"
	// ManifestSyncAuto applies the diff by itself once an upgrade is Done, never while one runs and never over a
	// field another manager set.
	ManifestSyncAuto ManifestSyncMode = "auto"
)

// KubernetesChecks are the names of the pre-checks of a Kubernetes upgrade, which --skip-checks takes: component
// flags, feature gates and admission plugins the target removes, and objects of API versions it no longer serves.
var KubernetesChecks = []string{"removed-flags", "removed-feature-gates", "removed-admission-plugins", "removed-apis"}

// Cluster is the desired state of one Talos cluster: the versions it should run and how fast to roll them out.
// Its ID is the cluster name.
type Cluster = typed.Resource[ClusterSpec, ClusterExtension]

// ClusterSpec is what a user asks of a cluster.
type ClusterSpec struct {
	// TalosVersion is the Talos version every machine should run, e.g. v1.14.1.
	TalosVersion string `yaml:"talosVersion" protobuf:"1"`
	// KubernetesVersion is the Kubernetes version the cluster should run, e.g. v1.37.2.
	KubernetesVersion string `yaml:"kubernetesVersion" protobuf:"2"`
	// Parallelism is how many workers upgrade at once: a count ("2") or a percentage of the workers ("25%").
	// Control planes always upgrade one at a time. Empty means DefaultParallelism.
	Parallelism string `yaml:"parallelism,omitempty" protobuf:"3"`
	// DrainTimeout bounds the drain of one node, as a Go duration ("10m"). Empty means DefaultDrainTimeout.
	DrainTimeout string `yaml:"drainTimeout,omitempty" protobuf:"4"`
	// ManifestSync is the bootstrap-manifest sync mode. Empty means ManifestSyncManual.
	ManifestSync ManifestSyncMode `yaml:"manifestSync,omitempty" protobuf:"5"`
	// Paused stops new machines from starting an upgrade; machines already upgrading finish their step.
	Paused bool `yaml:"paused" protobuf:"6"`
	// SkipKubernetesChecks names the Kubernetes pre-checks whose failure the next Kubernetes upgrade overrides
	// (`upshift upgrade kubernetes --skip-checks`): kept in this input, so the history shows who skipped what.
	SkipKubernetesChecks []string `yaml:"skipKubernetesChecks,omitempty" protobuf:"7"`
}

// NewCluster returns an empty Cluster named id.
func NewCluster(id resource.ID) *Cluster {
	return resources.NewTyped[ClusterSpec, ClusterExtension](ClusterType, id)
}

// DeepCopy implements typed.DeepCopyable.
func (s ClusterSpec) DeepCopy() ClusterSpec {
	s.SkipKubernetesChecks = slices.Clone(s.SkipKubernetesChecks)

	return s
}

// How a version the engine does not know is added, for the message that refuses it.
const (
	addTalosRelease      = "add a release with `upshift serve --talos-release VERSION` (embedded: controllers.WithCatalogue)"
	addKubernetesRelease = "add a release with `upshift serve --kubernetes-release VERSION` (embedded: controllers.WithKubernetesReleases)"
)

// Validate implements resources.Validator. The name is a DNS-1123 label, as Talos and Kubernetes name things after
// it; the versions must be ones the engine knows when st says which (resources.KnownVersions).
func (s *ClusterSpec) Validate(_ context.Context, md *resource.Metadata, st resources.Getter) error {
	var v resources.Violations

	v.CheckDNSLabel("metadata.id", md.ID())
	v.CheckVersion("spec.talosVersion", s.TalosVersion, true)
	v.CheckVersion("spec.kubernetesVersion", s.KubernetesVersion, true)

	if known, ok := st.(resources.KnownVersions); ok {
		v.CheckKnownVersion("spec.talosVersion", s.TalosVersion, known.TalosVersions(), addTalosRelease)
		v.CheckKnownVersion("spec.kubernetesVersion", s.KubernetesVersion, known.KubernetesVersions(), addKubernetesRelease)
	}

	if _, err := ParseParallelism(s.Parallelism); err != nil {
		v.Add("spec.parallelism", "%s", err)
	}

	if _, err := s.DrainTimeoutDuration(); err != nil {
		v.Add("spec.drainTimeout", "%s", err)
	}

	for i, name := range s.SkipKubernetesChecks {
		if !slices.Contains(KubernetesChecks, name) {
			v.Add(fmt.Sprintf("spec.skipKubernetesChecks[%d]", i), "%q is not a Kubernetes pre-check; the checks are %s",
				name, strings.Join(KubernetesChecks, ", "))
		}
	}

	switch s.ManifestSync {
	case "", ManifestSyncManual, ManifestSyncAuto:
	default:
		v.Add("spec.manifestSync", "%q is not a sync mode (%q or %q)", s.ManifestSync, ManifestSyncManual, ManifestSyncAuto)
	}

	return v.Err()
}

// DrainTimeoutDuration returns the drain timeout, DefaultDrainTimeout when empty.
func (s *ClusterSpec) DrainTimeoutDuration() (time.Duration, error) {
	if s.DrainTimeout == "" {
		return DefaultDrainTimeout, nil
	}

	d, err := time.ParseDuration(s.DrainTimeout)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is not a positive duration like 5m or 90s", s.DrainTimeout)
	}

	return d, nil
}

// Parallelism is a parsed worker-upgrade parallelism: a fixed count or a percentage of the workers.
type Parallelism struct {
	count   int
	percent int
}

// ParseParallelism parses "N" (N >= 1) or "P%" (1 <= P <= 100); empty means DefaultParallelism.
func ParseParallelism(s string) (Parallelism, error) {
	if s == "" {
		s = DefaultParallelism
	}

	if p, ok := strings.CutSuffix(s, "%"); ok {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 100 {
			return Parallelism{}, fmt.Errorf("%q is not a percentage from 1%% to 100%%", s)
		}

		return Parallelism{percent: n}, nil
	}

	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		return Parallelism{}, fmt.Errorf("%q is neither a count of at least 1 nor a percentage like 25%%", s)
	}

	return Parallelism{count: n}, nil
}

// Of returns how many of workers may upgrade at once: the count, or the percentage rounded down (a percentage is a
// disruption budget, and rounding up would exceed it); never less than 1, so a rollout always progresses, and
// never more than the workers there are. The zero Parallelism is one at a time.
func (p Parallelism) Of(workers int) int {
	n := p.count
	if p.percent > 0 {
		n = workers * p.percent / 100
	}

	return max(1, min(n, workers))
}

// ClusterExtension gives Cluster its resource definition.
type ClusterExtension struct{}

// ResourceDefinition implements typed.Extension.
func (ClusterExtension) ResourceDefinition() meta.ResourceDefinitionSpec {
	return meta.ResourceDefinitionSpec{
		Type:             ClusterType,
		DefaultNamespace: resources.Namespace,
		PrintColumns: []meta.PrintColumn{
			{Name: "Talos", JSONPath: "{.talosVersion}"},
			{Name: "Kubernetes", JSONPath: "{.kubernetesVersion}"},
			{Name: "Parallelism", JSONPath: "{.parallelism}"},
			{Name: "Paused", JSONPath: "{.paused}"},
		},
	}
}

func init() {
	resources.MustRegisterType[ClusterSpec, ClusterExtension](ClusterType)
}
