package controllers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"

	"github.com/cosi-project/runtime/pkg/controller"
	"github.com/cosi-project/runtime/pkg/resource/rtestutils"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/controllers"
	"github.com/upshift-io/upshift/internal/kube"
	"github.com/upshift-io/upshift/internal/talos"
	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/resources/observe"
)

// etcdScript is a Connector double for EtcdStatusController: its Talos API answers the etcd calls from a script
// the test changes (the member list every control plane returns, each control plane's own member status, the
// control planes that do not answer), so each case states exactly what Talos says.
type etcdScript struct {
	mu       sync.Mutex
	members  []talos.EtcdMember
	statuses map[string]talos.EtcdMemberStatus
	down     map[string]bool
}

var _ controllers.Connector = (*etcdScript)(nil)

// newEtcdScript scripts n healthy started members on control planes cp-1 ... cp-n, member i on cp-i, led by leader.
func newEtcdScript(n int, leader uint64) *etcdScript {
	s := &etcdScript{statuses: map[string]talos.EtcdMemberStatus{}, down: map[string]bool{}}

	for i := range n {
		id, node := uint64(i+1), fmt.Sprintf("cp-%d", i+1)
		s.members = append(s.members, talos.EtcdMember{ID: id, Hostname: node})
		s.statuses[node] = talos.EtcdMemberStatus{MemberID: id, Leader: leader}
	}

	return s
}

// change edits the script under its lock.
func (s *etcdScript) change(fn func(*etcdScript)) {
	s.mu.Lock()
	defer s.mu.Unlock()

	fn(s)
}

func (s *etcdScript) Talos(context.Context, controllers.ClusterAccess) (talos.API, error) {
	return scriptedTalos{s: s}, nil
}

func (s *etcdScript) Kubernetes(context.Context, controllers.ClusterAccess) (kube.API, error) {
	return nil, controllers.ErrNoKubernetes
}

// scriptedTalos answers the etcd calls of talos.API from its script; the embedded nil API makes any other call
// panic, as EtcdStatusController must make none.
type scriptedTalos struct {
	talos.API

	s *etcdScript
}

func (t scriptedTalos) Close() error { return nil }

func (t scriptedTalos) EtcdMembers(_ context.Context, node string) ([]talos.EtcdMember, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()

	if t.s.down[node] {
		return nil, &talos.Error{Node: node, Op: "EtcdMembers", Kind: talos.KindUnreachable, Err: errors.New("connection refused")}
	}

	return slices.Clone(t.s.members), nil
}

func (t scriptedTalos) EtcdMemberStatus(_ context.Context, node string) (talos.EtcdMemberStatus, error) {
	t.s.mu.Lock()
	defer t.s.mu.Unlock()

	st, ok := t.s.statuses[node]
	if t.s.down[node] || !ok {
		return talos.EtcdMemberStatus{}, &talos.Error{Node: node, Op: "EtcdMemberStatus", Kind: talos.KindUnreachable, Err: errors.New("connection refused")}
	}

	st.Errors = slices.Clone(st.Errors)

	return st, nil
}

// createEtcdCluster creates Cluster id with its Credentials and one Machine per role entry.
func createEtcdCluster(ctx context.Context, t *testing.T, st state.State, id string, machines map[string]cluster.Role) {
	t.Helper()

	c := cluster.NewCluster(id)
	*c.TypedSpec() = cluster.ClusterSpec{TalosVersion: v13, KubernetesVersion: "v1.33.7"}
	require.NoError(t, st.Create(ctx, c))

	creds := cluster.NewCredentials(id)
	creds.TypedSpec().Kubeconfig = testKubeconfig
	require.NoError(t, st.Create(ctx, creds))

	for name, role := range machines {
		m := cluster.NewMachine(name)
		*m.TypedSpec() = cluster.MachineSpec{Cluster: id, Role: role, Endpoint: "127.0.0.1:50000"}
		require.NoError(t, st.Create(ctx, m))
	}
}

