package machineconfig_test

import (
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/config/machine"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/upshift-io/upshift/internal/machineconfig"
	"github.com/upshift-io/upshift/internal/machineconfig/machineconfigtest"
)

func TestEffectiveAppliesPatchesInOrder(t *testing.T) {
	t.Parallel()

	base := machineconfigtest.Config(t, "c1", machine.TypeWorker)

	out, err := machineconfig.Effective(base, []machineconfig.Patch{
		{ID: "sysctl", Content: "machine:\n  sysctls:\n    net.core.somaxconn: \"1024\"\n"},
		{ID: "later", Content: "machine:\n  sysctls:\n    net.core.somaxconn: \"2048\"\n"},
	})
	require.NoError(t, err)

	cfg, err := configloader.NewFromBytes(out)
	require.NoError(t, err)
	assert.Equal(t, "2048", cfg.Machine().Sysctls()["net.core.somaxconn"], "the later patch overrides the earlier one")

	again, err := machineconfig.Effective(base, nil)
	require.NoError(t, err)

	canonical, err := machineconfig.Canonical(cfg)
	require.NoError(t, err)
	assert.Equal(t, out, canonical, "Effective returns the canonical encoding")
	assert.NotEqual(t, machineconfig.Version(out), machineconfig.Version(again), "another config, another version")
}

func TestEffectiveRefusesWithTheReason(t *testing.T) {
	t.Parallel()

	base := machineconfigtest.Config(t, "c1", machine.TypeWorker)

	// machinery applies JSON (RFC 6902) patches to single-document configs only; generated configs have several.
	_, err := machineconfig.Effective(base, []machineconfig.Patch{{ID: "json", Content: `[{"op": "replace", "path": "/machine/nothing/here", "value": 1}]`}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), `patch "json" does not apply`)

	_, err = machineconfig.Effective(base, []machineconfig.Patch{{ID: "bad-type", Content: "machine:\n  type: toaster\n"}})
	require.Error(t, err, "a config that does not validate is refused")

	_, err = machineconfig.Effective(base, []machineconfig.Patch{{ID: "bad-cidr", Content: "cluster:\n  network:\n    podSubnets: [\"not-a-cidr\"]\n"}})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "not valid", "the config's own validation refuses it")
}

func TestDiffRedactsSecrets(t *testing.T) {
	t.Parallel()

	base := machineconfigtest.Config(t, "c1", machine.TypeWorker)
	patched, err := machineconfig.Effective(base, []machineconfig.Patch{
		{ID: "token", Content: "machine:\n  token: abcdef.0123456789abcdef\n  sysctls:\n    vm.max_map_count: \"262144\"\n"},
	})
	require.NoError(t, err)

	diff, err := machineconfig.Diff(base, patched, "now", "then")
	require.NoError(t, err)
	assert.Contains(t, diff, "+        vm.max_map_count: \"262144\"")
	assert.NotContains(t, diff, "abcdef.0123456789abcdef", "the new token is not shown")

	cfg, err := configloader.NewFromBytes(base)
	require.NoError(t, err)
	assert.NotContains(t, diff, cfg.Machine().Security().Token(), "the old token is not shown")
	assert.True(t, strings.HasPrefix(diff, "--- now\n+++ then\n"), diff)

	same, err := machineconfig.Diff(base, base, "a", "b")
	require.NoError(t, err)
	assert.Empty(t, same)
}
