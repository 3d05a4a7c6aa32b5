package reapi

import (
	"context"
	"net/http"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/policy"
)

// Guard is the access policy of gRPC calls (*policy.Engine), run by the interceptors of
// (*Server).ServerOptions before every REAPI and reflection call. Implementations are safe
// for concurrent use.
type Guard interface {
	Decide(ctx context.Context, r *policy.Request) policy.Decision
	HasResponseHeaders() bool
	ResponseHeaders(ctx context.Context, r *policy.Request, d policy.Decision, status int) map[string]string
}

// grpcOperations maps each served method to its policy operation. Health checks are not in
// it: like /up they answer probes and never run the policy.
var grpcOperations = map[string]string{
	"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities":               policy.OpInspect,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs": policy.OpInspect,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs": policy.OpWrite,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchReadBlobs":   policy.OpRead,
	"/build.bazel.remote.execution.v2.ContentAddressableStorage/GetTree":          policy.OpRead,
	"/build.bazel.remote.execution.v2.ActionCache/GetActionResult":                policy.OpRead,
	"/build.bazel.remote.execution.v2.ActionCache/UpdateActionResult":             policy.OpWrite,
	"/google.bytestream.ByteStream/Read":                                          policy.OpRead,
	"/google.bytestream.ByteStream/Write":                                         policy.OpWrite,
	// Only a writer needs to know how much of its upload arrived.
	"/google.bytestream.ByteStream/QueryWriteStatus": policy.OpWrite,
}

// operationOf returns the policy operation of a method; exempt is true for health checks.
// Anything else (server reflection, say) is a "request".
func operationOf(fullMethod string) (op string, exempt bool) {
	if isHealthCheck(fullMethod) {
		return "", true
	}
	if op, ok := grpcOperations[fullMethod]; ok {
		return op, false
	}
	return policy.OpRequest, false
}

// ServerOptions returns the package-level ServerOptions of the server's configuration plus the
// tracing stats handler when Deps.TracerProvider traces, and the interceptors, in order: the
// request id (x-request-id metadata in and out, see tracing.go), panic recovery, metrics and
// the call's log line (unaryObserve, streamObserve: first, so they see every call, refused or
// not); then admission when the server runs in a node (a draining node refuses new calls);
// then, when the server has a Guard, the policy.
func (s *Server) ServerOptions() []grpc.ServerOption {
	opts := ServerOptions(s.cfg)
	if s.stats != nil {
		opts = append(opts, grpc.StatsHandler(s.stats))
	}
	unary := []grpc.UnaryServerInterceptor{s.unaryObserve}
	stream := []grpc.StreamServerInterceptor{s.streamObserve}
	if s.lifecycle != nil {
		unary, stream = append(unary, s.unaryAdmit), append(stream, s.streamAdmit)
	}
	if s.guard != nil {
		unary, stream = append(unary, s.unaryPolicy), append(stream, s.streamPolicy)
	}
	return append(opts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))
}

// policyRequest describes one call to the policy from its first request message. An invalid
// instance or resource name is refused as the handler would refuse it, before the policy
// runs (as the HTTP surfaces validate identifiers first).
func (s *Server) policyRequest(ctx context.Context, fullMethod, op string, msg any) (*policy.Request, error) {
	r := &policy.Request{
		Transport:     policy.TransportGRPC,
		Route:         fullMethod,
		Method:        http.MethodPost,
		Operation:     op,
		TenantID:      s.tenant(),
		Producer:      "bazel",
		ArtifactClass: "blob",
		Headers:       incomingMetadata{ctx},
	}
	var err error
	switch m := msg.(type) {
	case *bspb.ReadRequest:
		err = fromResource(r, m.GetResourceName(), parseReadResourceName)
	case *writeChunk: // ByteStream Write (writecodec.go)
		err = fromResource(r, m.resourceName, parseWriteResourceName)
	case *bspb.QueryWriteStatusRequest:
		err = fromResource(r, m.GetResourceName(), parseWriteResourceName)
	case actionCacheRequest: // GetActionResult, UpdateActionResult
		r.ArtifactClass = "action_cache"
		r.NamespaceID, err = namespaceOf(m.GetInstanceName())
		r.ArtifactHash = m.GetActionDigest().GetHash()
		r.ArtifactKey = r.ArtifactHash
	case interface{ GetInstanceName() string }:
		r.NamespaceID, err = namespaceOf(m.GetInstanceName())
	default:
		r.ArtifactClass = ""
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return r, nil
}

// actionCacheRequest is what both ActionCache requests carry.
type actionCacheRequest interface {
	GetInstanceName() string
	GetActionDigest() *repb.Digest
}

// incomingMetadata shows a call's incoming metadata to the policy as Headers without copying
// all of it: the cached path asks only for the credential headers, while grpc's
// FromIncomingContext copies every key and value (Bazel sends a dozen) on every call.
type incomingMetadata struct{ ctx context.Context }

// Values implements policy.Headers.
func (m incomingMetadata) Values(name string) []string {
	return metadata.ValueFromIncomingContext(m.ctx, name)
}

// Each implements policy.Headers (a script's ctx.headers, on the uncached path).
func (m incomingMetadata) Each(fn func(string, []string)) {
	md, _ := metadata.FromIncomingContext(m.ctx)
	for k, v := range md {
		fn(k, v)
	}
}

func fromResource(r *policy.Request, name string, parse func(string) (resourceName, error)) error {
	rn, err := parse(name)
	if err != nil {
		return err
	}
	r.NamespaceID = rn.namespace()
	r.ArtifactHash = rn.digest.hex()
	r.ArtifactKey = rn.digest.String()
	return nil
}

// unaryPolicy decides a unary call from its request before the handler runs.
func (s *Server) unaryPolicy(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	op, exempt := operationOf(info.FullMethod)
	if exempt {
		return handler(ctx, req)
	}
	pr, err := s.policyRequest(ctx, info.FullMethod, op, req)
	if err != nil {
		return nil, err
	}
	d := s.guard.Decide(ctx, pr)
	if !d.Allowed {
		err := denialStatus(d)
		s.setPolicyHeaders(ctx, pr, d, err, unaryHeaderSetter(ctx))
		return nil, err
	}
	resp, err := handler(ctx, req)
	s.setPolicyHeaders(ctx, pr, d, err, unaryHeaderSetter(ctx))
	return resp, err
}

func unaryHeaderSetter(ctx context.Context) func(metadata.MD) error {
	return func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }
}

