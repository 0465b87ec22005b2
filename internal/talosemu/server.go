package talosemu

import (
	"context"
	"fmt"
	"sync"

	cosiv1alpha1 "github.com/cosi-project/runtime/api/v1alpha1"
	cosiserver "github.com/cosi-project/runtime/pkg/state/protobuf/server"
	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// newServer builds the fleet's gRPC server: mTLS, routing on the "node" metadata, the journal, and the API going
// away while a node is down.
func newServer(f *Fleet) *grpc.Server {
	s := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(f.pki.serverTLS())),
		grpc.UnaryInterceptor(f.unaryInterceptor),
		grpc.StreamInterceptor(f.streamInterceptor),
	)

	machine.RegisterMachineServiceServer(s, &machineService{})
	machine.RegisterLifecycleServiceServer(s, &lifecycleService{})
	machine.RegisterImageServiceServer(s, &imageService{})
	cosiv1alpha1.RegisterStateServer(s, &stateRouter{})

	return s
}

type callKey struct{}

// call is what a handler knows about the call it serves: the target node, and actions to run once it returned.
type call struct {
	node *Node

	mu    sync.Mutex
	after []func()
}

// callFrom returns the call a handler serves; the interceptors always set it.
func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call) // the interceptors set it for every handler

	return c
}

// nodeFrom returns the node a call is routed to.
func nodeFrom(ctx context.Context) *Node { return callFrom(ctx).node }

// afterReturn defers an action (taking the node down) until the handler has returned its response, so the caller
// of Reboot gets its answer like from a real node.
func afterReturn(ctx context.Context, action func()) {
	c := callFrom(ctx)

	c.mu.Lock()
	defer c.mu.Unlock()

	c.after = append(c.after, action)
}

func (c *call) runAfter() {
	c.mu.Lock()
	after := c.after
	c.after = nil
	c.mu.Unlock()

	for _, action := range after {
		action()
	}
}

// targetNode resolves the node a call is for from its metadata, like apid: "node", or "nodes" with a single value.
func (f *Fleet) targetNode(ctx context.Context) (*Node, error) {
	md, _ := metadata.FromIncomingContext(ctx)

	names := md.Get("node")
	if len(names) == 0 {
		names = md.Get("nodes")
	}

	switch {
	case len(names) > 1:
		return nil, status.Error(codes.InvalidArgument, "one-to-many calls are not supported by the emulator: use client.WithNode")
	case len(names) == 0:
		if nodes := f.Nodes(); len(nodes) == 1 {
			return nodes[0], nil
		}

		return nil, status.Error(codes.InvalidArgument, "the emulated fleet serves many nodes: set the target node (client.WithNode)")
	}

	n, ok := f.lookup(names[0])
	if !ok {
		return nil, status.Errorf(codes.Unavailable, "unknown node %q: no route to host", names[0])
	}

	return n, nil
}

func unavailable(n *Node) error {
	return status.Errorf(codes.Unavailable, "node %q is unreachable: %v", n.name, errNodeDown)
}

// enter routes and admits a call: it fails as unavailable when the node is down, and otherwise returns a context
// that ends when the node goes down, with the call attached.
func (f *Fleet) enter(ctx context.Context, n *Node) (context.Context, context.Context, func(), error) {
	reach, err := n.reachability()
	if err != nil {
		return nil, nil, nil, unavailable(n)
	}

	callCtx, cancel := context.WithCancel(context.WithValue(ctx, callKey{}, &call{node: n}))
	stop := context.AfterFunc(reach, cancel)

	return callCtx, reach, func() { stop(); cancel() }, nil
}

func (f *Fleet) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	n, err := f.targetNode(ctx)
	if err != nil {
		return nil, err
	}

	entry := requestEntry(req)
	entry.Node, entry.Method = n.name, info.FullMethod

	if apply, ok := req.(*machine.ApplyConfigurationRequest); ok {
		entry.Changes = n.imageChanges(apply.GetData())
	}

	callCtx, reach, done, err := f.enter(ctx, n)
	if err != nil {
		entry.Error = status.Code(err).String()
		f.journal.record(entry)

		return nil, err
	}

	f.journal.record(entry)

	resp, err := handler(callCtx, req)

	// A node that went down while serving the call drops it: the caller sees the connection go away.
	if reach.Err() != nil {
		err, resp = unavailable(n), nil
	}

	done()
	callFrom(callCtx).runAfter()

	return resp, err
}

func (f *Fleet) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	n, err := f.targetNode(ss.Context())
	if err != nil {
		return err
	}

	callCtx, reach, done, err := f.enter(ss.Context(), n)
	if err != nil {
		f.journal.record(Entry{Node: n.name, Method: info.FullMethod, Error: status.Code(err).String()})

		return err
	}

	err = handler(srv, &journaledStream{ServerStream: ss, ctx: callCtx, journal: f.journal, node: n.name, method: info.FullMethod})

	if reach.Err() != nil {
		err = unavailable(n)
	}

	done()
	callFrom(callCtx).runAfter()

	return err
}

