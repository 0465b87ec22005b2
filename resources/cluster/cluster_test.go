package cluster_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/resources/cluster"
)

func TestParallelismOf(t *testing.T) {
	t.Parallel()

	for _, tc := range []struct {
		spec    string
		workers int
		want    int
	}{
		{"", 10, 1},
		{"3", 10, 3},
		{"3", 2, 2},    // never more than there are workers
		{"25%", 10, 2}, // rounded down
		{"25%", 3, 1},  // never less than one
		{"100%", 7, 7},
		{"2", 0, 1},
	} {
		p, err := cluster.ParseParallelism(tc.spec)
		require.NoError(t, err, tc.spec)
		assert.Equal(t, tc.want, p.Of(tc.workers), "%s of %d workers", tc.spec, tc.workers)
	}

	for _, bad := range []string{"0", "-1", "0%", "101%", "x", "2.5", "%"} {
		_, err := cluster.ParseParallelism(bad)
		assert.Error(t, err, bad)
	}
}

func TestDefaults(t *testing.T) {
	t.Parallel()

	spec := cluster.ClusterSpec{}
	d, err := spec.DrainTimeoutDuration()
	require.NoError(t, err)
	assert.Equal(t, cluster.DefaultDrainTimeout, d)

	m := cluster.MachineSpec{}
	assert.Equal(t, "ghcr.io/siderolabs/installer:v1.14.1", m.Image("v1.14.1"))

	m.InstallerImage = "registry.local/installer"
	assert.Equal(t, "registry.local/installer:v1.14.1", m.Image("v1.14.1"))
}
