package analytics

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const testKey = "s3cret-key"

func newFakeClock() *testsupport.Clock {
	return testsupport.NewClock(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
}

// batch is one webhook request the receiver accepted as correctly signed.
type batch struct {
	path   string
	header http.Header
	body   []byte
	events []map[string]any
}

// receiver is a webhook server on 127.0.0.1 that checks every request's signature and JSON.
// It answers status (204 when 0); when hang is set it answers nothing until the client gives
// up or the test ends, and records how long each such request was held.
type receiver struct {
	t       testing.TB
	srv     *httptest.Server
	status  atomic.Int32
	hang    atomic.Bool
	release chan struct{} // closed by unblock: hanging handlers return
	once    sync.Once

	requests atomic.Int64
	inFlight atomic.Int64

	mu      sync.Mutex
	batches []batch
	held    []time.Duration
}

func newReceiver(t testing.TB) *receiver {
	t.Helper()
	rc := &receiver{t: t, release: make(chan struct{})}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	// Cleanups run last-registered first: hanging handlers are released before Close waits.
	t.Cleanup(rc.unblock)
	return rc
}

// unblock releases every hanging handler, present and future.
func (rc *receiver) unblock() { rc.once.Do(func() { close(rc.release) }) }

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	rc.requests.Add(1)
	rc.inFlight.Add(1)
	defer rc.inFlight.Add(-1)
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		rc.t.Errorf("receiver: read body: %v", err)
		return
	}
	mac := hmac.New(sha256.New, []byte(testKey))
	mac.Write(body)
	if got, want := r.Header.Get("X-Cache-Signature"), hex.EncodeToString(mac.Sum(nil)); got != want {
		rc.t.Errorf("receiver: x-cache-signature = %q, want %q (body %s)", got, want, body)
	}
	var doc struct {
		Events []map[string]any `json:"events"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		rc.t.Errorf("receiver: body is not {\"events\":[…]}: %v: %s", err, body)
	}
	rc.mu.Lock()
	rc.batches = append(rc.batches, batch{path: r.URL.Path, header: r.Header.Clone(), body: body, events: doc.Events})
	rc.mu.Unlock()
	if rc.hang.Load() {
		start := time.Now()
		select {
		case <-r.Context().Done():
		case <-rc.release:
		}
		rc.mu.Lock()
		rc.held = append(rc.held, time.Since(start))
		rc.mu.Unlock()
		return
	}
	status := int(rc.status.Load())
	if status == 0 {
		status = http.StatusNoContent
	}
	if status >= 300 {
		http.Error(w, "receiver says no", status)
		return
	}
	w.WriteHeader(status)
}

func (rc *receiver) got() []batch {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]batch(nil), rc.batches...)
}

// byPath returns the received batches sent to path, in order.
func (rc *receiver) byPath(path string) []batch {
	var out []batch
	for _, b := range rc.got() {
		if b.path == path {
			out = append(out, b)
		}
	}
	return out
}

// fixture is a Reporter aimed at a receiver, with its registry, clock and logs.
type fixture struct {
	t     testing.TB
	rc    *receiver
	r     *Reporter
	reg   *prometheus.Registry
	clock *testsupport.Clock
	logs  *testsupport.LockedBuffer
}

// newFixture builds a Reporter that sends every event at once (batch size 1) and whose
// breaker never opens, unless mod says otherwise. The clock is fake unless mod clears Now.
func newFixture(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{t: t, rc: newReceiver(t), reg: prometheus.NewRegistry(), clock: newFakeClock(), logs: &testsupport.LockedBuffer{}}
	cfg := Config{
		ServerURL:               f.rc.srv.URL,
		SigningKey:              testKey,
		NodeURL:                 "https://node-a.example:4000/",
		BatchSize:               1,
		BatchTimeout:            time.Hour,
		RequestTimeout:          10 * time.Second,
		QueueCapacity:           100,
		BreakerFailureThreshold: 1000,
		BreakerOpen:             time.Hour,
		Logger:                  slog.New(slog.NewTextHandler(f.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Registerer:              f.reg,
		Now:                     f.clock.Now,
	}
	if mod != nil {
		mod(&cfg)
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.r = r
	return f
}

// run starts Run; the returned stop (also a cleanup) cancels it, waits and reports how long
// Run took to return.
func (f *fixture) run() (stop func() time.Duration) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.r.Run(ctx) }()
	var once sync.Once
	var took time.Duration
	stop = func() time.Duration {
		once.Do(func() {
			start := time.Now()
			cancel()
			if err := <-done; err != nil {
				f.t.Errorf("Run: %v", err)
			}
			took = time.Since(start)
		})
		return took
	}
	f.t.Cleanup(func() { stop() })
	return stop
}

func xcodeEvent(key string, size int64, a Action) Event {
	return Event{Pipeline: Xcode, TenantID: "acme", NamespaceID: "ios", Action: a, Size: size, Key: key}
}

func gradleEvent(key string, size int64, a Action) Event {
	return Event{Pipeline: Gradle, TenantID: "acme", NamespaceID: "android", Action: a, Size: size, Key: key}
}

func value(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

// counts of the webhook paths.
const (
	xcodePath  = "/webhooks/cache"
	gradlePath = "/webhooks/gradle-cache"
)

// lines counts log lines containing s.
func lines(log, s string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			n++
		}
	}
	return n
}
