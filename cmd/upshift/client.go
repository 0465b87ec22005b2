package main

import (
	"context"
	"errors"
	"fmt"
	"os"
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

// endpointEnv names the environment variable that points client commands at a server when --endpoint is not given.
const endpointEnv = "UPSHIFT_ENDPOINT"

// endpointFlag adds --endpoint to a client command and returns where its value lands.
func endpointFlag(cmd *cobra.Command) *string {
	def := os.Getenv(endpointEnv)
	if def == "" {
		def = upshift.DefaultListenAddress
	}

	return cmd.Flags().String("endpoint", def, "address of the upshift server (default from $"+endpointEnv+", else "+upshift.DefaultListenAddress+")")
}

// connect dials the server at endpoint.
func connect(endpoint string) (*server.Client, error) {
	return server.Dial(endpoint)
}

// explain rewords a client error for the terminal: the server's message without gRPC's wrapping, and a hint when
// the server cannot be reached.
func explain(endpoint string, err error) error {
	if err == nil {
		return nil
	}

	if st, ok := status.FromError(err); ok && st.Code() == codes.Unavailable {
		// The transport's message nests several layers of "desc ="; its last words say what happened.
		msg := st.Message()
		if i := strings.LastIndex(msg, ": "); i >= 0 {
			msg = strings.Trim(msg[i+2:], `"`)
		}

		return fmt.Errorf("cannot reach upshift at %s (%s): is `upshift serve` running there?", endpoint, msg)
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