// A cluster's Machines and Credentials, and what its control planes' Talos says of etcd, become its EtcdStatus:
// members with their machines, the leader, health, and whether one member may leave (the etcd gate), with the
// reason when none may. It follows each change of what Talos says, and goes away with its cluster.
func TestEtcdStatus(t *testing.T) {
	t.Parallel()

	script := newEtcdScript(3, 2)
	ctx, st := startRuntime(t, controllers.WithRegistrars(func(engine controller.Engine) error {
		return engine.RegisterQController(controllers.NewEtcdStatusController(script, controllers.NewUpgradeConfig(fastUpgrades()...)))
	}))

	createEtcdCluster(ctx, t, st, "c1", map[string]cluster.Role{
		"cp-1": cluster.RoleControlPlane, "cp-2": cluster.RoleControlPlane, "cp-3": cluster.RoleControlPlane, "w-1": cluster.RoleWorker,
	})
	createEtcdCluster(ctx, t, st, "workers-only", map[string]cluster.Role{"wo-1": cluster.RoleWorker})

	assertEtcd := func(t *testing.T, id string, check func(*observe.EtcdStatusSpec, *assert.Assertions)) {
		t.Helper()

		rtestutils.AssertResource(ctx, t, st, id, func(s *observe.EtcdStatus, a *assert.Assertions) {
			check(s.TypedSpec(), a)
		}, rtestutils.WithNamespace(resources.Namespace))
	}

	healthy := observe.EtcdStatusSpec{
		Members: []observe.EtcdMember{
			{ID: "0000000000000001", Machine: "cp-1", Started: true, Healthy: true},
			{ID: "0000000000000002", Machine: "cp-2", Started: true, Healthy: true},
			{ID: "0000000000000003", Machine: "cp-3", Started: true, Healthy: true},
		},
		Leader: "0000000000000002", Healthy: true, CanLoseMember: true,
	}

	t.Run("healthy 3 of 3, with the leader", func(t *testing.T) {
		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) { a.Equal(healthy, *s) })
	})

	t.Run("a cluster without control planes", func(t *testing.T) {
		assertEtcd(t, "workers-only", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.Equal(observe.EtcdStatusSpec{Error: "the cluster has no control-plane machine"}, *s)
		})
	})

	t.Run("the leader moves", func(t *testing.T) {
		script.change(func(s *etcdScript) {
			for node, st := range s.statuses {
				st.Leader = 3
				s.statuses[node] = st
			}
		})

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.Equal("0000000000000003", s.Leader)
			a.True(s.CanLoseMember)
		})
	})

	t.Run("one member unhealthy closes the gate", func(t *testing.T) {
		script.change(func(s *etcdScript) {
			st := s.statuses["cp-3"]
			st.Errors = []string{"NOSPACE alarm"}
			s.statuses["cp-3"] = st
		})

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.False(s.Healthy)
			a.False(s.CanLoseMember)
			a.Equal("all etcd members must be started and healthy: member 0000000000000003 (cp-3) is not healthy", s.Reason)
			a.Empty(s.Error)

			if a.Len(s.Members, 3) {
				a.True(s.Members[0].Healthy)
				a.False(s.Members[2].Healthy)
			}
		})
	})

	t.Run("an unreachable control plane is listed by the others, unhealthy", func(t *testing.T) {
		script.change(func(s *etcdScript) {
			s.statuses["cp-3"] = talos.EtcdMemberStatus{MemberID: 3, Leader: 3}
			s.down["cp-3"] = true
		})

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.False(s.Healthy)
			a.Contains(s.Reason, "member 0000000000000003 (cp-3) is not healthy")

			if a.Len(s.Members, 3) {
				a.True(s.Members[2].Started)
				a.False(s.Members[2].Healthy)
			}
		})
	})

	t.Run("a member added but never started", func(t *testing.T) {
		script.change(func(s *etcdScript) {
			s.down["cp-3"] = false
			s.members = append(s.members, talos.EtcdMember{ID: 4})
		})

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.False(s.Healthy)
			a.Equal("all etcd members must be started and healthy: member 0000000000000004 is not started", s.Reason)

			if a.Len(s.Members, 4) {
				a.Equal(observe.EtcdMember{ID: "0000000000000004"}, s.Members[3], "no machine: it has no hostname yet")
			}
		})
	})

	t.Run("healthy again", func(t *testing.T) {
		script.change(func(s *etcdScript) { s.members = s.members[:3] })

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			want := healthy
			want.Leader = "0000000000000003"
			a.Equal(want, *s)
		})
	})

	t.Run("no control plane answers", func(t *testing.T) {
		script.change(func(s *etcdScript) {
			for _, node := range []string{"cp-1", "cp-2", "cp-3"} {
				s.down[node] = true
			}
		})

		assertEtcd(t, "c1", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.Contains(s.Error, "no control plane listed the etcd members")
			a.Contains(s.Error, "connection refused")
			a.Empty(s.Members)
			a.False(s.CanLoseMember)
		})
	})

	t.Run("a deleted cluster loses its status", func(t *testing.T) {
		destroyCluster(ctx, t, st, "c1")

		rtestutils.AssertNoResource[*observe.EtcdStatus](ctx, t, st, "c1", rtestutils.WithNamespace(resources.Namespace))
		assertEtcd(t, "workers-only", func(s *observe.EtcdStatusSpec, a *assert.Assertions) {
			a.Equal("the cluster has no control-plane machine", s.Error)
		})
	})
}
