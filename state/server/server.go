// Package server serves the engine's state over gRPC, and connects to it: COSI's State service (so any COSI client
// can read, write and watch upshift resources) plus a small History service that reads a resource's event log.
//
// Every write is tagged with the API user who made it (from the call's metadata), so the event log records who
// changed what. Validation errors travel as InvalidArgument statuses with field details and come out of Dial's
// client as the same *validate.Error the Go API returns.
package server

import (
	"context"
	"fmt"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	cosiserver "github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// UserMetadataKey is the gRPC metadata key a client names its user with; Dial sets it.
const UserMetadataKey = "x-upshift-user"

// HistorySource reads the event log of one resource; *store.Store implements it.
type HistorySource interface {
	History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (store.History, error)
}

// New returns a gRPC server with the COSI State service over st (writes with an owner are refused: owners name
// the engine's controllers) and the History service over hist.
// opts are passed to grpc.NewServer after the server's own interceptors.
func New(st state.CoreState, hist HistorySource, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(tagWriter, encodeValidationError)}, opts...)...)

	v1alpha1.RegisterStateServer(srv, cosiserver.NewState(apiState{CoreState: st}))
	srv.RegisterService(&historyServiceDesc, &historyServer{source: hist})

	return srv
}

// tagWriter names the caller as the writer of whatever the call writes, for the event log.
func tagWriter(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(store.WithWriter(ctx, writerOf(ctx)), req)
}

// writerOf is "user:NAME" for a client that named its user, else "api:ADDRESS" of the peer.
func writerOf(ctx context.Context) string {
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if users := md.Get(UserMetadataKey); len(users) > 0 && users[0] != "" {
			return "user:" + users[0]
		}
	}

	if p, ok := peer.FromContext(ctx); ok {
		return fmt.Sprintf("api:%s", p.Addr)
	}

	return store.DefaultWriter
}

// encodeValidationError sends a validation error as a status the client can decode back into it.
func encodeValidationError(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if st, ok := validate.ToStatus(err); ok {
		return nil, st.Err()
	}

	return resp, err
}
