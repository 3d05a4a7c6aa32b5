package reapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const testTenant = "acme"

// harness is a real gRPC server on a 127.0.0.1 port with a client connected to it.
type harness struct {
	t     testing.TB
	mem   *storagetest.Memory
	store storage.Store // what the server uses: mem, possibly decorated
	srv   *Server
	reg   *prometheus.Registry
	conn  *grpc.ClientConn
	caps  repb.CapabilitiesClient
	cas   repb.ContentAddressableStorageClient
	ac    repb.ActionCacheClient
	bs    bspb.ByteStreamClient
	// staging counts the bytes staged for resumable uploads (newResumableHarness), else nil.
	staging *stagingStore
}

// newHarness starts a server over an in-memory store; wrap, when set, decorates the store.
func newHarness(t testing.TB, cfg Config, wrap func(storage.Store) storage.Store) *harness {
	t.Helper()
	return newGuardedHarness(t, cfg, wrap, nil)
}

// newDiskHarness is newHarness over a real disk store (Pebble and segment files in a
// temporary directory, fsync on), for the benchmarks of the write and read paths.
func newDiskHarness(t testing.TB) *harness {
	t.Helper()
	return newDiskHarnessWith(t, Config{})
}

// newDiskHarnessWith is newDiskHarness with a configuration; wrap, when set, decorates the
// disk store.
func newDiskHarnessWith(t testing.TB, cfg Config, wrap ...func(*local.Store) storage.Store) *harness {
	t.Helper()
	return newHarness(t, cfg, func(storage.Store) storage.Store {
		st, err := local.Open(local.Options{
			DataDir:    t.TempDir(),
			Registerer: prometheus.NewRegistry(),
			Metadata:   meta.Options{BlockCacheBytes: 8 << 20, MemTableBytes: 64 << 20},
		})
		if err != nil {
			t.Fatalf("open store: %v", err)
		}
		t.Cleanup(func() {
			if err := st.Close(); err != nil {
				t.Errorf("close store: %v", err)
			}
		})
		if len(wrap) > 0 {
			return wrap[0](st)
		}
		return st
	})
}

// newGuardedHarness is newHarness with an access policy on every call.
func newGuardedHarness(t testing.TB, cfg Config, wrap func(storage.Store) storage.Store, guard Guard) *harness {
	t.Helper()
	return newHarnessWith(t, cfg, wrap, func(d *Deps) { d.Guard = guard })
}

// newHarnessWith is newHarness with Deps adjusted by deps (a guard, a tracer, a logger).
func newHarnessWith(t testing.TB, cfg Config, wrap func(storage.Store) storage.Store, deps func(*Deps)) *harness {
	t.Helper()
	if cfg.TenantID == "" {
		cfg.TenantID = testTenant
	}
	h := &harness{t: t, mem: storagetest.NewMemory(), reg: prometheus.NewRegistry()}
	h.store = h.mem
	if wrap != nil {
		h.store = wrap(h.mem)
	}
	d := Deps{Store: h.store, Registerer: h.reg}
	if deps != nil {
		deps(&d)
	}
	srv, err := New(cfg, d)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	g := grpc.NewServer(srv.ServerOptions()...)
	srv.Register(g)
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		g.Stop()
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	h.conn = conn
	h.caps = repb.NewCapabilitiesClient(conn)
	h.cas = repb.NewContentAddressableStorageClient(conn)
	h.ac = repb.NewActionCacheClient(conn)
	h.bs = bspb.NewByteStreamClient(conn)
	return h
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// randomBlob returns n pseudo-random bytes, different for every seed.
func randomBlob(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		v := r.Uint64()
		for j := range 8 {
			b[i+j] = byte(v >> (8 * j))
		}
	}
	for i := n - n%8; i < n; i++ {
		b[i] = byte(r.Uint32())
	}
	return b
}

func digestOf(data []byte) *repb.Digest {
	sum := sha256.Sum256(data)
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

func zstdCompress(t *testing.T, data []byte) []byte {
	t.Helper()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = enc.Close() }()
	return enc.EncodeAll(data, nil)
}

func zstdDecompress(t *testing.T, data []byte) []byte {
	t.Helper()
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	out, err := dec.DecodeAll(data, nil)
	if err != nil {
		t.Fatalf("decode zstd: %v", err)
	}
	return out
}

// casStored reports whether the blob is in the store under the shared CAS naming.
func (h *harness) casStored(namespace string, data []byte) bool {
	h.t.Helper()
	sum := sha256.Sum256(data)
	_, err := h.mem.Stat(context.Background(), storage.Key{Tenant: testTenant, Namespace: namespace, Kind: storage.KindCAS, Name: hex.EncodeToString(sum[:])})
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		h.t.Fatalf("stat: %v", err)
	}
	return err == nil
}

// upload stores blobs with BatchUpdateBlobs and fails the test on any error.
func (h *harness) upload(instance string, blobs ...[]byte) {
	h.t.Helper()
	req := &repb.BatchUpdateBlobsRequest{InstanceName: instance}
	for _, b := range blobs {
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
	}
	resp, err := h.cas.BatchUpdateBlobs(ctxT(h.t), req)
	if err != nil {
		h.t.Fatalf("BatchUpdateBlobs: %v", err)
	}
	for _, r := range resp.GetResponses() {
		if r.GetStatus().GetCode() != int32(codes.OK) {
			h.t.Fatalf("upload %s: %v", r.GetDigest().GetHash(), r.GetStatus())
		}
	}
}

