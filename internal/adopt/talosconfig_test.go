package adopt_test

import (
	"slices"
	"strings"
	"testing"

	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"

	"github.com/upshift-io/upshift/internal/adopt"
)

func talosconfig(t *testing.T, current string, contexts map[string][]string) []byte {
	t.Helper()

	cfg := &clientconfig.Config{Context: current, Contexts: map[string]*clientconfig.Context{}}
	for name, endpoints := range contexts {
		cfg.Contexts[name] = &clientconfig.Context{Endpoints: endpoints, Nodes: []string{name + "-cp-1"}, CA: "ca", Crt: "crt", Key: "key-of-" + name}
	}

	out, err := cfg.Bytes()
	if err != nil {
		t.Fatal(err)
	}

	return out
}

func TestReadTalosconfigKeepsTheChosenContext(t *testing.T) {
	data := talosconfig(t, "prod", map[string][]string{"prod": {"10.5.0.2"}, "staging": {"10.6.0.2:50001"}})

	access, err := adopt.ReadTalosconfig(data, "staging", nil)
	if err != nil {
		t.Fatal(err)
	}

	if access.Context != "staging" || access.Port != "50001" || !slices.Equal(access.Ask, []string{"staging-cp-1"}) {
		t.Errorf("access %+v", access)
	}

	if strings.Contains(string(access.Talosconfig), "key-of-prod") {
		t.Error("the stored talosconfig holds another context's key")
	}

	cfg, err := clientconfig.FromBytes(access.Talosconfig)
	if err != nil || cfg.Context != "staging" || len(cfg.Contexts) != 1 {
		t.Fatalf("talosconfig %+v, %v", cfg, err)
	}

	access, err = adopt.ReadTalosconfig(data, "", []string{"192.0.2.1", "192.0.2.2"})
	if err != nil {
		t.Fatal(err)
	}

	cfg, _ = clientconfig.FromBytes(access.Talosconfig)
	if access.Context != "prod" || access.Port != "50000" || !slices.Equal(cfg.Contexts["prod"].Endpoints, []string{"192.0.2.1", "192.0.2.2"}) {
		t.Errorf("with --endpoints: %+v, endpoints %v", access, cfg.Contexts["prod"].Endpoints)
	}
}

func TestReadTalosconfigRefusals(t *testing.T) {
	good := talosconfig(t, "prod", map[string][]string{"prod": {"10.5.0.2"}, "staging": {"10.6.0.2"}})

	for _, tc := range []struct {
		name      string
		data      []byte
		context   string
		endpoints []string
		want      string
	}{
		{"not yaml", []byte("key: [unclosed secret"), "", nil, "is not a talosconfig"},
		{"missing context", good, "dev", nil, `no context "dev" (its contexts: prod, staging)`},
		{"no current context", talosconfig(t, "", map[string][]string{"prod": {"10.5.0.2"}}), "", nil, "no current context: choose one with --context"},
		{"no endpoint", talosconfig(t, "prod", map[string][]string{"prod": nil}), "", nil, `context "prod" names no endpoint: give the Talos API address of a control plane with --endpoints`},
		{"bad endpoint", good, "", []string{"10.5.0.2:port"}, `endpoint "10.5.0.2:port" is not an address`},
		{"ports differ", good, "", []string{"10.5.0.2:50000", "10.5.0.3:50001"}, "name different ports"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := adopt.ReadTalosconfig(tc.data, tc.context, tc.endpoints)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want %q", err, tc.want)
			}

			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error quotes the file: %v", err)
			}
		})
	}
}
