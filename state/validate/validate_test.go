package validate_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/siderolabs/talos/pkg/machinery/config/machine"

	"github.com/upshift-io/upshift/internal/machineconfig/machineconfigtest"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
	"github.com/upshift-io/upshift/resources/upgrade"
	"github.com/upshift-io/upshift/state/validate"
)

func newState(t *testing.T) state.State {
	t.Helper()

	st := state.WrapCore(validate.NewState(namespaced.NewState(inmem.Build)))

	prod := cluster.NewCluster("prod")
	prod.TypedSpec().TalosVersion = "v1.14.1"
	prod.TypedSpec().KubernetesVersion = "v1.37.2"
	require.NoError(t, st.Create(t.Context(), prod))

	for id, role := range map[string]cluster.Role{"cp-1": cluster.RoleControlPlane, "w-1": cluster.RoleWorker} {
		m := cluster.NewMachine(id)
		*m.TypedSpec() = cluster.MachineSpec{Cluster: "prod", Role: role, Endpoint: "127.0.0.1:50000"}
		require.NoError(t, st.Create(t.Context(), m))
	}

	other := cluster.NewCluster("other")
	other.TypedSpec().TalosVersion = "1.13.0"
	other.TypedSpec().KubernetesVersion = "1.36.2"
	require.NoError(t, st.Create(t.Context(), other))

	return st
}

func clusterWith(edit func(*cluster.ClusterSpec)) resource.Resource {
	c := cluster.NewCluster("new")
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: "v1.14.1", KubernetesVersion: "v1.37.2"}
	edit(c.TypedSpec())

	return c
}

func machineWith(id string, edit func(*cluster.MachineSpec)) resource.Resource {
	m := cluster.NewMachine(id)
	*m.TypedSpec() = cluster.MachineSpec{Cluster: "prod", Role: cluster.RoleWorker, Endpoint: "10.0.0.5:50000"}
	edit(m.TypedSpec())

	return m
}

func patchWith(edit func(*cluster.ConfigPatchSpec)) resource.Resource {
	p := cluster.NewConfigPatch("p")
	*p.TypedSpec() = cluster.ConfigPatchSpec{Cluster: "prod", Patch: "machine:\n  network:\n    hostname: x\n"}
	edit(p.TypedSpec())

	return p
}

func lock(id string) resource.Resource {
	l := cluster.NewMachineLock(id)
	l.TypedSpec().Reason = "maintenance"

	return l
}

func syncRequest(clusterID, requestID string) resource.Resource {
	r := cluster.NewManifestSyncRequest(clusterID)
	r.TypedSpec().RequestID = requestID

	return r
}

func credentials(id, talosconfig, kubeconfig string) resource.Resource {
	c := cluster.NewCredentials(id)
	*c.TypedSpec() = cluster.CredentialsSpec{Talosconfig: talosconfig, Kubeconfig: kubeconfig}

	return c
}

const kubeconfig = `apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:6443"}}]
`

