package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/upshift-io/upshift/internal/buildinfo"
	"github.com/upshift-io/upshift/resources"
)

// The Version service says which upshift serves the API (`upshift version`) and which Talos and Kubernetes versions
// it knows: one unary method, empty request, response {version, talos, kubernetes}. Any role may call it
// (ServerVersionType in the permission table).
const (
	versionServiceName = "upshift.v1.Version"
	versionGetMethod   = "/" + versionServiceName + "/Get"
)

// ServerVersionType names the server's version in the permission table: no resource, but reading it is a verb.
const ServerVersionType = "ServerVersion"

type versionServer struct {
	known resources.KnownVersions // nil: none said
}

var versionServiceDesc = grpc.ServiceDesc{
	ServiceName: versionServiceName,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{structMethod("Get", versionGetMethod, (*versionServer).get)},
	Metadata:    "upshift/version",
}

func (v *versionServer) get(context.Context, *structpb.Struct) (*structpb.Struct, error) {
	out := map[string]any{"version": buildinfo.Version()}

	if v.known != nil {
		out["talos"], out["kubernetes"] = anyList(v.known.TalosVersions()), anyList(v.known.KubernetesVersions())
	}

	return structpb.NewStruct(out)
}

func anyList(in []string) []any {
	out := make([]any, 0, len(in))
	for _, s := range in {
		out = append(out, s)
	}

	return out
}

// knownVersions is the versions a server said it knows.
type knownVersions struct{ talos, kubernetes []string }

// TalosVersions implements resources.KnownVersions.
func (k knownVersions) TalosVersions() []string { return k.talos }

// KubernetesVersions implements resources.KnownVersions.
func (k knownVersions) KubernetesVersions() []string { return k.kubernetes }

// KnownVersions asks the server which Talos and Kubernetes versions a Cluster may name; nil when it does not say.
func (c *Client) KnownVersions(ctx context.Context) (resources.KnownVersions, error) {
	resp := &structpb.Struct{}
	if err := c.conn.Invoke(ctx, versionGetMethod, &structpb.Struct{}, resp); err != nil {
		return nil, err
	}

	talos, kube := resp.GetFields()["talos"].GetListValue(), resp.GetFields()["kubernetes"].GetListValue()
	if talos == nil || kube == nil {
		return nil, nil
	}

	strs := func(l *structpb.ListValue) []string {
		var out []string
		for _, v := range l.GetValues() {
			out = append(out, v.GetStringValue())
		}

		return out
	}

	return knownVersions{talos: strs(talos), kubernetes: strs(kube)}, nil
}

// ServerVersion asks the server which upshift it runs.
func (c *Client) ServerVersion(ctx context.Context) (string, error) {
	resp := &structpb.Struct{}
	if err := c.conn.Invoke(ctx, versionGetMethod, &structpb.Struct{}, resp); err != nil {
		return "", err
	}

	return resp.GetFields()["version"].GetStringValue(), nil
}
