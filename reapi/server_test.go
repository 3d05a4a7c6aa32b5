package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestReflectionListsServices(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	stream, err := reflectionpb.NewServerReflectionClient(h.conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		got[s.GetName()] = true
	}
	for _, want := range []string{
		"build.bazel.remote.execution.v2.Capabilities", "build.bazel.remote.execution.v2.ContentAddressableStorage",
		"build.bazel.remote.execution.v2.ActionCache", "google.bytestream.ByteStream", "grpc.health.v1.Health",
		"grpc.reflection.v1.ServerReflection",
	} {
		if !got[want] {
			t.Errorf("reflection does not list %s (got %v)", want, got)
		}
	}
	// Descriptors resolve, which is what grpcurl and ghz need.
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{
		FileContainingSymbol: "google.bytestream.ByteStream"}}); err != nil {
		t.Fatal(err)
	}
	resp, err = stream.Recv()
	if err != nil || len(resp.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
		t.Fatalf("descriptor of ByteStream: %v %v", resp, err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
}

func TestHealth(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	client := healthpb.NewHealthClient(h.conn)
	for _, svc := range []string{"", "build.bazel.remote.execution.v2.ContentAddressableStorage", "google.bytestream.ByteStream"} {
		resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: svc})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health of %q: %v %v", svc, resp, err)
		}
	}
	h.srv.SetServing(false)
	resp, err := client.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("after SetServing(false): %v %v", resp, err)
	}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	blob := randomBlob(3000, 300)
	h.upload("", blob)
	if _, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, digestOf(blob))}); err != nil {
		t.Fatal(err)
	}
	_, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, digestOf([]byte("absent")))})
	wantCode(t, err, codes.NotFound)
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: digestOf([]byte("absent"))})
	wantCode(t, err, codes.NotFound)

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kura_grpc_requests_total", map[string]string{"method": "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs", "code": "OK"}, 1},
		{"kura_grpc_requests_total", map[string]string{"method": "/google.bytestream.ByteStream/Read", "code": "OK"}, 1},
		{"kura_grpc_requests_total", map[string]string{"method": "/google.bytestream.ByteStream/Read", "code": "NotFound"}, 1},
		{"kura_grpc_requests_total", map[string]string{"method": "/build.bazel.remote.execution.v2.ActionCache/GetActionResult", "code": "NotFound"}, 1},
		{"kura_grpc_request_duration_seconds", map[string]string{"method": "/google.bytestream.ByteStream/Read"}, 2},
		{"kura_artifact_writes_total", map[string]string{"kind": "cas", "client": "bazel", "artifact_class": "blob", "result": "stored"}, 1},
		{"kura_artifact_write_bytes_total", map[string]string{"kind": "cas", "client": "bazel"}, 3000},
		{"kura_artifact_reads_total", map[string]string{"kind": "cas", "client": "bazel", "result": "hit"}, 1},
		{"kura_artifact_reads_total", map[string]string{"kind": "cas", "client": "bazel", "result": "miss"}, 1},
		{"kura_artifact_read_bytes_total", map[string]string{"kind": "cas"}, 3000},
		{"kura_artifact_reads_total", map[string]string{"kind": "ac", "artifact_class": "action_cache", "result": "miss"}, 1},
		{"kura_cache_lookups_total", map[string]string{"protocol": "reapi", "tenant": testTenant, "namespace": "default", "result": "hit"}, 1},
		{"kura_cache_lookups_total", map[string]string{"protocol": "reapi", "tenant": testTenant, "namespace": "default", "result": "miss"}, 2},
	} {
		if got := counterValue(t, h.reg, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
}

func TestMetricsShareARegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	mem := storagetest.NewMemory()
	a, err := New(Config{}, Deps{Store: mem, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Config{}, Deps{Store: mem, Registerer: reg})
	if err != nil {
		t.Fatalf("a second server on the same registry: %v", err)
	}
	a.metrics.write(storage.KindCAS, resultStored, 1)
	b.metrics.write(storage.KindCAS, resultStored, 1)
	if got := counterValue(t, reg, "kura_artifact_writes_total", map[string]string{"result": "stored"}); got != 2 {
		t.Fatalf("shared counter = %v", got)
	}
	// A family with the same name but other labels is a wiring error, reported by New.
	conflicting := prometheus.NewRegistry()
	conflicting.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kura_artifact_reads_total", Help: "x"}, []string{"kind"}))
	if _, err := New(Config{}, Deps{Store: mem, Registerer: conflicting}); err == nil {
		t.Fatal("conflicting metric family accepted")
	}
}

func TestStorageErrorsBecomeStatusCodes(t *testing.T) {
	blob := randomBlob(5000, 400)
	d := digestOf(blob)
	action := digestOf([]byte("action"))

	t.Run("disk full", func(t *testing.T) {
		h := newHarness(t, Config{}, func(s storage.Store) storage.Store {
			return &failingStore{Store: s, putErr: storage.ErrInsufficientStorage}
		})
		ctx := ctxT(t)
		_, err := h.write(ctx, uploadName("", false, d), blob, 1000)
		wantCode(t, err, codes.ResourceExhausted)
		resp, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: blob}}})
		if err != nil {
			t.Fatal(err)
		}
		wantItemCode(t, resp.GetResponses()[0].GetStatus(), codes.ResourceExhausted)
		_, err = h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: &repb.ActionResult{}})
		wantCode(t, err, codes.ResourceExhausted)
		if counterValue(t, h.reg, "kura_artifact_writes_total", map[string]string{"result": "error"}) != 3 {
			t.Error("failed writes not counted as errors")
		}
	})
	t.Run("store unavailable", func(t *testing.T) {
		h := newHarness(t, Config{}, func(s storage.Store) storage.Store {
			return &failingStore{Store: s, openErr: storage.ErrUnavailable, statErr: storage.ErrUnavailable, findErr: storage.ErrUnavailable}
		})
		ctx := ctxT(t)
		_, _, err := h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, d)})
		wantCode(t, err, codes.Unavailable)
		_, err = h.write(ctx, uploadName("", false, d), blob, 1000)
		wantCode(t, err, codes.Unavailable)
		resp, err := h.cas.BatchReadBlobs(ctx, &repb.BatchReadBlobsRequest{Digests: []*repb.Digest{d}})
		if err != nil {
			t.Fatal(err)
		}
		wantItemCode(t, resp.GetResponses()[0].GetStatus(), codes.Unavailable)
		_, err = h.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: []*repb.Digest{d}})
		wantCode(t, err, codes.Unavailable)
		_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action})
		wantCode(t, err, codes.Unavailable)
		_, err = h.bs.QueryWriteStatus(ctx, &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, d)})
		wantCode(t, err, codes.Unavailable)
		// Capabilities never touch the store.
		if _, err := h.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
			t.Fatalf("capabilities with a failing store: %v", err)
		}
	})
	t.Run("write older than a namespace tombstone", func(t *testing.T) {
		// storage.ErrStale is not an error for clients: the write simply changed nothing.
		h := newHarness(t, Config{}, func(s storage.Store) storage.Store {
			return &failingStore{Store: s, putErr: storage.ErrStale}
		})
		ctx := ctxT(t)
		resp, err := h.write(ctx, uploadName("", false, d), blob, 1000)
		if err != nil || resp.GetCommittedSize() != d.GetSizeBytes() {
			t.Fatalf("ByteStream write: %v %v", resp, err)
		}
		batch, err := h.cas.BatchUpdateBlobs(ctx, &repb.BatchUpdateBlobsRequest{Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: blob}}})
		if err != nil {
			t.Fatal(err)
		}
		wantItemCode(t, batch.GetResponses()[0].GetStatus(), codes.OK)
		if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: &repb.ActionResult{}}); err != nil {
			t.Fatalf("UpdateActionResult: %v", err)
		}
	})
	t.Run("corrupt record", func(t *testing.T) {
		h := newHarness(t, Config{}, func(s storage.Store) storage.Store {
			return &failingStore{Store: s, openErr: storage.ErrCorrupt}
		})
		_, _, err := h.read(ctxT(t), &bspb.ReadRequest{ResourceName: readName("", false, d)})
		wantCode(t, err, codes.NotFound)
	})
}

