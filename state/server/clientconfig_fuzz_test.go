package server_test

import (
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v4"

	"github.com/upshift-io/upshift/state/server"
)

// FuzzParseClientConfig: any bytes either load as a client config whose TLS settings build and whose certificate
// names a known role, or give an error; nothing panics. The seeds are a real issued config, damaged copies of it
// and YAML of other shapes.
func FuzzParseClientConfig(f *testing.F) {
	pki, err := server.LoadOrCreatePKI(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}

	cfg, err := pki.Issue("fuzz", server.RoleOperator, "127.0.0.1:50651")
	if err != nil {
		f.Fatal(err)
	}

	valid, err := yaml.Marshal(cfg)
	if err != nil {
		f.Fatal(err)
	}

	swapped := *cfg
	swapped.Crt, swapped.Key = cfg.Key, cfg.Crt
	swappedYAML, _ := yaml.Marshal(&swapped) //nolint:errcheck // a seed

	for _, seed := range [][]byte{
		valid,
		swappedYAML,
		valid[:len(valid)/2],
		[]byte(strings.Replace(string(valid), "BEGIN CERTIFICATE", "BEGIN PRIVATE KEY", 1)),
		[]byte("endpoint: 127.0.0.1:1\nca: x\ncrt: y\nkey: z\n"),
		[]byte("- a\n- b\n"),
		[]byte("endpoint: &a [*a]\n"),
		[]byte("{{{"),
		nil,
	} {
		f.Add(seed)
	}

	roles := []server.Role{server.RoleReader, server.RoleOperator, server.RoleAdmin}

	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := server.ParseClientConfig(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("an empty error")
			}

			return
		}

		if _, err = cfg.TLS(); err != nil {
			t.Fatalf("a config that parsed has no TLS settings: %v", err)
		}

		if _, role, err := cfg.Identity(); err == nil && !slices.Contains(roles, role) {
			t.Fatalf("an identity with an unknown role %q", role)
		}
	})
}
