package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/upshift-io/upshift/internal/buildinfo"
)

// The Version service says which upshift serves the API (`upshift version`): one unary method, empty request,
// response {version}. Any role may call it (ServerVersionType in the permission table).
const (
	versionServiceName = "upshift.v1.Version"
	versionGetMethod   = "/" + versionServiceName + "/Get"
)

// ServerVersionType names the server's version in the permission table: no resource, but reading it is a verb.
const ServerVersionType = "ServerVersion"

type versionServer struct{}

var versionServiceDesc = grpc.ServiceDesc{
	ServiceName: versionServiceName,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{structMethod("Get", versionGetMethod, (*versionServer).get)},
	Metadata:    "upshift/version",
}

func (*versionServer) get(context.Context, *structpb.Struct) (*structpb.Struct, error) {
	return structpb.NewStruct(map[string]any{"version": buildinfo.Version()})
}

// ServerVersion asks the server which upshift it runs.
func (c *Client) ServerVersion(ctx context.Context) (string, error) {
	resp := &structpb.Struct{}
	if err := c.conn.Invoke(ctx, versionGetMethod, &structpb.Struct{}, resp); err != nil {
		return "", err
	}

	return resp.GetFields()["version"].GetStringValue(), nil
}