func TestPanicBecomesInternal(t *testing.T) {
	h := newHarness(t, Config{}, func(s storage.Store) storage.Store { return panickingStore{s} })
	ctx := ctxT(t)
	_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: digestOf([]byte("x"))})
	wantCode(t, err, codes.Internal)
	_, _, err = h.read(ctx, &bspb.ReadRequest{ResourceName: readName("", false, digestOf([]byte("x")))})
	wantCode(t, err, codes.Internal)
	// The server is still alive.
	if _, err := h.caps.GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, h.reg, "kura_grpc_requests_total", map[string]string{"code": "Internal"}); got != 2 {
		t.Fatalf("internal errors counted %v times", got)
	}
}

type panickingStore struct{ storage.Store }

func (panickingStore) Open(context.Context, storage.Key, int64, int64) (storage.Reader, error) {
	panic("store exploded")
}

func TestCodeOf(t *testing.T) {
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("x: %w", storage.ErrNotFound), codes.NotFound},
		{fmt.Errorf("x: %w", storage.ErrCorrupt), codes.NotFound},
		{fmt.Errorf("x: %w", storage.ErrInvalidKey), codes.InvalidArgument},
		{fmt.Errorf("x: %w", storage.ErrDigestMismatch), codes.InvalidArgument},
		{fmt.Errorf("x: %w", storage.ErrTooLarge), codes.InvalidArgument},
		{fmt.Errorf("x: %w", storage.ErrInsufficientStorage), codes.ResourceExhausted},
		{fmt.Errorf("x: %w", storage.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("x: %w", storage.ErrBusy), codes.ResourceExhausted},
		{fmt.Errorf("x: %w: %w", storage.ErrUnavailable, storage.ErrBusy), codes.ResourceExhausted},
		{fmt.Errorf("x: %w", errInvalidArgument), codes.InvalidArgument},
		{fmt.Errorf("x: %w", errOutOfRange), codes.OutOfRange},
		{fmt.Errorf("x: %w", errServerLimit), codes.ResourceExhausted},
		{fmt.Errorf("x: %w", context.Canceled), codes.Canceled},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("recv: %w", status.Error(codes.Aborted, "gone")), codes.Aborted},
		{io.ErrUnexpectedEOF, codes.Internal},
		{errors.New("mystery"), codes.Internal},
	} {
		if got := codeOf(c.err); got != c.want {
			t.Errorf("codeOf(%v) = %v, want %v", c.err, got, c.want)
		}
		if c.err != nil && status.Code(toStatus(c.err)) != c.want {
			t.Errorf("toStatus(%v) has code %v", c.err, status.Code(toStatus(c.err)))
		}
	}
	st := status.Error(codes.PermissionDenied, "no")
	if toStatus(st) != st {
		t.Error("a status error was rewrapped")
	}
}

