package httpapi

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// harness is one real server on a 127.0.0.1 listener backed by the in-memory store, or by the
// real disk store (storage/local) when harnessOpts.disk is set.
type harness struct {
	t   testing.TB
	srv *Server
	// mem is the in-memory store (nil on disk); store is whichever backs the server, seen
	// without the fault injection of harnessOpts.wrap.
	mem    *storagetest.Memory
	store  storage.Store
	reg    *prometheus.Registry
	addr   string
	base   string
	client *http.Client
	// dataDir and storeReg are the disk store's directory and metrics (disk only).
	dataDir  string
	storeReg *prometheus.Registry
}

type harnessOpts struct {
	cfg     func(*Config)
	limits  func(*limits)
	guard   Guard
	members Membership
	// lifecycle is the node's traffic state (nil: always serving).
	lifecycle *lifecycle.Node
	// events receives the analytics events (nil: analytics off).
	events EventRecorder
	// status feeds the status page (nil: identity and hit ratios only).
	status StatusSource
	// wrap replaces the store and multipart seen by the server (fault injection).
	wrap func(*storagetest.Memory) (storage.Store, storage.Multipart)
	// disk backs the server with storage/local (Pebble and segment files, fsynced) in a
	// temporary directory, closed after the server has shut down.
	disk bool
	// front, when set, decorates the store for the read path only (Deps.Store); the
	// undecorated store is Deps.Local, as a node wires its read-through.
	front func(t testing.TB, local storage.Store) storage.Store
	// tracer and logger are Deps.TracerProvider and Deps.Logger (nil: none).
	tracer trace.TracerProvider
	logger *slog.Logger
}

const testTenant = "default"

func newHarness(t testing.TB, o harnessOpts) *harness {
	t.Helper()
	var (
		mem     *storagetest.Memory
		backing storage.Store
		st      storage.Store
		mp      storage.Multipart

		dataDir  string
		storeReg *prometheus.Registry
	)
	if o.disk {
		if o.wrap != nil {
			t.Fatal("harness: wrap works on the memory store only")
		}
		dataDir, storeReg = t.TempDir(), prometheus.NewRegistry()
		ds := openDiskStore(t, dataDir, storeReg)
		backing, st, mp = ds, ds, ds
	} else {
		mem = storagetest.NewMemory()
		backing, st, mp = mem, mem, mem
		if o.wrap != nil {
			st, mp = o.wrap(mem)
		}
	}
	cfg := Config{TenantID: testTenant, Region: "eu", NodeName: "node-a", NodeURL: "http://node-a:4000"}
	if o.cfg != nil {
		o.cfg(&cfg)
	}
	reg := prometheus.NewRegistry()
	var localStore storage.Store
	if o.front != nil {
		localStore, st = st, o.front(t, st)
	}
	s, err := New(cfg, Deps{Store: st, Local: localStore, Multipart: mp, Members: o.members, Guard: o.guard, Analytics: o.events, Status: o.status, Lifecycle: o.lifecycle,
		Registerer: reg, Gatherer: reg, TracerProvider: o.tracer, Logger: o.logger})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if o.limits != nil {
		o.limits(&s.limits)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	// Enough idle connections that parallel benchmarks reuse theirs instead of churning
	// through ephemeral ports (the default keeps 2 per host).
	tr := &http.Transport{DisableCompression: true, MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	h := &harness{t: t, srv: s, mem: mem, store: backing, reg: reg, addr: ln.Addr().String(),
		base: "http://" + ln.Addr().String(), client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, dataDir: dataDir, storeReg: storeReg}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h
}

// response is a fully read answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) String() string { return fmt.Sprintf("%d %q", r.status, r.body) }

// do sends one request; body may be nil, a string, []byte or an io.Reader (sent chunked).
func (h *harness) do(method, path string, body any, hdr ...string) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = strings.NewReader(string(b))
	case io.Reader:
		rd = b
	default:
		h.t.Fatalf("unsupported body %T", body)
	}
	req, err := http.NewRequest(method, h.base+path, rd)
	if err != nil {
		h.t.Fatalf("new request: %v", err)
	}
	if _, ok := body.(io.Reader); ok {
		req.ContentLength = -1 // force chunked
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: read body: %v", method, path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: data}
}

// expect checks status and, when want is not "-", the exact body.
func expect(t testing.TB, r response, status int, want string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %q)", r.status, status, r.body)
	}
	if want != "-" && string(r.body) != want {
		t.Fatalf("body = %q, want %q", r.body, want)
	}
}

// expectMessage checks a JSON error answer.
func expectMessage(t testing.TB, r response, status int, msg string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status = %d, want %d (body %q)", r.status, status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type = %q, want application/json", ct)
	}
	var m struct {
		Message *string `json:"message"`
	}
	if err := json.Unmarshal(r.body, &m); err != nil || m.Message == nil {
		t.Fatalf("error body %q is not {\"message\":…}: %v", r.body, err)
	}
	if !strings.HasPrefix(*m.Message, msg) {
		t.Fatalf("message = %q, want prefix %q", *m.Message, msg)
	}
}

// expectEmpty404 checks a plain not-found answer.
func expectEmpty404(t testing.TB, r response) {
	t.Helper()
	expect(t, r, http.StatusNotFound, "")
}

// openDiskStore opens storage/local in a temporary directory and closes it at cleanup.
func openDiskStore(t testing.TB, dir string, reg prometheus.Registerer) *local.Store {
	t.Helper()
	ds, err := local.Open(local.Options{DataDir: dir, Registerer: reg})
	if err != nil {
		t.Fatalf("open disk store: %v", err)
	}
	t.Cleanup(func() {
		if err := ds.Close(); err != nil {
			t.Errorf("close disk store: %v", err)
		}
	})
	return ds
}