// streamPolicy decides a streaming call from its first request message: ByteStream and GetTree
// name their instance and blob only there. A denied call gets its status from the first
// RecvMsg and as the call's result, whatever the handler made of the error.
func (s *Server) streamPolicy(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	op, exempt := operationOf(info.FullMethod)
	if exempt {
		return handler(srv, ss)
	}
	ps := &policyStream{ServerStream: ss, s: s, method: info.FullMethod, op: op}
	err := handler(srv, ps)
	if ps.refused != nil {
		err = ps.refused
	}
	if ps.decided && !ps.headersSet {
		ps.headersSet = true
		s.setPolicyHeaders(ss.Context(), ps.req, ps.decision, err, ss.SetHeader)
	}
	return err
}

type policyStream struct {
	grpc.ServerStream
	s          *Server
	method, op string

	decided    bool
	req        *policy.Request
	decision   policy.Decision
	refused    error // the denial (or invalid request) answered for this call
	headersSet bool
}

func (p *policyStream) RecvMsg(m any) error {
	if p.refused != nil {
		return p.refused
	}
	if err := p.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if p.decided {
		return nil
	}
	p.decided = true
	ctx := p.ServerStream.Context()
	var err error
	if p.req, err = p.s.policyRequest(ctx, p.method, p.op, m); err != nil {
		p.decided = false
		p.refused = err
		return err
	}
	p.decision = p.s.guard.Decide(ctx, p.req)
	if !p.decision.Allowed {
		p.refused = denialStatus(p.decision)
		return p.refused
	}
	return nil
}

// SendMsg refuses to send anything before the call was decided (no REAPI stream sends
// first), and attaches the policy's headers to the first message.
func (p *policyStream) SendMsg(m any) error {
	if !p.decided || p.refused != nil {
		if p.refused == nil {
			p.refused = status.Error(codes.PermissionDenied, "the call was not authorised")
		}
		return p.refused
	}
	if !p.headersSet {
		p.headersSet = true
		p.s.setPolicyHeaders(p.ServerStream.Context(), p.req, p.decision, nil, p.ServerStream.SetHeader)
	}
	return p.ServerStream.SendMsg(m)
}

// setPolicyHeaders runs response_headers with the HTTP equivalent of the call's status and
// sends what it returns as header metadata.
func (s *Server) setPolicyHeaders(ctx context.Context, r *policy.Request, d policy.Decision, callErr error, set func(metadata.MD) error) {
	if !s.guard.HasResponseHeaders() {
		return
	}
	h := s.guard.ResponseHeaders(ctx, r, d, httpStatusOf(status.Code(callErr)))
	if len(h) == 0 {
		return
	}
	md := metadata.MD{}
	for k, v := range h {
		md.Set(k, v)
	}
	if err := set(md); err != nil {
		s.log.DebugContext(ctx, "policy response headers not sent", "method", r.Route, "err", err)
	}
}

// denialStatus answers a denial with the gRPC code of its HTTP status.
func denialStatus(d policy.Decision) error {
	msg := d.Message
	if msg == "" {
		msg = http.StatusText(d.Status)
	}
	var c codes.Code
	switch {
	case d.Status == http.StatusUnauthorized:
		c = codes.Unauthenticated
	case d.Status == http.StatusBadRequest:
		c = codes.InvalidArgument
	case d.Status == http.StatusNotFound:
		c = codes.NotFound
	case d.Status == http.StatusTooManyRequests:
		c = codes.ResourceExhausted
	case d.Status == http.StatusServiceUnavailable || d.Status == http.StatusGatewayTimeout:
		c = codes.Unavailable
	case d.Status >= 500:
		c = codes.Internal
	default:
		c = codes.PermissionDenied
	}
	return status.Error(c, msg)
}

// httpStatusOf is the HTTP status a gRPC code corresponds to (ctx.status_code of
// response_headers for gRPC calls, so scripts use one convention for both transports).
func httpStatusOf(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499 // client closed the request
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	default:
		return http.StatusInternalServerError
	}
}
