package server

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"

	"github.com/cosi-project/runtime/api/v1alpha1"
	"github.com/cosi-project/runtime/pkg/resource"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/upshift-io/upshift/resources/cluster"
	"github.com/upshift-io/upshift/state/store"
)

// Role is what a client may do, carried in its certificate's Organization as "upshift:ROLE" (as Talos carries
// os:reader, os:operator, os:admin). Each role may do all that the ones before it may.
type Role string

// The roles, from least to most.
const (
	// RoleReader reads the state and its history (never credentials).
	RoleReader Role = "reader"
	// RoleOperator also drives rollouts: upgrades, retry/skip/pause, locks, config patches, manifest syncs.
	RoleOperator Role = "operator"
	// RoleAdmin also manages clusters, machines and credentials, and issues client configs.
	RoleAdmin Role = "admin"
)

// roles lists the roles in order, each above the ones before it.
var roles = []Role{RoleReader, RoleOperator, RoleAdmin}

// roleOrganizationPrefix prefixes a role in a certificate's Organization.
const roleOrganizationPrefix = "upshift:"

// ParseRole reads a role by name, as `upshift config new --role` takes it.
func ParseRole(s string) (Role, error) {
	r := Role(strings.ToLower(strings.TrimSpace(s)))
	if !r.valid() {
		return "", fmt.Errorf("unknown role %q (roles: %s)", s, rolesList())
	}

	return r, nil
}

func (r Role) valid() bool { return slices.Contains(roles, r) }

func (r Role) rank() int { return slices.Index(roles, r) }

// allows says whether r may do what needs role need.
func (r Role) allows(need Role) bool { return r.valid() && r.rank() >= need.rank() }

func (r Role) organization() string { return roleOrganizationPrefix + string(r) }

func rolesList() string {
	names := make([]string, len(roles))
	for i, r := range roles {
		names[i] = string(r)
	}

	return strings.Join(names, ", ")
}

// Verb is what a call does to a resource type; the permission table is written in verbs.
type Verb string

// The verbs of the API.
const (
	VerbRead    Verb = "read" // get, list, watch and history
	VerbCreate  Verb = "create"
	VerbUpdate  Verb = "update"
	VerbDestroy Verb = "destroy" // destroy and teardown
	VerbIssue   Verb = "issue"   // a client config
	// VerbShowSecrets is reading a secret in clear (e.g. `get credentials --show-secrets`); AuthorizeCaller checks it.
	VerbShowSecrets Verb = "show secrets of"
)

// ClientConfigType names client configs in the permission table: they are no resource, but issuing one is a verb
// on them.
const ClientConfigType = "ClientConfigs"

// permission is the role each verb on one type needs.
type permission map[Verb]Role

// permissions is who may do what: the one table of the API's authorization. Types not listed (the engine's outputs,
// COSI's namespaces and definitions) follow defaultPermission: anyone reads, only an admin writes (and the
// validating state refuses API writes of outputs anyway).
var permissions = map[resource.Type]permission{
	// Updating a Cluster is how upgrades are asked for, paused and resumed; creating or deleting one is an admin's.
	cluster.ClusterType: {VerbRead: RoleReader, VerbCreate: RoleAdmin, VerbUpdate: RoleOperator, VerbDestroy: RoleAdmin},
	// Updating a Machine is how a failed step is retried or skipped (annotations); adding or removing one is an admin's.
	cluster.MachineType:             {VerbRead: RoleReader, VerbCreate: RoleAdmin, VerbUpdate: RoleOperator, VerbDestroy: RoleAdmin},
	cluster.MachineLockType:         operatorWrites,
	cluster.ConfigPatchType:         operatorWrites,
	cluster.ManifestSyncRequestType: operatorWrites,
	cluster.CredentialsType: {
		VerbRead: RoleAdmin, VerbCreate: RoleAdmin, VerbUpdate: RoleAdmin, VerbDestroy: RoleAdmin, VerbShowSecrets: RoleAdmin,
	},
	ClientConfigType:  {VerbIssue: RoleAdmin},
	ServerVersionType: {VerbRead: RoleReader},
}