func TestConfig(t *testing.T) {
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero config: %v", err)
	}
	err := Config{TenantID: "a\x00b", MaxBatchTotalSizeBytes: 1 << 20, MaxCASBlobSizeBytes: -1, MaxProtoBytes: 10}.Validate()
	if err == nil {
		t.Fatal("bad config accepted")
	}
	for _, want := range []string{"TenantID", "MaxBatchTotalSizeBytes", "MaxCASBlobSizeBytes", "MaxProtoBytes"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
	if err := (Config{MaxBatchTotalSizeBytes: 8 << 20, MaxDecompressedBytes: 4 << 20}).Validate(); err == nil || !strings.Contains(err.Error(), "MaxDecompressedBytes") {
		t.Errorf("a decompressed limit below the batch limit: %v", err)
	}
	if _, err := New(Config{}, Deps{}); err == nil {
		t.Error("New without a store succeeded")
	}
	if _, err := New(Config{MaxBatchTotalSizeBytes: 1}, Deps{Store: storagetest.NewMemory()}); err == nil {
		t.Error("New with a bad config succeeded")
	}
	cfg := Config{MaxBatchTotalSizeBytes: 16 << 20}.withDefaults()
	if cfg.maxRecvMsgSize() <= int(cfg.MaxBatchTotalSizeBytes) || cfg.TenantID != DefaultTenantID || cfg.MaxDecompressedBytes < cfg.MaxBatchTotalSizeBytes {
		t.Errorf("defaults %+v", cfg)
	}
	if n := len(ServerOptions(Config{})); n != 8 {
		t.Errorf("%d server options", n)
	}
}

// TestDefaultTenantAndNamespace pins the storage identity shared with the HTTP cache.
func TestDefaultTenantAndNamespace(t *testing.T) {
	mem := storagetest.NewMemory()
	srv, err := New(Config{}, Deps{Store: mem})
	if err != nil {
		t.Fatal(err)
	}
	blob := []byte("shared with the HTTP cache")
	d, err := fnSHA256.parse(digestOf(blob))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.putIdentity(context.Background(), DefaultNamespace, d, blob); err != nil {
		t.Fatal(err)
	}
	key := storage.Key{Tenant: "default", Namespace: "default", Kind: storage.KindCAS, Name: d.hex()}
	r, err := mem.Open(context.Background(), key, 0, -1)
	if err != nil {
		t.Fatalf("blob not at %s: %v", key, err)
	}
	defer func() { _ = r.Close() }()
	got, _ := io.ReadAll(r)
	if !bytes.Equal(got, blob) || r.Info().ContentType != "application/octet-stream" {
		t.Fatalf("stored %q as %q", got, r.Info().ContentType)
	}
}
