package reapi

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	grpcstatus "google.golang.org/grpc/status"

	"github.com/kuracache/kura/policy"
)

// recordingGuard records the policy requests and answers with decide.
type recordingGuard struct {
	mu      sync.Mutex
	reqs    []policy.Request
	decide  func(policy.Request) policy.Decision
	headers bool
}

func (g *recordingGuard) Decide(_ context.Context, r *policy.Request) policy.Decision {
	g.mu.Lock()
	g.reqs = append(g.reqs, *r)
	g.mu.Unlock()
	return g.decide(*r)
}

func (g *recordingGuard) HasResponseHeaders() bool { return g.headers }

func (g *recordingGuard) ResponseHeaders(_ context.Context, r *policy.Request, _ policy.Decision, status int) map[string]string {
	return map[string]string{"x-policy": fmt.Sprintf("%s %d", r.Operation, status)}
}

func (g *recordingGuard) last(t *testing.T) policy.Request {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.reqs) == 0 {
		t.Fatal("the guard was not asked")
	}
	return g.reqs[len(g.reqs)-1]
}

func (g *recordingGuard) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.reqs)
}

func firstValue(h policy.Headers, name string) string {
	if v := h.Values(name); len(v) > 0 {
		return v[0]
	}
	return ""
}

// tokenGuard allows "Bearer rw" everything, "Bearer ro" reads and inspections, nothing else.
func tokenGuard(r policy.Request) policy.Decision {
	switch firstValue(r.Headers, "authorization") {
	case "Bearer rw":
		return policy.Decision{Allowed: true}
	case "Bearer ro":
		if r.Operation == policy.OpWrite {
			return policy.Decision{Status: 403, Message: "read-only token"}
		}
		return policy.Decision{Allowed: true}
	}
	return policy.Decision{Status: 401, Message: "missing token"}
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestPolicySeesEveryRPC(t *testing.T) {
	g := &recordingGuard{decide: func(policy.Request) policy.Decision { return policy.Decision{Allowed: true} }}
	h := newGuardedHarness(t, Config{}, nil, g)
	ctx := withToken(ctxT(t), "rw")
	blob := []byte("policy blob")
	d := digestOf(blob)
	check := func(method, op, namespace, class, hash string) {
		t.Helper()
		r := g.last(t)
		if r.Transport != "grpc" || r.Route != method || r.Method != "POST" || r.Operation != op ||
			r.TenantID != testTenant || r.NamespaceID != namespace || r.Producer != "bazel" ||
			r.ArtifactClass != class || r.ArtifactHash != hash || firstValue(r.Headers, "authorization") != "Bearer rw" {
			t.Fatalf("%s: policy request %+v", method, r)
		}
	}
	const cas, ac, bs = "/build.bazel.remote.execution.v2.ContentAddressableStorage/", "/build.bazel.remote.execution.v2.ActionCache/", "/google.bytestream.ByteStream/"

	_, err := h.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: "mono"})
	wantCode(t, err, codes.OK)
	check("/build.bazel.remote.execution.v2.Capabilities/GetCapabilities", policy.OpInspect, "mono", "blob", "")
	_, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d}})
	wantCode(t, err, codes.OK)
	check(cas+"FindMissingBlobs", policy.OpInspect, "default", "blob", "")
	_, err = h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{InstanceName: "mono",
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: blob}}})
	wantCode(t, err, codes.OK)
	check(cas+"BatchUpdateBlobs", policy.OpWrite, "mono", "blob", "")
	_, err = h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{InstanceName: "mono", Digests: []*repb.Digest{d}})
	wantCode(t, err, codes.OK)
	check(cas+"BatchReadBlobs", policy.OpRead, "mono", "blob", "")
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "mono", ActionDigest: d})
	wantCode(t, err, codes.NotFound)
	check(ac+"GetActionResult", policy.OpRead, "mono", "action_cache", d.GetHash())
	_, err = h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "mono", ActionDigest: d, ActionResult: &repb.ActionResult{}})
	wantCode(t, err, codes.OK)
	check(ac+"UpdateActionResult", policy.OpWrite, "mono", "action_cache", d.GetHash())

	other := []byte("streamed")
	_, err = h.write(ctx, uploadName("mono", false, digestOf(other)), other, 3)
	wantCode(t, err, codes.OK)
	check(bs+"Write", policy.OpWrite, "mono", "blob", digestOf(other).GetHash())
	got, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("mono", false, digestOf(other))})
	if err != nil || string(got) != "streamed" {
		t.Fatalf("Read: %q %v", got, err)
	}
	check(bs+"Read", policy.OpRead, "mono", "blob", digestOf(other).GetHash())
	_, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, d)})
	check(bs+"QueryWriteStatus", policy.OpWrite, "default", "blob", d.GetHash())
	_ = err

	// Health checks never run the policy; reflection is a plain "request".
	n := g.count()
	if _, err := healthpb.NewHealthClient(h.conn).Check(ctxT(t), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health: %v", err)
	}
	if g.count() != n {
		t.Fatal("the health check ran the policy")
	}
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}})
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("reflection: %v", err)
	}
	_ = stream.CloseSend()
	if r := g.last(t); r.Operation != policy.OpRequest || r.Route != "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo" {
		t.Fatalf("reflection policy request: %+v", r)
	}
}