// Each bad write is refused with an error naming the field and the problem, and nothing is written.
func TestCreateRules(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		name    string
		r       resource.Resource
		field   string
		problem string // substring; empty means the write is accepted
	}{
		{"valid cluster", clusterWith(func(*cluster.ClusterSpec) {}), "", ""},
		{"percentage parallelism", clusterWith(func(s *cluster.ClusterSpec) { s.Parallelism = "25%" }), "", ""},
		{"missing talos version", clusterWith(func(s *cluster.ClusterSpec) { s.TalosVersion = "" }), "spec.talosVersion", "is required"},
		{"bad talos version", clusterWith(func(s *cluster.ClusterSpec) { s.TalosVersion = "1.x" }), "spec.talosVersion", `"1.x" is not a version`},
		{"bad kubernetes version", clusterWith(func(s *cluster.ClusterSpec) { s.KubernetesVersion = "v1.37" }), "spec.kubernetesVersion", "is not a version"},
		{"zero parallelism", clusterWith(func(s *cluster.ClusterSpec) { s.Parallelism = "0" }), "spec.parallelism", "neither a count"},
		{"too many percent", clusterWith(func(s *cluster.ClusterSpec) { s.Parallelism = "150%" }), "spec.parallelism", "percentage from 1% to 100%"},
		{"bad drain timeout", clusterWith(func(s *cluster.ClusterSpec) { s.DrainTimeout = "-1m" }), "spec.drainTimeout", "positive duration"},
		{"bad sync mode", clusterWith(func(s *cluster.ClusterSpec) { s.ManifestSync = "sometimes" }), "spec.manifestSync", "not a sync mode"},
		{"manual sync mode", clusterWith(func(s *cluster.ClusterSpec) { s.ManifestSync = cluster.ManifestSyncManual }), "", ""},
		{"auto sync mode", clusterWith(func(s *cluster.ClusterSpec) { s.ManifestSync = cluster.ManifestSyncAuto }), "", ""},
		{"manifest sync request", syncRequest("prod", "r1"), "", ""},
		{"manifest sync request without ID", syncRequest("prod", ""), "spec.requestID", "is required"},
		{"manifest sync request of unknown cluster", syncRequest("nope", "r1"), "metadata.id", `cluster "nope" does not exist`},
		{"valid machine", machineWith("w-2", func(*cluster.MachineSpec) {}), "", ""},
		{"machine without cluster", machineWith("w-2", func(s *cluster.MachineSpec) { s.Cluster = "" }), "spec.cluster", "is required"},
		{"machine of unknown cluster", machineWith("w-2", func(s *cluster.MachineSpec) { s.Cluster = "nope" }), "spec.cluster", `cluster "nope" does not exist`},
		{"unknown role", machineWith("w-2", func(s *cluster.MachineSpec) { s.Role = "master" }), "spec.role", `"master" is not a role`},
		{"bad endpoint", machineWith("w-2", func(s *cluster.MachineSpec) { s.Endpoint = "10.0.0.5" }), "spec.endpoint", "is not an address"},
		{"installer image with tag", machineWith("w-2", func(s *cluster.MachineSpec) { s.InstallerImage = "ghcr.io/x/installer:v1" }), "spec.installerImage", "without tag"},
		{"lock a worker", lock("w-1"), "", ""},
		{"lock a control plane", lock("cp-1"), "metadata.id", "control planes cannot be locked"},
		{"lock an unknown machine", lock("w-9"), "metadata.id", `machine "w-9" does not exist`},
		{"valid patch", patchWith(func(*cluster.ConfigPatchSpec) {}), "", ""},
		{"patch for role and machine", patchWith(func(s *cluster.ConfigPatchSpec) { s.Role, s.Machine = cluster.RoleWorker, "w-1" }), "spec.machine", "cannot be set together"},
		{"patch for machine of other cluster", patchWith(func(s *cluster.ConfigPatchSpec) { s.Cluster = "other"; s.Machine = "w-1" }), "spec.machine", `belongs to cluster "prod"`},
		{"bad patch", patchWith(func(s *cluster.ConfigPatchSpec) { s.Patch = "{{{" }), "spec.patch", "is not a Talos machine-config patch"},
		{"valid credentials", credentials("prod", "", kubeconfig), "", ""},
		{"empty credentials", credentials("prod", "", ""), "spec", "needs spec.talosconfig"},
		{"credentials of unknown cluster", credentials("nope", "", kubeconfig), "metadata.id", "does not exist"},
		{"bad kubeconfig", credentials("prod", "", "kind: [}"), "spec.kubeconfig", "is not a kubeconfig"},
		{"output written by a user", observe.NewClusterSummary("prod"), "metadata.owner", "only its controllers write it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()

			st := newState(t)
			err := st.Create(t.Context(), tc.r)

			if tc.problem == "" {
				require.NoError(t, err)

				return
			}

			require.Error(t, err)
			assert.True(t, validate.IsError(err), "%v is not a validation error", err)

			var verr *validate.Error
			require.ErrorAs(t, err, &verr)

			found := false

			for _, v := range verr.Violations {
				if v.Field == tc.field {
					found = true

					assert.Contains(t, v.Problem, tc.problem)
				}
			}

			assert.True(t, found, "no violation of %s in %v", tc.field, err)

			_, err = st.Get(t.Context(), tc.r.Metadata())
			assert.True(t, state.IsNotFoundError(err), "the refused resource was written")
		})
	}
}

// Every problem is reported at once, prefixed with the resource.
func TestAllViolationsInOneError(t *testing.T) {
	t.Parallel()

	err := newState(t).Create(t.Context(), clusterWith(func(s *cluster.ClusterSpec) { *s = cluster.ClusterSpec{Parallelism: "x"} }))
	require.Error(t, err)
	assert.Equal(t, `Cluster "new" is invalid: spec.talosVersion: is required (a version like v1.2.3); `+
		`spec.kubernetesVersion: is required (a version like v1.2.3); spec.parallelism: "x" is neither a count of at least 1 nor a percentage like 25%`,
		err.Error())
}

