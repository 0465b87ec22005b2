package catalog_test

import (
	"testing"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/resource/protobuf"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/impl/inmem"
	"github.com/cosi-project/runtime/pkg/state/impl/namespaced"
	"github.com/cosi-project/runtime/pkg/state/registry"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/resources/catalog"
	"github.com/upshift-io/upshift/resources/cluster"
)

// Every definition passes COSI's checks (plural CamelCase names) and no alias names two types.
func TestRegisterAllDefinitions(t *testing.T) {
	t.Parallel()

	ctx := t.Context()
	st := state.WrapCore(namespaced.NewState(inmem.Build))
	reg := registry.NewResourceRegistry(st)
	require.NoError(t, reg.RegisterDefault(ctx))
	require.NoError(t, catalog.Register(ctx, reg))

	rds, err := safe.StateListAll[*meta.ResourceDefinition](ctx, st)
	require.NoError(t, err)

	owner := map[string]string{}

	for rd := range rds.All() {
		for _, alias := range rd.TypedSpec().AllAliases {
			if prev, dup := owner[alias]; dup {
				t.Errorf("alias %q names both %s and %s", alias, prev, rd.TypedSpec().Type)
			}

			owner[alias] = rd.TypedSpec().Type
		}
	}

	assert.Equal(t, cluster.ClusterType, owner["cluster"])
	assert.Equal(t, cluster.MachineLockType, owner["lock"])
}

// Every type survives the protobuf round trip the store and gRPC put it through, as its own Go type.
func TestProtobufRoundTrip(t *testing.T) {
	t.Parallel()

	for _, prototype := range catalog.All() {
		r := resources.New(prototype, "x")

		wire, err := protobuf.FromResource(r)
		require.NoError(t, err)

		back, err := protobuf.UnmarshalResource(wire)
		require.NoError(t, err)
		assert.IsType(t, r, back)
		assert.True(t, resource.Equal(r, back), "%s changed in the round trip", prototype.ResourceDefinition().Type)
	}
}

func TestLookup(t *testing.T) {
	t.Parallel()

	for name, want := range map[string]resource.Type{
		"cluster": cluster.ClusterType, "Clusters": cluster.ClusterType, "clusters.upshift.dev": cluster.ClusterType,
		"Cluster": cluster.ClusterType, "ml": cluster.MachineLockType, "manifests": "ManifestSyncs.upshift.dev",
	} {
		r, ok := catalog.Lookup(name)
		if assert.True(t, ok, name) {
			assert.Equal(t, want, r.ResourceDefinition().Type, name)
		}
	}

	_, ok := catalog.Lookup("nosuchtype")
	assert.False(t, ok)
	assert.Less(t, catalog.Rank(cluster.ClusterType), catalog.Rank(cluster.MachineType))
}
