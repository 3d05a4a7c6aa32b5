package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// Tests of the runtime limits end to end: real loopback HTTP against storage/local (Pebble and
// segment files), with a deliberately small file-descriptor pool, and on a deliberately small
// real filesystem.

// smallBuffers sets a small, fixed socket buffer, so that a client that stops reading blocks
// the server's write (and with it the segment reader it streams from) after a few KiB, instead
// of after the megabytes that autotuned loopback buffers absorb.
func smallBuffers(opt int) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, 16<<10) }); err != nil {
			return err
		}
		return serr
	}
}

// newLocalHarness serves the API over loopback from a storage/local store opened with opts
// (a fresh temporary data directory unless opts names one).
func newLocalHarness(t *testing.T, opts local.Options) (*harness, *local.Store) {
	t.Helper()
	if opts.DataDir == "" {
		opts.DataDir = t.TempDir()
	}
	reg := prometheus.NewRegistry()
	opts.Registerer = reg
	if opts.Metadata == (meta.Options{}) {
		opts.Metadata = meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20}
	}
	st, err := local.Open(opts)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("close store: %v", err)
		}
	})
	srv, err := New(Config{TenantID: testTenant, Region: "eu", NodeName: "node-a", NodeURL: "http://node-a:4000"},
		Deps{Store: st, Multipart: st, Registerer: reg, Gatherer: reg})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	lc := net.ListenConfig{Control: smallBuffers(unix.SO_SNDBUF)} // inherited by accepted sockets
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	tr := &http.Transport{DisableCompression: true, MaxIdleConns: 64, MaxIdleConnsPerHost: 64}
	h := &harness{t: t, srv: srv, store: st, reg: reg, addr: ln.Addr().String(), base: "http://" + ln.Addr().String(),
		client: &http.Client{Transport: tr, Timeout: 60 * time.Second}}
	t.Cleanup(func() {
		tr.CloseIdleConnections()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return h, st
}

func casPath(name string) string {
	return "/api/cache/cas/" + name + "?tenant_id=acme&namespace_id=ios"
}

// getResult is one GET as a client saw it.
type getResult struct {
	status  int
	ctype   string
	retry   string
	message string
	err     error
}

// concurrentGets sends one GET per name, all at once, each on its own connection, and checks
// every 200 body against want.
func concurrentGets(t *testing.T, base string, names []string, want func(string) []byte) []getResult {
	t.Helper()
	tr := &http.Transport{DisableKeepAlives: true, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	out := make([]getResult, len(names))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, name := range names {
		wg.Go(func() {
			<-start
			resp, err := client.Get(base + casPath(name))
			if err != nil {
				out[i] = getResult{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			r := getResult{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), retry: resp.Header.Get("Retry-After"), err: err}
			switch {
			case err != nil:
			case resp.StatusCode == http.StatusOK && !bytes.Equal(body, want(name)):
				r.err = fmt.Errorf("GET %s: 200 with wrong bytes (%d of %d)", name, len(body), len(want(name)))
			case resp.StatusCode != http.StatusOK:
				var m struct {
					Message string `json:"message"`
				}
				if jerr := json.Unmarshal(body, &m); jerr != nil {
					r.err = fmt.Errorf("GET %s: %d with a non-JSON body %q", name, resp.StatusCode, body)
				}
				r.message = m.Message
			}
			out[i] = r
		})
	}
	close(start)
	wg.Wait()
	return out
}

// tally checks that every answer is a correct 200 or a 503 with the busy JSON message, and
// counts both.
func tally(t *testing.T, phase string, rs []getResult) (ok, busy int) {
	t.Helper()
	for _, r := range rs {
		switch {
		case r.err != nil:
			t.Fatalf("%s: %v", phase, r.err)
		case r.status == http.StatusOK:
			ok++
		case r.status == http.StatusServiceUnavailable:
			if r.ctype != "application/json" || !strings.HasPrefix(r.message, "Storage busy: failed to read artifact") || r.retry != "1" {
				t.Fatalf("%s: 503 with content type %q, Retry-After %q, message %q", phase, r.ctype, r.retry, r.message)
			}
			busy++
		default:
			t.Fatalf("%s: unexpected status %d (%q)", phase, r.status, r.message)
		}
	}
	return ok, busy
}

// TestFDPoolExhaustionOverHTTP: a pool of 8 descriptors, hundreds of concurrent readers over
// real loopback HTTP. Readers that cannot get a descriptor within the acquire timeout are
// answered 503 with a JSON message (never another status, never a crash), and once the
// pressure is gone every read succeeds again.
func TestFDPoolExhaustionOverHTTP(t *testing.T) {
	const (
		poolSize  = 8
		nSmall    = 300
		nBig      = 10
		smallSize = 8 << 10
		bigSize   = 1 << 20
	)
	h, st := newLocalHarness(t, local.Options{
		FileDescriptorPoolSize:       poolSize,
		FileDescriptorAcquireTimeout: 100 * time.Millisecond,
		SegmentHandleCacheSize:       2,
		TargetSegmentBytes:           32 << 10,  // a few small objects per segment: many segments
		SpillThreshold:               128 << 10, // every big object is a segment of its own
	})
	bodies := map[string][]byte{}
	var small, big []string
	for i := range nSmall {
		name := fmt.Sprintf("small-%03d", i)
		bodies[name] = storagetest.Bytes(uint64(i), smallSize)
		small = append(small, name)
	}
	for i := range nBig {
		name := fmt.Sprintf("big-%02d", i)
		bodies[name] = storagetest.Bytes(uint64(1000+i), bigSize)
		big = append(big, name)
	}
	for name, body := range bodies {
		expect(t, h.do("POST", casPath(name), body), http.StatusNoContent, "")
	}
	want := func(name string) []byte { return bodies[name] }
	pool := st.FDPool()
	t.Logf("%d objects stored in %s segments; pool %d in use of %d", len(bodies), segmentsOf(t, h), pool.InUse(), pool.Capacity())

	// Phase 1: a burst of concurrent readers with nothing else going on.
	ok, busy := tally(t, "burst", concurrentGets(t, h.base, small, want))
	t.Logf("burst of %d concurrent GETs: %d × 200, %d × 503", len(small), ok, busy)

	// Phase 2: slow clients hold descriptors. Each GETs a big object, reads one byte and then
	// stops reading, so its response (and the segment reader behind it) stays open.
	release := make(chan struct{})
	var slowWG sync.WaitGroup
	var slowOK, slowBusy atomic.Int32
	slowErr := make(chan error, nBig)
	headers := make(chan struct{}, nBig)
	for _, name := range big {
		slowWG.Go(func() {
			d := &net.Dialer{Control: smallBuffers(unix.SO_RCVBUF)}
			tr := &http.Transport{DialContext: d.DialContext, DisableCompression: true}
			defer tr.CloseIdleConnections()
			resp, err := (&http.Client{Transport: tr}).Get(h.base + casPath(name))
			headers <- struct{}{}
			if err != nil {
				slowErr <- err
				return
			}
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusServiceUnavailable {
				slowBusy.Add(1)
				return
			}
			if resp.StatusCode != http.StatusOK {
				slowErr <- fmt.Errorf("slow GET %s: status %d", name, resp.StatusCode)
				return
			}
			slowOK.Add(1)
			first := make([]byte, 1)
			if _, err := io.ReadFull(resp.Body, first); err != nil {
				slowErr <- err
				return
			}
			<-release
			rest, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(append(first, rest...), bodies[name]) {
				slowErr <- fmt.Errorf("slow GET %s finished with %d bytes: %v", name, 1+len(rest), err)
			}
		})
	}
	for range nBig {
		<-headers
	}
	testsupport.WaitFor(t, "the slow readers to hold every descriptor", 10*time.Second, func() bool { return pool.InUse() == poolSize })
	t.Logf("slow clients: %d streaming (holding descriptors), %d refused busy; pool %d/%d in use",
		slowOK.Load(), slowBusy.Load(), pool.InUse(), pool.Capacity())
	if slowOK.Load() == 0 {
		t.Fatal("no slow reader got a descriptor")
	}
	timeoutsBefore := pool.Timeouts()
	ok, busy = tally(t, "exhausted", concurrentGets(t, h.base, small, want))
	t.Logf("with the pool exhausted, %d concurrent GETs: %d × 200, %d × 503 (%d acquire timeouts)",
		len(small), ok, busy, pool.Timeouts()-timeoutsBefore)
	if busy == 0 {
		t.Fatal("no 503 although every descriptor was held")
	}
	// The node is alive and says why.
	expect(t, h.do("GET", "/up", nil), http.StatusOK, "-")
	metrics := string(h.do("GET", "/metrics", nil).body)
	for _, line := range []string{fmt.Sprintf("kura_fd_pool_in_use %d", poolSize), fmt.Sprintf("kura_fd_pool_capacity %d", poolSize)} {
		if !strings.Contains(metrics, line+"\n") {
			t.Fatalf("/metrics lacks %q", line)
		}
	}
	if !strings.Contains(metrics, "kura_fd_pool_timeouts_total ") || pool.Timeouts() == 0 {
		t.Fatal("timeouts not counted")
	}

	// Recovery: the slow clients finish; from then on every read succeeds. Each reader adds
	// at most one descriptor (its segment's handle, or a private one for a sendfile on a
	// handle another reader is sending from), the open segment holds one and idle cached
	// handles give way to a checkout, so poolSize/2 readers never wait for a slot: whatever
	// the machine's load, a 503 here means a slot is still held. (More readers may wait, and
	// on a loaded machine a 1 MiB send can outlast the 100 ms acquire timeout: a 503 then is
	// the pool working, not failing to recover.)
	released := time.Now()
	close(release)
	slowWG.Wait()
	close(slowErr)
	for err := range slowErr {
		t.Fatal(err)
	}
	all := append(append([]string(nil), small...), big...)
	var recovered time.Duration
	for attempt := 1; ; attempt++ {
		rs := concurrentGetsLimited(t, h, all, want, poolSize/2)
		okN, busyN := tally(t, "recovery", rs)
		if busyN == 0 {
			recovered = time.Since(released)
			t.Logf("recovered %v after the slow clients were released: all %d objects read back (attempt %d)", recovered, okN, attempt)
			break
		}
		if time.Since(released) > 30*time.Second {
			t.Fatalf("still %d × 503 30 s after the pressure ended", busyN)
		}
	}
	// A burst again: every answer is a 200 or a well-formed 503 (tally checks), and the pool
	// is back to its idle level: the open segment and the cached handles at most.
	ok, busy = tally(t, "after recovery", concurrentGets(t, h.base, small[:50], want))
	t.Logf("after recovery, 50 concurrent GETs: %d × 200, %d × 503; pool %d/%d in use, %d timeouts in all",
		ok, busy, pool.InUse(), pool.Capacity(), pool.Timeouts())
	testsupport.WaitFor(t, "the pool to return to its idle level", 10*time.Second, func() bool { return pool.InUse() <= 3 })
}

// concurrentGetsLimited reads every name with at most limit requests in flight (keep-alive).
func concurrentGetsLimited(t *testing.T, h *harness, names []string, want func(string) []byte, limit int) []getResult {
	t.Helper()
	out := make([]getResult, len(names))
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	for i, name := range names {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			resp, err := h.client.Get(h.base + casPath(name))
			if err != nil {
				out[i] = getResult{err: err}
				return
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			r := getResult{status: resp.StatusCode, ctype: resp.Header.Get("Content-Type"), retry: resp.Header.Get("Retry-After"), err: err}
			if err == nil && resp.StatusCode == http.StatusOK && !bytes.Equal(body, want(name)) {
				r.err = fmt.Errorf("GET %s: wrong bytes", name)
			}
			if err == nil && resp.StatusCode != http.StatusOK {
				var m struct {
					Message string `json:"message"`
				}
				_ = json.Unmarshal(body, &m)
				r.message = m.Message
			}
			out[i] = r
		})
	}
	wg.Wait()
	return out
}

func segmentsOf(t *testing.T, h *harness) string {
	t.Helper()
	for _, line := range strings.Split(string(h.do("GET", "/metrics", nil).body), "\n") {
		if v, ok := strings.CutPrefix(line, "kura_storage_segments "); ok {
			return v
		}
	}
	return "?"
}

// TestDiskFullOverHTTP: the data directory on a real 32 MiB tmpfs that another file fills.
// Every write surface answers 507 with a JSON message, reads keep working with intact bodies,
// and writes succeed again as soon as the other file shrinks.
func TestDiskFullOverHTTP(t *testing.T) {
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size=32m"); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	const reserve = 6 << 20
	h, st := newLocalHarness(t, local.Options{
		DataDir:           filepath.Join(mnt, "data"),
		ReservedDiskBytes: reserve,
		SpillThreshold:    128 << 10,
		Metadata:          meta.Options{BlockCacheBytes: 1 << 20, MemTableBytes: 1 << 20},
	})
	free := func() int64 {
		var s unix.Statfs_t
		if err := unix.Statfs(mnt, &s); err != nil {
			t.Fatal(err)
		}
		return int64(s.Bavail) * int64(s.Bsize)
	}
	stored := map[string][]byte{}
	for i := range 20 {
		name := fmt.Sprint("obj-", i)
		stored[name] = storagetest.Bytes(uint64(i), 16<<10)
		expect(t, h.do("POST", casPath(name), stored[name]), http.StatusNoContent, "")
	}
	stored["large"] = storagetest.Bytes(99, 400<<10)
	expect(t, h.do("POST", casPath("large"), stored["large"]), http.StatusNoContent, "")
	readAll := func(phase string) {
		t.Helper()
		for name, body := range stored {
			r := h.do("GET", casPath(name), nil)
			if r.status != http.StatusOK || !bytes.Equal(r.body, body) {
				t.Fatalf("%s: GET %s = %d with %d bytes (want 200 and the stored %d)", phase, name, r.status, len(r.body), len(body))
			}
		}
	}

	// Another file takes the disk: less than the reserve stays free, and evicting all of the
	// store's segments would not make up for it.
	ballast, err := os.Create(filepath.Join(mnt, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer ballast.Close()
	fill := free() - 2<<20
	if _, err := ballast.Write(make([]byte, fill)); err != nil {
		t.Fatal(err)
	}
	t.Logf("ballast of %d bytes: %d free, reserve %d", fill, free(), int64(reserve))

	const full = "Insufficient storage"
	expectMessage(t, h.do("POST", casPath("new"), "x"), http.StatusInsufficientStorage, full)
	expectMessage(t, h.do("PUT", "/api/cache/gradle/build-1?tenant_id=acme&namespace_id=android",
		bytes.NewReader(storagetest.Bytes(7, 3<<20))), http.StatusInsufficientStorage, full) // chunked
	expectMessage(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=acme&namespace_id=ios",
		`{"cas_id":"kv1","entries":[{"value":"v"}]}`), http.StatusInsufficientStorage, full)
	expectMessage(t, h.do("POST", "/api/cache/module/start?tenant_id=acme&namespace_id=ios&hash=h1&name=m.zip", nil),
		http.StatusInsufficientStorage, full)
	expectMessage(t, h.do("PUT", "/v1/cache/12345", "nx output", "Authorization", "Bearer x"),
		http.StatusInsufficientStorage, full)
	for _, p := range []string{casPath("new"), "/api/cache/gradle/build-1?tenant_id=acme&namespace_id=android",
		"/api/cache/keyvalue/kv1?tenant_id=acme&namespace_id=ios"} {
		expectEmpty404(t, h.do("GET", p, nil))
	}
	readAll("disk full")
	expect(t, h.do("GET", "/up", nil), http.StatusOK, "-")
	if left, _ := filepath.Glob(filepath.Join(mnt, "data", "tmp", "staging", "*")); len(left) != 0 {
		t.Fatalf("refused writes left staging files: %v", left)
	}

	// Room again: every surface writes at once.
	if err := ballast.Truncate(0); err != nil {
		t.Fatal(err)
	}
	expect(t, h.do("POST", casPath("new"), "x"), http.StatusNoContent, "")
	stored["new"] = []byte("x")
	gradle := storagetest.Bytes(7, 3<<20)
	expect(t, h.do("PUT", "/api/cache/gradle/build-1?tenant_id=acme&namespace_id=android", bytes.NewReader(gradle)), http.StatusCreated, "")
	if r := h.do("GET", "/api/cache/gradle/build-1?tenant_id=acme&namespace_id=android", nil); r.status != 200 || !bytes.Equal(r.body, gradle) {
		t.Fatalf("gradle read back: %d, %d bytes", r.status, len(r.body))
	}
	expect(t, h.do("PUT", "/api/cache/keyvalue?tenant_id=acme&namespace_id=ios",
		`{"cas_id":"kv1","entries":[{"value":"v"}]}`), http.StatusNoContent, "")
	r := h.do("POST", "/api/cache/module/start?tenant_id=acme&namespace_id=ios&hash=h1&name=m.zip", nil)
	if r.status != http.StatusOK {
		t.Fatalf("module start after recovery: %s", r)
	}
	readAll("after recovery")
	t.Logf("writes refused with 507 while %d bytes were free (reserve %d); accepted again once the ballast went (%d free)",
		2<<20, int64(reserve), free())
	_ = st
}
