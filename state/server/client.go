package server

import (
	"context"
	"fmt"
	"os/user"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	"github.com/cosi-project/runtime/pkg/state/protobuf/client"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/state/validate"
)

// Client is a connection to an upshift server: its state, as a COSI state.State, and its History service.
type Client struct {
	conn  *grpc.ClientConn
	state state.State
	user  string
}

// DialOption configures Dial.
type DialOption func(*Client)

// WithUser names the user the server records as the writer of this client's writes. The default is the
// operating-system user running the client.
func WithUser(name string) DialOption {
	return func(c *Client) {
		c.user = name
	}
}

// Dial connects to the server at endpoint (host:port). The connection is made lazily, on the first call.
func Dial(endpoint string, opts ...DialOption) (*Client, error) {
	c := &Client{}

	if u, err := user.Current(); err == nil {
		c.user = u.Username
	}

	for _, opt := range opts {
		opt(c)
	}

	conn, err := grpc.NewClient(endpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainUnaryInterceptor(c.nameUser, decodeValidationError),
		grpc.WithChainStreamInterceptor(c.nameUserStream),
	)
	if err != nil {
		return nil, fmt.Errorf("connecting to upshift at %q: %w", endpoint, err)
	}

	c.conn = conn
	c.state = state.WrapCore(client.NewAdapter(v1alpha1.NewStateClient(conn)))

	return c, nil
}

// State returns the server's state; writes through it are validated and logged by the server.
func (c *Client) State() state.State {
	return c.state
}

// History returns the retained event log of one resource.
func (c *Client) History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (History, error) {
	return getHistory(ctx, c.conn, ns, typ, id)
}

// Close closes the connection.
func (c *Client) Close() error {
	return c.conn.Close()
}

func (c *Client) withUser(ctx context.Context) context.Context {
	if c.user == "" {
		return ctx
	}

	return metadata.AppendToOutgoingContext(ctx, UserMetadataKey, c.user)
}

func (c *Client) nameUser(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return invoker(c.withUser(ctx), method, req, reply, cc, opts...)
}

func (c *Client) nameUserStream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(c.withUser(ctx), desc, cc, method, opts...)
}

// decodeValidationError turns the server's encoded validation error back into a *validate.Error before COSI's
// client adapter maps status codes to its own errors.
func decodeValidationError(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	if st, ok := status.FromError(err); ok && err != nil {
		if verr := validate.FromStatus(st); verr != nil {
			return verr
		}
	}

	return err
}
