package talos

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Kind classifies a failed Talos API call by what the caller should make of it.
type Kind int

const (
	// KindFailed is any other failure: the node answered with an error (or an installer exited non-zero).
	KindFailed Kind = iota
	// KindUnreachable means the node did not answer (down, rebooting, network): the call may be retried once
	// the node is back, and a reboot in progress looks exactly like this.
	KindUnreachable
	// KindRefused means the node answered and declined the request (bad argument, wrong state, not
	// implemented, not authorised): repeating it unchanged fails again.
	KindRefused
)

// String names the kind for messages.
func (k Kind) String() string {
	switch k {
	case KindUnreachable:
		return "unreachable"
	case KindRefused:
		return "refused"
	default:
		return "failed"
	}
}

// Error is the error of every Client method: which node, which operation, and what kind of failure.
type Error struct {
	// Node is the node the call was addressed to.
	Node string
	// Op says what the engine was doing, e.g. "installing Talos".
	Op string
	// Kind says whether the node was unreachable, refused, or failed otherwise.
	Kind Kind
	// Err is the underlying (gRPC) error.
	Err error
}

// Error renders e.g. `node "c1-cp-1": upgrading Talos: refused: rpc error: ...`.
func (e *Error) Error() string {
	return fmt.Sprintf("node %q: %s: %s: %v", e.Node, e.Op, e.Kind, e.Err)
}

// Unwrap exposes the underlying (gRPC) error.
func (e *Error) Unwrap() error { return e.Err }

// IsUnreachable reports whether err says the node could not be reached.
func IsUnreachable(err error) bool { return kindOf(err) == KindUnreachable }

// IsRefused reports whether err says the node declined the request.
func IsRefused(err error) bool { return kindOf(err) == KindRefused }

func kindOf(err error) Kind {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind
	}

	return KindFailed
}

// wrap attaches the node, the operation and the kind to err; nil stays nil.
func wrap(node, op string, err error) error {
	if err == nil {
		return nil
	}

	return &Error{Node: node, Op: op, Kind: classify(err), Err: err}
}

func classify(err error) Kind {
	if errors.Is(err, context.DeadlineExceeded) {
		return KindUnreachable
	}

	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return KindUnreachable
	case codes.InvalidArgument, codes.FailedPrecondition, codes.PermissionDenied, codes.Unauthenticated,
		codes.Unimplemented, codes.AlreadyExists, codes.OutOfRange, codes.ResourceExhausted, codes.Aborted:
		return KindRefused
	default:
		return KindFailed
	}
}