// journaledStream gives a handler the call's context and journals the request when the handler reads it.
type journaledStream struct {
	grpc.ServerStream

	ctx       context.Context //nolint:containedctx // a stream carries its context
	journal   *Journal
	node      string
	method    string
	journaled bool
}

func (s *journaledStream) Context() context.Context { return s.ctx }

func (s *journaledStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)

	if !s.journaled && err == nil {
		s.journaled = true

		entry := requestEntry(m)
		entry.Node, entry.Method = s.node, s.method
		s.journal.record(entry)
	}

	return err
}

// requestEntry extracts the arguments that matter from a request.
func requestEntry(req any) Entry {
	switch r := req.(type) {
	case *machine.UpgradeRequest:
		return Entry{Image: r.GetImage(), Preserve: new(r.GetPreserve()), Stage: new(r.GetStage()), Force: new(r.GetForce()), Mode: r.GetRebootMode().String()}
	case *machine.LifecycleServiceUpgradeRequest:
		return Entry{Image: r.GetSource().GetImageName()}
	case *machine.LifecycleServiceInstallRequest:
		return Entry{Image: r.GetSource().GetImageName()}
	case *machine.ImageServicePullRequest:
		return Entry{Image: r.GetImageRef(), Namespace: r.GetContainerd().GetNamespace().String()}
	case *machine.ImagePullRequest:
		return Entry{Image: r.GetReference(), Namespace: r.GetNamespace().String()}
	case *machine.ApplyConfigurationRequest:
		return Entry{Mode: r.GetMode().String(), DryRun: new(r.GetDryRun())}
	case *machine.RebootRequest:
		return Entry{Mode: r.GetMode().String()}
	case *machine.EtcdRemoveMemberByIDRequest:
		return Entry{MemberID: fmt.Sprintf("%016x", r.GetMemberId())}
	case *machine.ReadRequest:
		return Entry{Path: r.GetPath()}
	case *cosiv1alpha1.GetRequest:
		return Entry{Namespace: r.GetNamespace(), Resource: r.GetType() + "/" + r.GetId()}
	case *cosiv1alpha1.ListRequest:
		return Entry{Namespace: r.GetNamespace(), Resource: r.GetType()}
	case *cosiv1alpha1.WatchRequest:
		return Entry{Namespace: r.GetNamespace(), Resource: r.GetType() + "/" + r.GetId()}
	default:
		return Entry{}
	}
}

// stateRouter serves the COSI State API of the node a call is routed to, read-only like Talos does for clients.
type stateRouter struct {
	cosiv1alpha1.UnimplementedStateServer
}

func (stateRouter) Get(ctx context.Context, req *cosiv1alpha1.GetRequest) (*cosiv1alpha1.GetResponse, error) {
	return cosiserver.NewState(nodeFrom(ctx).st).Get(ctx, req)
}

func (stateRouter) List(req *cosiv1alpha1.ListRequest, srv grpc.ServerStreamingServer[cosiv1alpha1.ListResponse]) error {
	return cosiserver.NewState(nodeFrom(srv.Context()).st).List(req, srv)
}

func (stateRouter) Watch(req *cosiv1alpha1.WatchRequest, srv grpc.ServerStreamingServer[cosiv1alpha1.WatchResponse]) error {
	return cosiserver.NewState(nodeFrom(srv.Context()).st).Watch(req, srv)
}

var errReadOnly = status.Error(codes.PermissionDenied, "the emulated Talos COSI API is read-only: resources are owned by the node's controllers")

func (stateRouter) Create(context.Context, *cosiv1alpha1.CreateRequest) (*cosiv1alpha1.CreateResponse, error) {
	return nil, errReadOnly
}

func (stateRouter) Update(context.Context, *cosiv1alpha1.UpdateRequest) (*cosiv1alpha1.UpdateResponse, error) {
	return nil, errReadOnly
}

func (stateRouter) Destroy(context.Context, *cosiv1alpha1.DestroyRequest) (*cosiv1alpha1.DestroyResponse, error) {
	return nil, errReadOnly
}

func (stateRouter) Teardown(context.Context, *cosiv1alpha1.TeardownRequest) (*cosiv1alpha1.TeardownResponse, error) {
	return nil, errReadOnly
}

func (stateRouter) TeardownAndDestroy(context.Context, *cosiv1alpha1.TeardownAndDestroyRequest) (*cosiv1alpha1.TeardownAndDestroyResponse, error) {
	return nil, errReadOnly
}
