package reapi

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage/storagetest"
)

// BenchmarkFindMissingBlobsThroughPolicy is a FindMissingBlobs of one present blob over
// loopback, carrying the metadata a Bazel client sends (a bearer token, its request metadata,
// a request id), without a policy and with the Lua engine in front (every call a cached
// allow): the difference is what access control costs a call.
//
//	go test -run '^$' -bench FindMissingBlobsThroughPolicy -benchmem ./reapi/
func BenchmarkFindMissingBlobsThroughPolicy(b *testing.B) {
	for _, withPolicy := range []bool{false, true} {
		name := "no policy"
		var guard Guard
		if withPolicy {
			name = "cached allow"
			guard = benchEngine(b)
		}
		b.Run(name, func(b *testing.B) {
			h := newGuardedHarness(b, Config{}, nil, guard)
			ctx := metadata.NewOutgoingContext(b.Context(), benchMetadata(b))
			blob := []byte("present blob")
			if _, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{
				Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: digestOf(blob), Data: blob}}}); err != nil {
				b.Fatal(err)
			}
			req := &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{digestOf(blob)}}
			b.ReportAllocs()
			for b.Loop() {
				resp, err := h.cas.FindMissingBlobs(ctx, req)
				if err != nil || len(resp.GetMissingBlobDigests()) != 0 {
					b.Fatalf("FindMissingBlobs: %v %v", resp, err)
				}
			}
		})
	}
}

// BenchmarkUnaryPolicyCachedAllow is the policy interceptor alone, in process, on a call
// with benchMetadata whose decision is cached: what the policy adds to every unary call.
//
//	go test -run '^$' -bench UnaryPolicyCachedAllow -benchmem ./reapi/
func BenchmarkUnaryPolicyCachedAllow(b *testing.B) {
	srv, err := New(Config{}, Deps{Store: storagetest.NewMemory(), Guard: benchEngine(b)})
	if err != nil {
		b.Fatal(err)
	}
	// What the server's transport adds to the client's metadata.
	transport := metadata.Pairs(":authority", "kura.example:9092", "content-type", "application/grpc",
		"user-agent", "grpc-java-netty/1.68.1", "grpc-accept-encoding", "gzip")
	ctx := metadata.NewIncomingContext(b.Context(), metadata.Join(benchMetadata(b), transport))
	req := &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{digestOf([]byte("present blob"))}}
	info := &grpc.UnaryServerInfo{FullMethod: "/build.bazel.remote.execution.v2.ContentAddressableStorage/FindMissingBlobs"}
	handler := func(context.Context, any) (any, error) { return nil, nil }
	b.ReportAllocs()
	for b.Loop() {
		if _, err := srv.unaryPolicy(ctx, req, info, handler); err != nil {
			b.Fatal(err)
		}
	}
}

// benchEngine is the Lua engine with a script that allows the bench token everything.
func benchEngine(b *testing.B) *policy.Engine {
	script := filepath.Join(b.TempDir(), "policy.lua")
	if err := os.WriteFile(script, []byte(`
function authenticate(ctx)
  local c = ctx.credentials
  if c and c.scheme == "bearer" and c.token == "bench-token" then return {principal = {id = "bench"}} end
  return {deny = {status = 401}}
end
function authorize(ctx, p) return {allow = true} end`), 0o600); err != nil {
		b.Fatal(err)
	}
	e, err := policy.New(policy.Config{ScriptPath: script, AllowTTL: 600e9, DenyTTL: 3e9, Registerer: prometheus.NewRegistry()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Close() })
	return e
}

// benchMetadata is what a Bazel client sends with a call: a bearer token, its request
// metadata and a request id.
func benchMetadata(b *testing.B) metadata.MD {
	rm, err := proto.Marshal(&repb.RequestMetadata{
		ToolDetails:             &repb.ToolDetails{ToolName: "bazel", ToolVersion: "7.4.1"},
		ActionId:                "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
		ToolInvocationId:        "0f9b6a9e-4c7f-4f43-9a55-6a8c1c2d9b10",
		CorrelatedInvocationsId: "5d0b1a3c-7e2f-4b8a-9c1d-2e3f4a5b6c7d",
		ActionMnemonic:          "GoCompilePkg",
		TargetId:                "//reapi:reapi",
		ConfigurationId:         "k8-fastbuild",
	})
	if err != nil {
		b.Fatal(err)
	}
	return metadata.Pairs(
		"authorization", "Bearer bench-token",
		"build.bazel.remote.execution.v2.requestmetadata-bin", string(rm),
		"x-request-id", "bench-request",
	)
}