func TestPolicyDenialsAreGRPCCodes(t *testing.T) {
	h := newGuardedHarness(t, Config{}, nil, &recordingGuard{decide: tokenGuard})
	blob := []byte("denied blob")
	d := digestOf(blob)
	update := &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: blob}}}

	_, err := h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{})
	wantCode(t, err, codes.Unauthenticated)
	_, err = h.cas.BatchUpdateBlobs(withToken(ctxT(t), "ro"), update)
	wantCode(t, err, codes.PermissionDenied)
	_, err = h.write(withToken(ctxT(t), "ro"), uploadName("", false, d), blob, 4)
	wantCode(t, err, codes.PermissionDenied)
	_, err = h.write(ctxT(t), uploadName("", false, d), blob, 4)
	wantCode(t, err, codes.Unauthenticated)
	if h.casStored("default", blob) {
		t.Fatal("a denied write stored the blob")
	}
	_, _, err = h.read(ctxT(t), &bspb.ReadRequest{ResourceName: readName("", false, d)})
	wantCode(t, err, codes.Unauthenticated)
	// The read-only token reads and the read-write one writes.
	_, err = h.cas.BatchUpdateBlobs(withToken(ctxT(t), "rw"), update)
	wantCode(t, err, codes.OK)
	got, _, err := h.read(withToken(ctxT(t), "ro"), &bspb.ReadRequest{ResourceName: readName("", false, d)})
	if err != nil || string(got) != string(blob) {
		t.Fatalf("read-only read: %q %v", got, err)
	}
	// An invalid resource name is refused before the policy, as INVALID_ARGUMENT.
	_, _, err = h.read(ctxT(t), &bspb.ReadRequest{ResourceName: "nonsense"})
	wantCode(t, err, codes.InvalidArgument)
	for status, want := range map[int]codes.Code{400: codes.InvalidArgument, 404: codes.NotFound, 429: codes.ResourceExhausted,
		503: codes.Unavailable, 500: codes.Internal, 418: codes.PermissionDenied} {
		if got := denialStatus(policy.Decision{Status: status}); grpcstatus.Code(got) != want {
			t.Errorf("status %d → %v, want %v", status, got, want)
		}
	}
}

func TestPolicyResponseHeaders(t *testing.T) {
	h := newGuardedHarness(t, Config{}, nil, &recordingGuard{decide: tokenGuard, headers: true})
	var md metadata.MD
	_, err := h.caps.GetCapabilities(withToken(ctxT(t), "rw"), &repb.GetCapabilitiesRequest{}, grpc.Header(&md))
	wantCode(t, err, codes.OK)
	if got := md.Get("x-policy"); len(got) != 1 || got[0] != "artifact.inspect 200" {
		t.Fatalf("unary header metadata: %v", md)
	}
	md = nil
	_, err = h.ac.GetActionResult(ctxT(t), &repb.GetActionResultRequest{ActionDigest: digestOf([]byte("x"))}, grpc.Header(&md))
	wantCode(t, err, codes.Unauthenticated)
	if got := md.Get("x-policy"); len(got) != 1 || got[0] != "artifact.read 401" {
		t.Fatalf("denied unary header metadata: %v", md)
	}
	blob := []byte("with headers")
	_, err = h.cas.BatchUpdateBlobs(withToken(ctxT(t), "rw"), &repb.BatchUpdateBlobsRequest{
		Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digestOf(blob), Data: blob}}})
	wantCode(t, err, codes.OK)
	stream, err := h.bs.Read(withToken(ctxT(t), "ro"), &bspb.ReadRequest{ResourceName: readName("", false, digestOf(blob))})
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := stream.Header()
	if err != nil || strings.Join(hdr.Get("x-policy"), ",") != "artifact.read 200" {
		t.Fatalf("stream header metadata: %v %v", hdr, err)
	}
}

// TestPolicyWithTheRealEngine runs the Lua engine behind the interceptors: credentials from
// metadata, including Basic, reach the script.
func TestPolicyWithTheRealEngine(t *testing.T) {
	script := filepath.Join(t.TempDir(), "policy.lua")
	if err := os.WriteFile(script, []byte(`
function authenticate(ctx)
  local c = ctx.credentials
  if c and c.scheme == "bearer" and c.token == "good" then return {principal = {id = "ci"}} end
  if c and c.scheme == "basic" and c.username == "bazel" and c.password == "pw" then return {principal = {id = "user"}} end
  if ctx.headers["x-api-key"] == "key" then return {principal = {id = "key"}} end
  return {deny = {status = 401, message = "Bazel needs a token"}}
end
function authorize(ctx, p)
  if ctx.transport ~= "grpc" or ctx.producer ~= "bazel" then return {allow = false} end
  return {allow = true}
end`), 0o600); err != nil {
		t.Fatal(err)
	}
	e, err := policy.New(policy.Config{ScriptPath: script, AllowTTL: 1e9, DenyTTL: 1e9, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Close() })
	h := newGuardedHarness(t, Config{}, nil, e)
	for name, ctx := range map[string]context.Context{
		"bearer": withToken(ctxT(t), "good"),
		"basic":  metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Basic YmF6ZWw6cHc="),
		"apikey": metadata.AppendToOutgoingContext(ctxT(t), "x-api-key", "key"),
	} {
		if _, err := h.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err = h.caps.GetCapabilities(withToken(ctxT(t), "bad"), &repb.GetCapabilitiesRequest{})
	wantCode(t, err, codes.Unauthenticated)
	if !strings.Contains(err.Error(), "Bazel needs a token") {
		t.Fatalf("denial message: %v", err)
	}
}

func TestMetadataIsBounded(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	small := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+strings.Repeat("a", 32<<10))
	if _, err := h.caps.GetCapabilities(small, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Fatalf("32 KiB of metadata: %v", err)
	}
	huge := metadata.AppendToOutgoingContext(ctxT(t), "authorization", "Bearer "+strings.Repeat("a", 100<<10))
	if _, err := h.caps.GetCapabilities(huge, &repb.GetCapabilitiesRequest{}); err == nil {
		t.Fatal("100 KiB of metadata was accepted")
	}
}
