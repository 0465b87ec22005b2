package server

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"
)

// The Engine service says how the engine that serves the API runs (`upshift status`): alone on its bbolt file, or
// as one replica of several on etcd, which replica leads and what keeps it from leading. One unary method, empty
// request, response {backend, replica, leader, leading, problem, unreadable}. Any role may call it (ServerVersionType in the
// permission table).
const (
	engineServiceName  = "upshift.v1.Engine"
	engineStatusMethod = "/" + engineServiceName + "/Status"
)

// EngineStatus is how the engine runs.
type EngineStatus struct {
	// Backend is "bbolt" or "etcd".
	Backend string
	// Replica is the name of the replica that answered (etcd only).
	Replica string
	// Leader is the name of the replica that runs the controllers, as etcd has it ("" when none, or etcd cannot say).
	Leader string
	// Problem says why the replica cannot read the election or lead: etcd unreachable or without quorum, a lost lease.
	Problem string
	// Leading is whether the replica that answered runs the controllers.
	Leading bool
	// Unreadable is set when the replica cannot read the state now (etcd without quorum): reads would wait for it.
	Unreadable bool
}

// EngineStatusSource answers the Engine service; *upshift.Engine implements it.
type EngineStatusSource interface {
	EngineStatus(ctx context.Context) EngineStatus
}

type engineServer struct {
	source EngineStatusSource
}

var engineServiceDesc = grpc.ServiceDesc{
	ServiceName: engineServiceName,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{structMethod("Status", engineStatusMethod, (*engineServer).status)},
	Metadata:    "upshift/engine",
}

// RegisterEngineStatus adds the Engine service, answered by source, to a server built by New.
func RegisterEngineStatus(srv *grpc.Server, source EngineStatusSource) {
	srv.RegisterService(&engineServiceDesc, &engineServer{source: source})
}

func (e *engineServer) status(ctx context.Context, _ *structpb.Struct) (*structpb.Struct, error) {
	st := e.source.EngineStatus(ctx)

	return structpb.NewStruct(map[string]any{
		"backend": st.Backend, "replica": st.Replica, "leader": st.Leader, "leading": st.Leading, "problem": st.Problem,
		"unreadable": st.Unreadable,
	})
}

// EngineStatus asks the server how its engine runs.
func (c *Client) EngineStatus(ctx context.Context) (EngineStatus, error) {
	resp := &structpb.Struct{}
	if err := c.conn.Invoke(ctx, engineStatusMethod, &structpb.Struct{}, resp); err != nil {
		return EngineStatus{}, err
	}

	f := resp.GetFields()

	return EngineStatus{
		Backend: f["backend"].GetStringValue(), Replica: f["replica"].GetStringValue(), Leader: f["leader"].GetStringValue(),
		Leading: f["leading"].GetBoolValue(), Problem: f["problem"].GetStringValue(), Unreadable: f["unreadable"].GetBoolValue(),
	}, nil
}
