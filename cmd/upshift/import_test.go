package main

import (
	"path/filepath"
	"testing"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// `cluster import` refuses bad input with a clear error before it reaches any cluster or server.
func TestClusterImportBadInput(t *testing.T) {
	t.Parallel()

	dir := t.TempDir()
	talosconfig := filepath.Join(dir, "talosconfig")

	cfg := &clientconfig.Config{Context: "prod", Contexts: map[string]*clientconfig.Context{"prod": {Endpoints: []string{"192.0.2.10"}}}}
	require.NoError(t, cfg.Save(talosconfig))

	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no talosconfig flag", []string{"cluster", "import", "prod"}, `required flag(s) "talosconfig" not set`},
		{"no name", []string{"cluster", "import", "--talosconfig", talosconfig}, "accepts 1 arg(s), received 0"},
		{"invalid name", []string{"cluster", "import", "Prod_1", "--talosconfig", talosconfig}, `NAME: "Prod_1" is not a valid name`},
		{"unreadable talosconfig", []string{"cluster", "import", "prod", "--talosconfig", filepath.Join(dir, "missing")}, "reading the talosconfig: open " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{"not a talosconfig", []string{"cluster", "import", "prod", "--talosconfig", writeFile(t, "- a list\n")}, "is not a talosconfig"},
		{"missing context", []string{"cluster", "import", "prod", "--talosconfig", talosconfig, "--context", "staging"}, `talosconfig ` + talosconfig + `: it has no context "staging" (its contexts: prod)`},
		{"bad endpoint", []string{"cluster", "import", "prod", "--talosconfig", talosconfig, "--endpoints", "192.0.2.10:x"}, `endpoint "192.0.2.10:x" is not an address`},
		{"unreadable kubeconfig", []string{"cluster", "import", "prod", "--talosconfig", talosconfig, "--kubeconfig", filepath.Join(dir, "nokube")}, "reading the kubeconfig: open"},
	} {
		res := run(t, target{}, tc.args...)
		assert.Equal(t, 1, res.exitCode, tc.name)
		assert.Empty(t, res.stdout, tc.name)
		assert.Contains(t, res.stderr, tc.want, tc.name)
	}
}
