package server

import (
	"context"
	"errors"
	"fmt"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/protobuf/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/state/validate"
)

// Client is a connection to an upshift server: its state, as a COSI state.State, and its History service.
type Client struct {
	conn     *grpc.ClientConn
	state    state.State
	endpoint string
}

// Dial connects to the server at endpoint (host:port) as the client cfg names (its certificate carries the name
// the server records as writer and the role it checks); cfg's own endpoint is not used. The connection is made
// lazily, on the first call.
func Dial(endpoint string, cfg *ClientConfig) (*Client, error) {
	tlsConfig, err := cfg.TLS()
	if err != nil {
		return nil, fmt.Errorf("connecting to upshift at %q: %w", endpoint, err)
	}

	conn, err := grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(credentials.NewTLS(tlsConfig)),
		grpc.WithChainUnaryInterceptor(decodeUnary),
		grpc.WithChainStreamInterceptor(decodeStream),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to upshift at %q: %w", endpoint, err)
	}

	return &Client{conn: conn, state: state.WrapCore(client.NewAdapter(v1alpha1.NewStateClient(conn))), endpoint: endpoint}, nil
}

// State returns the server's state; writes through it are validated and logged by the server.
func (c *Client) State() state.State {
	return c.state
}

// History returns the retained event log of one resource.
func (c *Client) History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (History, error) {
	return getHistory(ctx, c.conn, ns, typ, id)
}

// IssueConfig asks the server (as an admin) for a client config for name with role, pointing at this client's
// endpoint.
func (c *Client) IssueConfig(ctx context.Context, name string, role Role) (*ClientConfig, error) {
	cfg, err := issueConfig(ctx, c.conn, name, role)
	if err != nil {
		return nil, err
	}

	cfg.Endpoint = c.endpoint

	return cfg, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

// decodeStatus turns the server's refusals back into errors a caller can tell apart (*validate.Error,
// *PermissionError) before COSI's client adapter maps status codes to its own errors (it would report a
// PermissionDenied as an owner conflict).
func decodeStatus(err error) error {
	st, ok := status.FromError(err)
	if !ok || err == nil {
		return err
	}

	if verr := validate.FromStatus(st); verr != nil {
		return verr
	}

	if isRoleDenied(st) {
		return &PermissionError{Message: st.Message()}
	}

	return err
}

func decodeUnary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return decodeStatus(invoker(ctx, method, req, reply, cc, opts...))
}

func decodeStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, decodeStatus(err)
	}

	return decodedStream{cs}, nil
}

type decodedStream struct {
	grpc.ClientStream
}

func (s decodedStream) RecvMsg(m any) error {
	return decodeStatus(s.ClientStream.RecvMsg(m))
}

// PermissionError is the server's refusal of a call the caller's role does not allow; its message names the
// caller, the role, the verb and the type.
type PermissionError struct {
	Message string
}

func (e *PermissionError) Error() string { return e.Message }

// IsPermissionDenied says whether err is the server's refusal of a call the caller's role does not allow.
func IsPermissionDenied(err error) bool {
	var perm *PermissionError

	return errors.As(err, &perm)
}