// A spec change is validated; a metadata-only write is not, so finalizers can be managed whatever the references.
func TestUpdateRules(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	st := newState(t)

	_, err := st.UpdateWithConflicts(ctx, cluster.NewCluster("prod").Metadata(), func(r resource.Resource) error {
		r.(*cluster.Cluster).TypedSpec().TalosVersion = "latest"

		return nil
	})
	require.True(t, validate.IsError(err), "%v", err)

	c, err := st.Get(ctx, cluster.NewCluster("prod").Metadata())
	require.NoError(t, err)
	assert.Equal(t, "v1.14.1", c.(*cluster.Cluster).TypedSpec().TalosVersion, "the refused update was written")

	require.NoError(t, st.Destroy(ctx, cluster.NewCluster("other").Metadata()))
	require.NoError(t, st.AddFinalizer(ctx, cluster.NewCluster("prod").Metadata(), "test"))

	_, err = st.UpdateWithConflicts(ctx, cluster.NewCluster("prod").Metadata(), func(r resource.Resource) error {
		r.(*cluster.Cluster).TypedSpec().Paused = true

		return nil
	})
	require.NoError(t, err)
}

// The error survives the trip through a gRPC status with the same message.
func TestStatusRoundTrip(t *testing.T) {
	t.Parallel()

	err := newState(t).Create(t.Context(), lock("cp-1"))
	require.Error(t, err)

	st, ok := validate.ToStatus(fmt.Errorf("applying: %w", err))
	require.True(t, ok)

	back := validate.FromStatus(st)
	require.Error(t, back)
	assert.True(t, validate.IsError(back))
	assert.Equal(t, err.Error(), back.Error())

	_, ok = validate.ToStatus(errors.New("other"))
	assert.False(t, ok)
}

// Outputs are updated only by the owner that created them.
func TestOutputUpdateNeedsItsOwner(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	st := newState(t)

	require.NoError(t, st.Create(ctx, observe.NewClusterSummary("prod"), state.WithCreateOwner("ClusterSummaryController")))

	_, err := st.UpdateWithConflicts(ctx, observe.NewClusterSummary("prod").Metadata(), func(r resource.Resource) error {
		r.(*observe.ClusterSummary).TypedSpec().Machines = 99 //nolint:forcetypeassert

		return nil
	})
	assert.True(t, state.IsOwnerConflictError(err), "%v", err)

	_, err = st.UpdateWithConflicts(ctx, observe.NewClusterSummary("prod").Metadata(), func(r resource.Resource) error {
		r.(*observe.ClusterSummary).TypedSpec().Machines = 2 //nolint:forcetypeassert

		return nil
	}, state.WithUpdateOwner("ClusterSummaryController"))
	require.NoError(t, err)
}

// A config patch is applied, at write time, to the base config of every machine it targets: one that yields an
// invalid config for a machine is refused naming the machine and the reason, and nothing is written; one that fits
// every machine is written. Machines whose config the engine has not seen yet are not judged.
func TestConfigPatchCheckedAgainstEachTargetedMachine(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	st := newState(t)

	for id, typ := range map[string]machine.Type{"cp-1": machine.TypeControlPlane, "w-1": machine.TypeWorker} {
		status := upgrade.NewMachineConfigStatus(id)
		*status.TypedSpec() = upgrade.MachineConfigStatusSpec{Cluster: "prod", Base: string(machineconfigtest.Config(t, "prod", typ))}
		require.NoError(t, st.Create(ctx, status, state.WithCreateOwner("MachineConfigStatusController")))
	}

	bad := patchWith(func(s *cluster.ConfigPatchSpec) {
		s.Role = cluster.RoleWorker
		s.Patch = "cluster:\n  network:\n    podSubnets: [\"not-a-cidr\"]\n"
	})

	err := st.Create(ctx, bad)
	require.Error(t, err)
	assert.True(t, validate.IsError(err), "%v", err)
	assert.Contains(t, err.Error(), `machine "w-1"`, "the refusal names the machine")
	assert.NotContains(t, err.Error(), `machine "cp-1"`, "a control plane is not targeted by a worker patch")
	assert.Contains(t, err.Error(), "cluster network config is already set", "the refusal says why: the config's own validation")

	_, err = st.Get(ctx, bad.Metadata())
	assert.True(t, state.IsNotFoundError(err), "nothing was written: %v", err)

	good := patchWith(func(s *cluster.ConfigPatchSpec) { s.Patch = "machine:\n  sysctls:\n    vm.max_map_count: \"262144\"\n" })
	require.NoError(t, st.Create(ctx, good))

	// An update is judged with the cluster's other patches: a second patch that breaks what the first one set up
	// is refused too.
	breaking := cluster.NewConfigPatch("later")
	*breaking.TypedSpec() = cluster.ConfigPatchSpec{Cluster: "prod", Machine: "cp-1", Order: 10, Patch: "machine:\n  type: toaster\n"}
	err = st.Create(ctx, breaking)
	require.Error(t, err)
	assert.Contains(t, err.Error(), `machine "cp-1"`)
}
