package server

import (
	"context"
	"fmt"
	"time"

	"github.com/cosi-project/runtime/pkg/resource"
	"go.yaml.in/yaml/v4"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// History is the retained event log of one resource, as the History service returns it.
type History struct {
	// RetainedSince is the time of the newest compacted event; zero if the log was never compacted.
	RetainedSince time.Time
	// Events are the retained events, oldest first.
	Events []HistoryEvent
	// RetainedFrom is the first sequence number still in the log; older events were compacted.
	RetainedFrom uint64
}

// HistoryEvent is one logged write of a resource.
type HistoryEvent struct {
	// Time is when the write was committed.
	Time time.Time
	// Kind is "created", "updated" or "destroyed".
	Kind string
	// Writer is who wrote: a controller, or the API user ("user:NAME").
	Writer string
	// Resource is the resource as written, as YAML (metadata and spec).
	Resource string
	// Seq is the write's position in the engine-wide log.
	Seq uint64
	// Version is the resource version the write produced.
	Version uint64
}

// The History service is written by hand (no protoc here): one unary method whose request and response are
// google.protobuf.Struct values with the fields below.
const (
	historyServiceName = "upshift.v1.History"
	historyGetMethod   = "/" + historyServiceName + "/Get"
)

type historyServer struct {
	source HistorySource
}

var historyServiceDesc = grpc.ServiceDesc{
	ServiceName: historyServiceName,
	HandlerType: (*any)(nil),
	Methods:     []grpc.MethodDesc{structMethod("Get", historyGetMethod, (*historyServer).get)},
	Metadata:    "upshift/history",
}

// structMethod is one unary method of a hand-written service (no protoc here) whose request and response are
// google.protobuf.Struct values, served by call on the service's registered *S.
func structMethod[S any](name, fullMethod string, call func(*S, context.Context, *structpb.Struct) (*structpb.Struct, error)) grpc.MethodDesc {
	return grpc.MethodDesc{
		MethodName: name,
		Handler: func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
			req := &structpb.Struct{}
			if err := dec(req); err != nil {
				return nil, err
			}

			s := srv.(*S) //nolint:forcetypeassert // the service is registered with a *S
			if interceptor == nil {
				return call(s, ctx, req)
			}

			return interceptor(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: fullMethod},
				func(ctx context.Context, req any) (any, error) { return call(s, ctx, req.(*structpb.Struct)) }) //nolint:forcetypeassert
		},
	}
}

func (h *historyServer) get(ctx context.Context, req *structpb.Struct) (*structpb.Struct, error) {
	fields := req.GetFields()
	ns, typ, id := fields["namespace"].GetStringValue(), fields["type"].GetStringValue(), fields["id"].GetStringValue()

	if typ == "" || id == "" {
		return nil, status.Error(codes.InvalidArgument, "history needs a type and an id")
	}

	show, err := secretsShown(ctx)
	if err != nil {
		return nil, err
	}

	hist, err := h.source.History(ctx, ns, typ, id)
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}

	events := make([]any, 0, len(hist.Events))

	for _, ev := range hist.Events {
		r := ev.Resource
		if !show {
			r = redact(r)
		}

		doc, err := marshalYAML(r)
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}

		events = append(events, map[string]any{
			"seq": float64(ev.Seq), "time": ev.Time.Format(time.RFC3339Nano), "kind": ev.Kind.String(),
			"version": float64(ev.Version), "writer": ev.Writer, "resource": doc,
		})
	}

	resp, err := structpb.NewStruct(map[string]any{
		"retainedFrom":  float64(hist.RetainedFrom),
		"retainedSince": formatTime(hist.RetainedSince),
		"events":        events,
	})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}

	return resp, nil
}

func marshalYAML(r resource.Resource) (string, error) {
	if r == nil {
		return "", nil
	}

	doc, err := resource.MarshalYAML(r)
	if err != nil {
		return "", fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	out, err := yaml.Marshal(doc)
	if err != nil {
		return "", fmt.Errorf("rendering %s: %w", resource.String(r), err)
	}

	return string(out), nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}

	return t.Format(time.RFC3339Nano)
}

// getHistory calls the History service on conn.
func getHistory(ctx context.Context, conn grpc.ClientConnInterface, ns resource.Namespace, typ resource.Type, id resource.ID) (History, error) {
	req, err := structpb.NewStruct(map[string]any{"namespace": ns, "type": typ, "id": id})
	if err != nil {
		return History{}, err
	}

	resp := &structpb.Struct{}
	if err = conn.Invoke(ctx, historyGetMethod, req, resp); err != nil {
		return History{}, err
	}

	fields := resp.GetFields()
	hist := History{RetainedFrom: uint64(fields["retainedFrom"].GetNumberValue())}

	if hist.RetainedSince, err = parseTime(fields["retainedSince"].GetStringValue()); err != nil {
		return History{}, err
	}

	for _, v := range fields["events"].GetListValue().GetValues() {
		ev := v.GetStructValue().GetFields()

		t, err := parseTime(ev["time"].GetStringValue())
		if err != nil {
			return History{}, err
		}

		hist.Events = append(hist.Events, HistoryEvent{
			Time: t, Kind: ev["kind"].GetStringValue(), Writer: ev["writer"].GetStringValue(),
			Resource: ev["resource"].GetStringValue(), Seq: uint64(ev["seq"].GetNumberValue()),
			Version: uint64(ev["version"].GetNumberValue()),
		})
	}

	return hist, nil
}

func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}

	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("history response has a bad time %q: %w", s, err)
	}

	return t, nil
}
