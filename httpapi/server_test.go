package httpapi

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestNewValidatesConfigAndDeps(t *testing.T) {
	mem := storagetest.NewMemory()
	ok := Deps{Store: mem, Multipart: mem}
	cases := map[string]struct {
		cfg  Config
		deps Deps
	}{
		"no tenant":           {Config{}, ok},
		"tenant with NUL":     {Config{TenantID: "a\x00"}, ok},
		"no store":            {Config{TenantID: "t"}, Deps{Multipart: mem}},
		"no multipart":        {Config{TenantID: "t"}, Deps{Store: mem}},
		"negative limit":      {Config{TenantID: "t", MaxXcodeBytes: -1}, ok},
		"gatherer only":       {Config{TenantID: "t"}, Deps{Store: mem, Multipart: mem, Gatherer: prometheus.NewRegistry()}},
		"registerer, no gath": {Config{TenantID: "t"}, Deps{Store: mem, Multipart: mem, Registerer: prometheus.WrapRegistererWithPrefix("x", prometheus.NewRegistry())}},
	}
	for name, c := range cases {
		if _, err := New(c.cfg, c.deps); err == nil {
			t.Errorf("%s: New succeeded", name)
		}
	}
	s, err := New(Config{TenantID: "t"}, ok)
	if err != nil {
		t.Fatalf("New with defaults: %v", err)
	}
	if s.limits.keyValue != DefaultMaxKeyValueBytes || s.limits.xcode != DefaultMaxXcodeBytes || s.idle != DefaultBodyIdleTimeout {
		t.Fatalf("defaults not applied: %+v idle %v", s.limits, s.idle)
	}
	// Two servers on one registry: the second registration fails instead of panicking.
	reg := prometheus.NewRegistry()
	d := Deps{Store: mem, Multipart: mem, Registerer: reg}
	if _, err := New(Config{TenantID: "t"}, d); err != nil {
		t.Fatalf("first New: %v", err)
	}
	if _, err := New(Config{TenantID: "t"}, d); err == nil {
		t.Fatal("second New on the same registry succeeded")
	}
}

// startServer runs a server on a fresh loopback listener and returns its address and a
// channel with Serve's result.
func startServer(t *testing.T, cfg Config, deps Deps) (*Server, string, <-chan error) {
	t.Helper()
	s, err := New(cfg, deps)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	return s, ln.Addr().String(), done
}

// arrivalGuard signals each request reaching the policy, i.e. a handler in flight.
type arrivalGuard chan struct{}

func (g arrivalGuard) Decide(context.Context, *policy.Request) policy.Decision {
	g <- struct{}{}
	return policy.Decision{Allowed: true}
}

func (g arrivalGuard) HasResponseHeaders() bool { return false }

func (g arrivalGuard) ResponseHeaders(context.Context, *policy.Request, policy.Decision, int) map[string]string {
	return nil
}

func TestShutdownDrainsInFlightRequests(t *testing.T) {
	mem := storagetest.NewMemory()
	arrived := make(arrivalGuard, 1)
	s, addr, served := startServer(t, Config{TenantID: "t"}, Deps{Store: mem, Multipart: mem, Guard: arrived})

	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", "http://"+addr+"/v1/cache/1", pr)
	req.ContentLength = 10
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	result := make(chan error, 1)
	go func() {
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = errors.New(resp.Status)
			}
		}
		result <- err
	}()
	if _, err := pw.Write([]byte("hello")); err != nil {
		t.Fatalf("write first half: %v", err)
	}
	<-arrived

	shutdown := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		shutdown <- s.Shutdown(ctx)
	}()
	// New connections are refused once Shutdown has closed the listener.
	testsupport.WaitFor(t, "listener to close", 5*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	select {
	case err := <-shutdown:
		t.Fatalf("Shutdown returned %v while a request was in flight", err)
	default:
	}
	if _, err := pw.Write([]byte("world")); err != nil {
		t.Fatalf("write second half: %v", err)
	}
	pw.Close()
	if err := <-result; err != nil {
		t.Fatalf("in-flight request failed: %v", err)
	}
	if err := <-shutdown; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	r, err := mem.Open(context.Background(), storage.Key{Tenant: "t", Namespace: "nx", Kind: storage.KindNx, Name: "1"}, 0, -1)
	if err != nil {
		t.Fatalf("drained upload not stored: %v", err)
	}
	defer r.Close()
	if b, _ := io.ReadAll(r); string(b) != "helloworld" {
		t.Fatalf("stored %q", b)
	}
}

func TestShutdownDeadlineClosesStuckRequests(t *testing.T) {
	mem := storagetest.NewMemory()
	arrived := make(arrivalGuard, 1)
	s, addr, served := startServer(t, Config{TenantID: "t"}, Deps{Store: mem, Multipart: mem, Guard: arrived})
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A body that never completes.
	if _, err := io.WriteString(conn, "PUT /v1/cache/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc"); err != nil {
		t.Fatal(err)
	}
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v, want deadline exceeded", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	// The stuck connection was closed by the server.
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadAll(conn); err != nil {
		t.Fatalf("connection not closed cleanly: %v", err)
	}
}

