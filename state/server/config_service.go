package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// The Config service issues client configs over the API (`upshift config new` without --data-dir), for an admin:
// one unary method, request {name, role}, response {ca, crt, key}.
const (
	configServiceName = "upshift.v1.Config"
	issueConfigMethod = "/" + configServiceName + "/Issue"
)

type configServer struct {
	pki *PKI
}

var configServiceDesc = grpc.ServiceDesc{
	ServiceName: configServiceName,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{structMethod("Issue", issueConfigMethod, (*configServer).issue)},
	Metadata:    "upshift/config",
}

func (s *configServer) issue(_ context.Context, req *structpb.Struct) (*structpb.Struct, error) {
	fields := req.GetFields()

	role, err := ParseRole(fields["role"].GetStringValue())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	cfg, err := s.pki.Issue(fields["name"].GetStringValue(), role, "")
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}

	resp, err := structpb.NewStruct(map[string]any{"ca": cfg.CA, "crt": cfg.Crt, "key": cfg.Key})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}

	return resp, nil
}

// issueConfig calls the Config service on conn; the config it returns names no endpoint.
func issueConfig(ctx context.Context, conn grpc.ClientConnInterface, name string, role Role) (*ClientConfig, error) {
	req, err := structpb.NewStruct(map[string]any{"name": name, "role": string(role)})
	if err != nil {
		return nil, err
	}

	resp := &structpb.Struct{}
	if err = conn.Invoke(ctx, issueConfigMethod, req, resp); err != nil {
		return nil, err
	}

	f := resp.GetFields()

	return &ClientConfig{CA: f["ca"].GetStringValue(), Crt: f["crt"].GetStringValue(), Key: f["key"].GetStringValue()}, nil
}
