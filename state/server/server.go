// Package server serves the engine's state over gRPC, and connects to it: COSI's State service (so any COSI client
// can read, write and watch upshift resources) plus a small History service that reads a resource's event log.
//
// Every call is authenticated by mTLS, with the client's name and role in its certificate, and authorized by role
// (auth.go); every write is tagged with that name, so the event log records who changed what. Validation errors
// travel as InvalidArgument statuses with field details and come out of Dial's client as the same *validate.Error
// the Go API returns.
package server

import (
	"context"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"github.com/cosi-project/runtime/pkg/state"
	cosiserver "github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/upshift-io/upshift/resources"
	"github.com/upshift-io/upshift/state/store"
	"github.com/upshift-io/upshift/state/validate"
)

// HistorySource reads the event log of one resource; *store.Store implements it.
type HistorySource interface {
	History(ctx context.Context, ns resource.Namespace, typ resource.Type, id resource.ID) (store.History, error)
}

// New returns a gRPC server with the COSI State service over st (writes with an owner are refused: owners name
// the engine's controllers), the History service over hist and the Config service that issues client configs from
// pki. Every call is authenticated by mTLS against pki's CA and checked against the permission table (auth.go);
// the caller's certificate name is the writer the event log records. The Version service also tells clients the
// versions known (nil: none said), so a client checks a file's versions before it writes any of it.
// opts are passed to grpc.NewServer after the server's own credentials and interceptors.
func New(st state.CoreState, hist HistorySource, pki *PKI, known resources.KnownVersions, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(pki.ServerTLS())),
		grpc.ChainUnaryInterceptor(authorizeUnary, encodeValidationError),
		grpc.ChainStreamInterceptor(authorizeStream),
	}, opts...)...)

	v1alpha1.RegisterStateServer(srv, cosiserver.NewState(apiState{CoreState: st}))
	srv.RegisterService(&historyServiceDesc, &historyServer{source: hist})
	srv.RegisterService(&configServiceDesc, &configServer{pki: pki})
	srv.RegisterService(&versionServiceDesc, &versionServer{known: known})

	return srv
}

// encodeValidationError sends a validation error as a status the client can decode back into it.
func encodeValidationError(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if st, ok := validate.ToStatus(err); ok {
		return nil, st.Err()
	}

	return resp, err
}