// TestStalledUploadIsDropped: a client that stops sending mid-body is cut off after the idle
// timeout and nothing is stored; the connection deadline is progress-based, not whole-request.
func TestStalledUploadIsDropped(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.BodyIdleTimeout = 300 * time.Millisecond }})
	// A slow but steady upload that takes longer than the idle timeout in total succeeds.
	pr, pw := io.Pipe()
	go func() {
		for range 6 {
			if _, err := pw.Write([]byte("tick")); err != nil {
				return
			}
			time.Sleep(100 * time.Millisecond) // pacing the client, not waiting for the server
		}
		pw.Close()
	}()
	expect(t, h.do("PUT", "/api/metro/cache/aa", pr), http.StatusOK, "")
	expect(t, h.do("GET", "/api/metro/cache/aa", nil), http.StatusOK, strings.Repeat("tick", 6))

	resp := h.rawRequest("PUT /api/metro/cache/bb HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n", nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("stalled upload: status %d, want 400", resp.StatusCode)
	}
	if h.stored(storage.Key{Tenant: testTenant, Namespace: "metro", Kind: storage.KindMetro, Name: "bb"}) {
		t.Fatal("a stalled upload was stored")
	}
}

// TestStalledDownloadIsDropped: a client that stops reading is cut off after the idle timeout
// instead of pinning a handler forever.
func TestStalledDownloadIsDropped(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.BodyIdleTimeout = 300 * time.Millisecond }})
	const size = 16 << 20 // more than loopback socket buffers absorb
	expect(t, h.do("PUT", "/api/metro/cache/cc", io.LimitReader(zeroes{}, size)), http.StatusOK, "")
	conn, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, "GET /api/metro/cache/cc HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET: %v %v", resp, err)
	}
	// Read nothing more; the server must give up on its own.
	testsupport.WaitFor(t, "the stalled download to be abandoned", 20*time.Second, func() bool {
		return counterValue(t, h.srv.metrics.reads, "metro", "metro", "blob", "error") == 1
	})
}

// TestUnreadBodyDrainIsBounded: a client that declares a small body and never sends it gets
// its answer once the idle timeout passes, instead of holding the connection forever while
// net/http waits to drain the body.
func TestUnreadBodyDrainIsBounded(t *testing.T) {
	h := newHarness(t, harnessOpts{cfg: func(c *Config) { c.BodyIdleTimeout = 300 * time.Millisecond }})
	expect(t, h.do("PUT", "/v1/cache/5", "x"), http.StatusOK, "")
	resp := h.rawRequest("PUT /v1/cache/5 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n", nil)
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("status %d, want 409", resp.StatusCode)
	}
}

// TestHandlerUnderHTTPTest: Handler serves the same API when mounted elsewhere.
func TestHandlerUnderHTTPTest(t *testing.T) {
	mem := storagetest.NewMemory()
	s, err := New(Config{TenantID: "t"}, Deps{Store: mem, Multipart: mem})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(s.Handler())
	defer ts.Close()
	resp, err := http.Post(ts.URL+"/api/cache/cas/k?tenant_id=a&namespace_id=b", "application/octet-stream", strings.NewReader("v"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("status %d", resp.StatusCode)
	}
	resp, err = http.Get(ts.URL + "/up")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/up status %d", resp.StatusCode)
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
}

func TestStoredContentTypeIsSanitised(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	for ct, want := range map[string]string{
		"":                               "application/octet-stream",
		"not a media type;;":             "application/octet-stream",
		"Text/Plain; charset=UTF-8":      "text/plain; charset=UTF-8",
		strings.Repeat("a", 300) + "/x":  "application/octet-stream",
		"application/vnd.gradle.v1+gzip": "application/vnd.gradle.v1+gzip",
	} {
		id := sha(ct)[:16]
		expect(t, h.do("POST", "/api/cache/cas/"+id+"?tenant_id=a&namespace_id=b", "v", "Content-Type", ct), http.StatusNoContent, "")
		r := h.do("GET", "/api/cache/cas/"+id+"?tenant_id=a&namespace_id=b", nil)
		if got := r.header.Get("Content-Type"); got != want {
			t.Errorf("sent %q: served %q, want %q", ct, got, want)
		}
		if r.header.Get("X-Content-Type-Options") != "nosniff" {
			t.Error("no nosniff")
		}
	}
}

// TestStaleWriteIsSuccess: a write older than a namespace tombstone is not a client error.
func TestStaleWriteIsSuccess(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	fs.set(func(f *faultStore) { f.putErr = storage.ErrStale })
	expect(t, h.do("PUT", "/api/cache/gradle/a/b/k", "v"), http.StatusCreated, "")
	expect(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=a&namespace_id=b", `{"cas_id":"c","entries":[]}`), http.StatusNoContent, "")
}
