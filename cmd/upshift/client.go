package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/resource/meta"
	"github.com/cosi-project/runtime/pkg/safe"
	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift"
	"github.com/upshift-io/upshift/state/server"
)

// Environment variables that point client commands at a server and a client config when the flags are not given.
const (
	endpointEnv = "UPSHIFT_ENDPOINT"
	configEnv   = "UPSHIFT_CONFIG"
)

// target is where a client command connects and as whom: the --endpoint and --config flags.
type target struct {
	endpoint string // "" for the config's own
	config   string
}

// clientFlags adds --endpoint and --config to a client command and returns where their values land.
func clientFlags(cmd *cobra.Command) *target {
	t := &target{}

	cmd.Flags().StringVar(&t.endpoint, "endpoint", os.Getenv(endpointEnv),
		"address of the upshift server (default from $"+endpointEnv+", else the client config's)")
	cmd.Flags().StringVar(&t.config, "config", defaultConfigPath(),
		"client config: the server's CA and this client's certificate (default from $"+configEnv+", else "+userConfigPath()+")")

	return t
}

// defaultConfigPath is $UPSHIFT_CONFIG, else the user's config path.
func defaultConfigPath() string {
	if path := os.Getenv(configEnv); path != "" {
		return path
	}

	return userConfigPath()
}

// userConfigPath is where a user's client config lives, as talosctl's ~/.talos/config: $XDG_CONFIG_HOME/upshift/config
// (~/.config/upshift/config), or ./upshift-config with no home directory.
func userConfigPath() string {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "upshift-config"
	}

	return filepath.Join(dir, "upshift", "config")
}

// load reads the client config and the endpoint to dial: --endpoint, else the config's.
func (t *target) load() (*server.ClientConfig, string, error) {
	cfg, err := server.LoadClientConfig(t.config)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("no client config at %s: `upshift serve` writes an admin one there on its first start; "+
				"or pass --config (or $%s) with one from `upshift config new`", t.config, configEnv)
		}

		return nil, "", err
	}

	endpoint := t.endpoint
	if endpoint == "" {
		endpoint = cfg.Endpoint
	}

	if endpoint == "" {
		endpoint = upshift.DefaultListenAddress
	}

	return cfg, endpoint, nil
}

// connect dials the server the target names.
func connect(t *target) (*server.Client, error) {
	cfg, endpoint, err := t.load()
	if err != nil {
		return nil, err
	}

	t.endpoint = endpoint // for explain

	return server.Dial(endpoint, cfg)
}

// explain rewords a client error for the terminal: the server's message without gRPC's wrapping, and a hint when
// the server cannot be reached or refuses the client's certificate.
func explain(t *target, err error) error {
	if err == nil {
		return nil
	}

	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		// The transport's message nests several layers of "desc ="; its last words say what happened.
		msg := st.Message()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = strings.Trim(msg[i+2:], `"`)
		}

		if strings.Contains(st.Message(), "tls:") || strings.Contains(st.Message(), "certificate") {
			return fmt.Errorf("upshift at %s and the client config %s do not trust each other (%s): is the config from this server's data dir?",
				t.endpoint, t.config, msg)
		}

		return fmt.Errorf("cannot reach upshift at %s (%s): is `upshift serve` running there?", t.endpoint, msg)
	}

	// COSI's client wraps statuses in its own error types without Unwrap; keep only the server's words.
	if _, desc, found := strings.Cut(err.Error(), "rpc error: code = "); found {
		if _, msg, ok := strings.Cut(desc, " desc = "); ok {
			return errors.New(msg)
		}
	}

	return err
}

// resolveType finds the resource definition a user means by name (a type, its singular, or any alias,
// case-insensitive), from the definitions the server registered.
func resolveType(ctx context.Context, c *server.Client, name string) (*meta.ResourceDefinition, error) {
	rds, err := safe.StateListAll[*meta.ResourceDefinition](ctx, c.State())
	if err != nil {
		return nil, err
	}

	var (
		matches []*meta.ResourceDefinition
		known   []string
	)

	for rd := range rds.All() {
		spec := rd.TypedSpec()
		if spec.DefaultNamespace == meta.NamespaceName {
			continue // COSI's own definitions of namespaces and definitions
		}

		known = append(known, strings.ToLower(spec.DisplayType))

		for _, alias := range append([]resource.Type{rd.Metadata().ID(), spec.Type, spec.DisplayType}, spec.AllAliases...) {
			if strings.EqualFold(alias, name) {
				matches = append(matches, rd)

				break
			}
		}
	}

	switch len(matches) {
	case 1:
		return matches[0], nil
	case 0:
		return nil, fmt.Errorf("unknown resource type %q (known types: %s)", name, strings.Join(known, ", "))
	default:
		return nil, fmt.Errorf("resource type %q is ambiguous: it names %s and %s", name, matches[0].TypedSpec().Type, matches[1].TypedSpec().Type)
	}
}