var (
	operatorWrites    = permission{VerbRead: RoleReader, VerbCreate: RoleOperator, VerbUpdate: RoleOperator, VerbDestroy: RoleOperator}
	defaultPermission = permission{VerbRead: RoleReader, VerbCreate: RoleAdmin, VerbUpdate: RoleAdmin, VerbDestroy: RoleAdmin}
)

// needs returns the role verb on typ needs; a verb the table does not name for a type is an admin's.
func needs(verb Verb, typ resource.Type) Role {
	perm, ok := permissions[typ]
	if !ok {
		perm = defaultPermission
	}

	if role, ok := perm[verb]; ok {
		return role
	}

	return RoleAdmin
}

// Caller is who makes an API call, from the certificate it presented.
type Caller struct {
	// Name is the certificate's CN; the event log records it as the writer.
	Name string
	// Role is the highest role the certificate carries.
	Role Role
}

// Writer is how the event log names the caller.
func (c Caller) Writer() string { return "user:" + c.Name }

type callerKey struct{}

// CallerFrom returns the authenticated caller of a call the server is handling; false outside one (the Go API).
func CallerFrom(ctx context.Context) (Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(Caller)

	return c, ok
}

// AuthorizeCaller refuses verb on typ with PermissionDenied unless the call's caller has the role the table asks
// for. A context with no caller is the in-process Go API, whose embedder is trusted: allowed. Handlers that decide
// more than the interceptor sees (showing secrets in clear) call it.
func AuthorizeCaller(ctx context.Context, verb Verb, typ resource.Type) error {
	c, ok := CallerFrom(ctx)
	if !ok {
		return nil
	}

	return authorize(c, verb, typ)
}

func authorize(c Caller, verb Verb, typ resource.Type) error {
	need := needs(verb, typ)
	if c.Role.allows(need) {
		return nil
	}

	st, err := status.New(codes.PermissionDenied, fmt.Sprintf("permission denied: %s (role %s) may not %s %s: that needs role %s",
		c.Name, c.Role, verb, typ, need)).WithDetails(&errdetails.ErrorInfo{Reason: roleDeniedReason, Domain: errorDomain})
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}

	return st.Err()
}

// A refusal by role carries an ErrorInfo with this reason and domain, which tells it apart from COSI's own
// PermissionDenied (an owner conflict) on the client.
const (
	roleDeniedReason = "ROLE_DENIED"
	errorDomain      = "upshift.dev"
)

// isRoleDenied says whether st is a refusal by role.
func isRoleDenied(st *status.Status) bool {
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetReason() == roleDeniedReason && info.GetDomain() == errorDomain {
			return true
		}
	}

	return false
}

// identityOf reads the caller's name and role from a verified client certificate.
func identityOf(cert *x509.Certificate) (string, Role, error) {
	if cert.Subject.CommonName == "" {
		return "", "", fmt.Errorf("the client certificate has no name (CN)")
	}

	best := Role("")

	for _, org := range cert.Subject.Organization {
		r := Role(strings.TrimPrefix(org, roleOrganizationPrefix))
		if strings.HasPrefix(org, roleOrganizationPrefix) && r.valid() && (best == "" || r.rank() > best.rank()) {
			best = r
		}
	}

	if best == "" {
		return "", "", fmt.Errorf("the client certificate of %s carries no upshift role", cert.Subject.CommonName)
	}

	return cert.Subject.CommonName, best, nil
}