// stored reports whether the store behind the server holds key.
func (h *harness) stored(k storage.Key) bool {
	h.t.Helper()
	_, err := h.store.Stat(context.Background(), k)
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		h.t.Fatalf("stat %s: %v", k, err)
	}
	return err == nil
}

// rawRequest writes head (request line and headers, CRLF-terminated, without the final blank
// line) and optional body bytes on a fresh TCP connection, then reads one response within a
// bounded time. It proves what the server answers without the client sending a whole body.
func (h *harness) rawRequest(head string, body []byte) *http.Response {
	h.t.Helper()
	conn, err := net.DialTimeout("tcp", h.addr, 5*time.Second)
	if err != nil {
		h.t.Fatalf("dial: %v", err)
	}
	h.t.Cleanup(func() { conn.Close() })
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		h.t.Fatalf("deadline: %v", err)
	}
	if _, err := io.WriteString(conn, head+"\r\n"); err != nil {
		h.t.Fatalf("write head: %v", err)
	}
	if len(body) > 0 {
		if _, err := conn.Write(body); err != nil {
			h.t.Fatalf("write body: %v", err)
		}
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		h.t.Fatalf("read response: %v", err)
	}
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	resp.Body = io.NopCloser(strings.NewReader(string(data)))
	return resp
}

// counter reads one sample of a counter vector registered by the server.
func counterValue(t testing.TB, c *prometheus.CounterVec, labels ...string) float64 {
	t.Helper()
	return testutil.ToFloat64(c.WithLabelValues(labels...))
}

// recordingGuard records every request and answers with decide (nil: allow). headers, when
// set, is its response_headers hook.
type recordingGuard struct {
	mu      sync.Mutex
	reqs    []policy.Request
	decide  func(policy.Request) policy.Decision
	headers func(r policy.Request, d policy.Decision, status int) map[string]string
}

func (g *recordingGuard) Decide(_ context.Context, req *policy.Request) policy.Decision {
	g.mu.Lock()
	g.reqs = append(g.reqs, *req)
	g.mu.Unlock()
	if g.decide == nil {
		return policy.Decision{Allowed: true}
	}
	return g.decide(*req)
}

func (g *recordingGuard) HasResponseHeaders() bool { return g.headers != nil }

func (g *recordingGuard) ResponseHeaders(_ context.Context, r *policy.Request, d policy.Decision, status int) map[string]string {
	return g.headers(*r, d, status)
}

func (g *recordingGuard) last(t testing.TB) policy.Request {
	t.Helper()
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.reqs) == 0 {
		t.Fatal("guard was not called")
	}
	return g.reqs[len(g.reqs)-1]
}

func (g *recordingGuard) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.reqs)
}

// faultStore wraps the memory store and injects errors per operation.
type faultStore struct {
	*storagetest.Memory
	mu        sync.Mutex
	statErr   error
	openErr   error
	putErr    error
	deleteErr error
	partErr   error
	doneErr   error
	// reader, when set, wraps every Reader the store opens.
	reader func(storage.Reader) storage.Reader
	// statPanic makes Stat panic (recovery test).
	statPanic bool
}

func (f *faultStore) set(fn func(f *faultStore)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *faultStore) Stat(ctx context.Context, k storage.Key) (storage.Info, error) {
	f.mu.Lock()
	err, p := f.statErr, f.statPanic
	f.mu.Unlock()
	if p {
		panic("injected stat panic")
	}
	if err != nil {
		return storage.Info{}, fmt.Errorf("stat %s: %w", k, err)
	}
	return f.Memory.Stat(ctx, k)
}

func (f *faultStore) Open(ctx context.Context, k storage.Key, off, n int64) (storage.Reader, error) {
	f.mu.Lock()
	err, wrap := f.openErr, f.reader
	f.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", k, err)
	}
	r, err := f.Memory.Open(ctx, k, off, n)
	if err != nil || wrap == nil {
		return r, err
	}
	return wrap(r), nil
}

func (f *faultStore) Put(ctx context.Context, k storage.Key, body io.Reader, o storage.PutOptions) (storage.PutResult, error) {
	f.mu.Lock()
	err := f.putErr
	f.mu.Unlock()
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: %w", k, err)
	}
	return f.Memory.Put(ctx, k, body, o)
}

func (f *faultStore) DeleteNamespace(ctx context.Context, tenant, ns string, v storage.Version) error {
	f.mu.Lock()
	err := f.deleteErr
	f.mu.Unlock()
	if err != nil {
		return fmt.Errorf("delete namespace: %w", err)
	}
	return f.Memory.DeleteNamespace(ctx, tenant, ns, v)
}

func (f *faultStore) PutPart(ctx context.Context, id string, n int, body io.Reader) error {
	f.mu.Lock()
	err := f.partErr
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.Memory.PutPart(ctx, id, n, body)
}

func (f *faultStore) CompleteUpload(ctx context.Context, id string, parts []int) (storage.PutResult, error) {
	f.mu.Lock()
	err := f.doneErr
	f.mu.Unlock()
	if err != nil {
		return storage.PutResult{}, err
	}
	return f.Memory.CompleteUpload(ctx, id, parts)
}

// newFaultHarness returns a harness whose store is a faultStore.
func newFaultHarness(t testing.TB, o harnessOpts) (*harness, *faultStore) {
	var fs *faultStore
	o.wrap = func(m *storagetest.Memory) (storage.Store, storage.Multipart) {
		fs = &faultStore{Memory: m}
		return fs, fs
	}
	h := newHarness(t, o)
	return h, fs
}
