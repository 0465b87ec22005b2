package validate

import (
	"errors"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/upshift-io/upshift/resources"
)

// errorDomain and errorReason mark a gRPC status as carrying an *Error.
const (
	errorDomain = "upshift.dev"
	errorReason = "INVALID_RESOURCE"
	// opDelete marks the refusal of a delete in the ErrorInfo's metadata.
	opDelete = "delete"
)

// ToStatus turns a validation Error into an InvalidArgument status whose details carry the resource and each field
// violation, so FromStatus rebuilds the same Error on the client. It reports false for other errors.
//
// Error deliberately has no GRPCStatus method: COSI's client maps InvalidArgument on Update to a phase conflict,
// so clients must convert the status back (FromStatus) before COSI's client sees it.
func ToStatus(err error) (*status.Status, bool) {
	var e *Error
	if !errors.As(err, &e) {
		return nil, false
	}

	st := status.New(codes.InvalidArgument, utf8Only(e.Error()))

	badRequest := &errdetails.BadRequest{}
	for _, v := range e.Violations {
		badRequest.FieldViolations = append(badRequest.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field:       utf8Only(v.Field),
			Description: utf8Only(v.Problem),
		})
	}

	info := &errdetails.ErrorInfo{Reason: errorReason, Domain: errorDomain, Metadata: map[string]string{"type": utf8Only(e.Type), "id": utf8Only(e.ID)}}
	if e.Delete {
		info.Metadata["op"] = opDelete
	}

	withDetails, detailErr := st.WithDetails(info, badRequest)
	if detailErr != nil {
		return st, true
	}

	return withDetails, true
}

// utf8Only replaces what is not UTF-8 (an ID of arbitrary bytes): protobuf strings must be UTF-8, and one bad string
// would otherwise drop every detail, leaving the client a bare InvalidArgument (which COSI's client reads as a
// phase conflict on Update).
func utf8Only(s string) string {
	return strings.ToValidUTF8(s, "\uFFFD")
}

// FromStatus rebuilds the *Error that ToStatus encoded in st; it returns nil when st carries none.
func FromStatus(st *status.Status) error {
	if st.Code() != codes.InvalidArgument {
		return nil
	}

	var (
		e     Error
		found bool
	)

	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			if d.GetDomain() == errorDomain && d.GetReason() == errorReason {
				e.Type, e.ID, found = d.GetMetadata()["type"], d.GetMetadata()["id"], true
				e.Delete = d.GetMetadata()["op"] == opDelete
			}
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Violations = append(e.Violations, resources.Violation{Field: v.GetField(), Problem: v.GetDescription()})
			}
		}
	}

	if !found {
		return nil
	}

	return &e
}