// uploadName is a ByteStream upload resource name.
func uploadName(instance string, compressed bool, d *repb.Digest) string {
	name := fmt.Sprintf("uploads/0f9b6a9e-4c7f-4f43-9a55-6a8c1c2d9b10/blobs/%s/%d", d.GetHash(), d.GetSizeBytes())
	if compressed {
		name = fmt.Sprintf("uploads/0f9b6a9e-4c7f-4f43-9a55-6a8c1c2d9b10/compressed-blobs/zstd/%s/%d", d.GetHash(), d.GetSizeBytes())
	}
	if instance != "" {
		name = instance + "/" + name
	}
	return name
}

func readName(instance string, compressed bool, d *repb.Digest) string {
	name := fmt.Sprintf("blobs/%s/%d", d.GetHash(), d.GetSizeBytes())
	if compressed {
		name = fmt.Sprintf("compressed-blobs/zstd/%s/%d", d.GetHash(), d.GetSizeBytes())
	}
	if instance != "" {
		name = instance + "/" + name
	}
	return name
}

// write sends payload in chunks with correct offsets and finish_write, and returns the response.
func (h *harness) write(ctx context.Context, name string, payload []byte, chunk int) (*bspb.WriteResponse, error) {
	stream, err := h.bs.Write(ctx)
	if err != nil {
		return nil, err
	}
	off := 0
	for {
		end := min(off+chunk, len(payload))
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: payload[off:end], FinishWrite: end == len(payload)}
		if off == 0 {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			break // the server answered early; CloseAndRecv has its response
		}
		off = end
		if off == len(payload) {
			break
		}
	}
	return stream.CloseAndRecv()
}

// read collects a ByteStream read and the sizes of its messages.
func (h *harness) read(ctx context.Context, req *bspb.ReadRequest) ([]byte, []int, error) {
	stream, err := h.bs.Read(ctx, req)
	if err != nil {
		return nil, nil, err
	}
	var buf bytes.Buffer
	var sizes []int
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return buf.Bytes(), sizes, nil
		}
		if err != nil {
			return buf.Bytes(), sizes, err
		}
		sizes = append(sizes, len(resp.GetData()))
		buf.Write(resp.GetData())
	}
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func wantItemCode(t *testing.T, st interface {
	GetCode() int32
	GetMessage() string
}, want codes.Code) {
	t.Helper()
	if got := codes.Code(st.GetCode()); got != want {
		t.Fatalf("item status %v (%s), want %v", got, st.GetMessage(), want)
	}
}

// counterValue sums the samples of a counter family whose labels include all of want.
func counterValue(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelsMatch(m, want) {
				total += m.GetCounter().GetValue() + float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return total
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	found := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

// hidingStore hides chosen keys as if eviction had removed them.
type hidingStore struct {
	storage.Store
	mu     sync.Mutex
	hidden map[storage.Key]bool
}

func (s *hidingStore) hide(k storage.Key) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.hidden == nil {
		s.hidden = map[storage.Key]bool{}
	}
	s.hidden[k] = true
}

func (s *hidingStore) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hidden = nil
}

func (s *hidingStore) isHidden(k storage.Key) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hidden[k]
}

func (s *hidingStore) Stat(ctx context.Context, k storage.Key) (storage.Info, error) {
	if s.isHidden(k) {
		return storage.Info{}, fmt.Errorf("stat %s: %w", k, storage.ErrNotFound)
	}
	return s.Store.Stat(ctx, k)
}

func (s *hidingStore) Open(ctx context.Context, k storage.Key, off, n int64) (storage.Reader, error) {
	if s.isHidden(k) {
		return nil, fmt.Errorf("open %s: %w", k, storage.ErrNotFound)
	}
	return s.Store.Open(ctx, k, off, n)
}

func (s *hidingStore) FindMissing(ctx context.Context, keys []storage.Key) ([]storage.Key, error) {
	missing, err := s.Store.FindMissing(ctx, keys)
	if err != nil {
		return nil, err
	}
	var out []storage.Key
	for _, k := range keys {
		if s.isHidden(k) {
			out = append(out, k)
		}
	}
	for _, k := range missing {
		if !s.isHidden(k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// failingStore fails chosen operations with the given errors.
type failingStore struct {
	storage.Store
	putErr, openErr, statErr, findErr error
}

func (s *failingStore) Put(ctx context.Context, k storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	if s.putErr != nil {
		// Read a little first, like a store that fails part-way through.
		_, _ = io.CopyN(io.Discard, body, 10)
		return storage.PutResult{}, fmt.Errorf("put %s: %w", k, s.putErr)
	}
	return s.Store.Put(ctx, k, body, opts)
}

func (s *failingStore) Open(ctx context.Context, k storage.Key, off, n int64) (storage.Reader, error) {
	if s.openErr != nil {
		return nil, fmt.Errorf("open %s: %w", k, s.openErr)
	}
	return s.Store.Open(ctx, k, off, n)
}

func (s *failingStore) Stat(ctx context.Context, k storage.Key) (storage.Info, error) {
	if s.statErr != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", k, s.statErr)
	}
	return s.Store.Stat(ctx, k)
}

func (s *failingStore) FindMissing(ctx context.Context, keys []storage.Key) ([]storage.Key, error) {
	if s.findErr != nil {
		return nil, fmt.Errorf("find missing: %w", s.findErr)
	}
	return s.Store.FindMissing(ctx, keys)
}