// authenticate names the caller from the certificate the TLS handshake verified. The server's TLS config already
// refuses a connection without one; this refuses a call that somehow arrives without it all the same.
func authenticate(ctx context.Context) (Caller, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, status.Error(codes.Unauthenticated, "no peer: the upshift API needs a client certificate")
	}

	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.VerifiedChains) == 0 || len(tlsInfo.State.VerifiedChains[0]) == 0 {
		return Caller{}, status.Error(codes.Unauthenticated, "the upshift API needs a client certificate signed by the engine's CA (mTLS)")
	}

	name, role, err := identityOf(tlsInfo.State.VerifiedChains[0][0])
	if err != nil {
		return Caller{}, status.Error(codes.Unauthenticated, err.Error())
	}

	return Caller{Name: name, Role: role}, nil
}

// verbs maps each method of the API to its verb; a method not listed is refused.
var verbs = map[string]Verb{
	v1alpha1.State_Get_FullMethodName:                VerbRead,
	v1alpha1.State_List_FullMethodName:               VerbRead,
	v1alpha1.State_Watch_FullMethodName:              VerbRead,
	v1alpha1.State_Create_FullMethodName:             VerbCreate,
	v1alpha1.State_Update_FullMethodName:             VerbUpdate,
	v1alpha1.State_Destroy_FullMethodName:            VerbDestroy,
	v1alpha1.State_Teardown_FullMethodName:           VerbDestroy,
	v1alpha1.State_TeardownAndDestroy_FullMethodName: VerbDestroy,
	historyGetMethod:                                 VerbRead,
	issueConfigMethod:                                VerbIssue,
	versionGetMethod:                                 VerbRead,
	engineStatusMethod:                               VerbRead,
}

// methodTypes names the type of the methods that are about no resource type of their request.
var methodTypes = map[string]resource.Type{
	versionGetMethod:   ServerVersionType,
	engineStatusMethod: ServerVersionType,
}

// typeOf is the resource type a request is about.
func typeOf(req any) resource.Type {
	switch r := req.(type) {
	case *v1alpha1.CreateRequest:
		return r.GetResource().GetMetadata().GetType()
	case *v1alpha1.UpdateRequest:
		return r.GetNewResource().GetMetadata().GetType()
	case interface{ GetType() string }: // Get, List, Watch, Destroy, Teardown
		return r.GetType()
	case *structpb.Struct: // the hand-written services
		if typ := r.GetFields()["type"].GetStringValue(); typ != "" {
			return typ
		}

		return ClientConfigType
	default:
		return ""
	}
}

// check authorizes one request of method by caller.
func check(caller Caller, method string, req any) error {
	verb, ok := verbs[method]
	if !ok {
		return status.Errorf(codes.PermissionDenied, "permission denied: %s is not part of the upshift API", method)
	}

	typ, ok := methodTypes[method]
	if !ok {
		typ = typeOf(req)
	}

	return authorize(caller, verb, typ)
}

// authorizeUnary authenticates the caller, checks the call against the permission table, and names the caller as
// the writer of whatever the call writes, for the event log.
func authorizeUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	caller, err := authenticate(ctx)
	if err != nil {
		return nil, err
	}

	if err = check(caller, info.FullMethod, req); err != nil {
		return nil, err
	}

	return handler(withCaller(ctx, caller), req)
}

// authorizeStream is authorizeUnary for the streaming calls (List, Watch): their one request arrives through the
// stream, so it is checked as the handler receives it, before anything is sent back.
func authorizeStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	caller, err := authenticate(ss.Context())
	if err != nil {
		return err
	}

	return handler(srv, &authorizedStream{ServerStream: ss, ctx: withCaller(ss.Context(), caller), caller: caller, method: info.FullMethod})
}

func withCaller(ctx context.Context, c Caller) context.Context {
	return store.WithWriter(context.WithValue(ctx, callerKey{}, c), c.Writer())
}

type authorizedStream struct {
	grpc.ServerStream

	ctx    context.Context //nolint:containedctx // a ServerStream carries its context
	caller Caller
	method string
}

func (s *authorizedStream) Context() context.Context { return s.ctx }

func (s *authorizedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}

	return check(s.caller, s.method, m)
}
