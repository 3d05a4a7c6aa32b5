package fdpool

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newPool(t *testing.T, size int, timeout time.Duration) *Pool {
	t.Helper()
	p, err := New(size, timeout)
	if err != nil {
		t.Fatalf("New(%d, %v): %v", size, timeout, err)
	}
	return p
}

func TestNewValidates(t *testing.T) {
	for _, c := range []struct {
		size    int
		timeout time.Duration
		ok      bool
	}{
		{1, time.Second, true},
		{256, 5 * time.Second, true},
		{0, time.Second, false},
		{-3, time.Second, false},
		{8, 0, false},
		{8, -time.Second, false},
	} {
		p, err := New(c.size, c.timeout)
		if (err == nil) != c.ok {
			t.Errorf("New(%d, %v) = %v, want ok=%v", c.size, c.timeout, err, c.ok)
		}
		if err == nil && (p.Capacity() != c.size || p.AcquireTimeout() != c.timeout) {
			t.Errorf("New(%d, %v): capacity %d, timeout %v", c.size, c.timeout, p.Capacity(), p.AcquireTimeout())
		}
	}
}

func TestAcquireReleaseAndTimeout(t *testing.T) {
	p := newPool(t, 2, 50*time.Millisecond)
	ctx := context.Background()
	for range 2 {
		if err := p.Acquire(ctx); err != nil {
			t.Fatalf("Acquire with free slots: %v", err)
		}
	}
	if p.InUse() != 2 || p.TryAcquire() {
		t.Fatalf("full pool: in use %d, TryAcquire must fail", p.InUse())
	}
	start := time.Now()
	err := p.Acquire(ctx)
	if !errors.Is(err, storage.ErrBusy) {
		t.Fatalf("Acquire on a full pool = %v, want ErrBusy", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("gave up after %v, before the acquire timeout", waited)
	}
	if p.Timeouts() != 1 || p.Waiters() != 0 {
		t.Fatalf("timeouts %d waiters %d, want 1 and 0", p.Timeouts(), p.Waiters())
	}
	p.Release()
	p.Release()
	if p.InUse() != 0 {
		t.Fatalf("in use %d after releasing everything", p.InUse())
	}

	// A waiter is served as soon as a slot comes back, well before its timeout.
	q := newPool(t, 1, time.Minute)
	if !q.TryAcquire() {
		t.Fatal("TryAcquire on an empty pool failed")
	}
	got := make(chan error, 1)
	go func() { got <- q.Acquire(ctx) }()
	testsupport.WaitFor(t, "the waiter to queue", 10*time.Second, func() bool { return q.Waiters() == 1 })
	q.Release()
	if err := <-got; err != nil {
		t.Fatalf("waiter after a release: %v", err)
	}
	if q.InUse() != 1 || q.Waiters() != 0 {
		t.Fatalf("after the hand-over: in use %d, waiters %d", q.InUse(), q.Waiters())
	}
	q.Release()
}

func TestAcquireHonoursContext(t *testing.T) {
	p := newPool(t, 1, time.Minute)
	if !p.TryAcquire() {
		t.Fatal("TryAcquire on an empty pool failed")
	}
	defer p.Release()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Acquire(ctx) }()
	testsupport.WaitFor(t, "the checkout to wait", 10*time.Second, func() bool { return p.Waiters() == 1 })
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || errors.Is(err, storage.ErrBusy) {
		t.Fatalf("Acquire after cancel = %v, want context.Canceled (not ErrBusy)", err)
	}
	if p.Timeouts() != 0 {
		t.Fatalf("a cancelled wait counted as a timeout")
	}
	if err := p.Acquire(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire with a dead context = %v", err)
	}
}

func TestWaitersAreServedInOrder(t *testing.T) {
	p := newPool(t, 1, time.Minute)
	if !p.TryAcquire() {
		t.Fatal("TryAcquire failed")
	}
	var order []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range 3 {
		testsupport.WaitFor(t, "previous waiters", 10*time.Second, func() bool { return p.Waiters() == i })
		wg.Go(func() {
			if err := p.Acquire(context.Background()); err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
			p.Release()
		})
	}
	testsupport.WaitFor(t, "three waiters", 10*time.Second, func() bool { return p.Waiters() == 3 })
	// A newcomer must not overtake the queue.
	if p.TryAcquire() {
		t.Fatal("TryAcquire overtook queued waiters")
	}
	p.Release()
	wg.Wait()
	if fmt.Sprint(order) != "[0 1 2]" {
		t.Fatalf("waiters served in order %v", order)
	}
}

func TestReclaimerFreesIdleSlots(t *testing.T) {
	p := newPool(t, 2, time.Minute)
	// Two idle "cached handles" hold both slots.
	idle := 2
	var mu sync.Mutex
	remove := p.AddReclaimer(func() bool {
		mu.Lock()
		defer mu.Unlock()
		if idle == 0 {
			return false
		}
		idle--
		p.Release()
		return true
	})
	for range 2 {
		if !p.TryAcquire() {
			t.Fatal("TryAcquire failed")
		}
	}
	start := time.Now()
	if err := p.Acquire(context.Background()); err != nil {
		t.Fatalf("Acquire with a reclaimable slot: %v", err)
	}
	if time.Since(start) > 10*time.Second || idle != 1 {
		t.Fatalf("the reclaimer was not used: idle %d", idle)
	}
	if p.InUse() != 2 {
		t.Fatalf("in use %d, want 2", p.InUse())
	}
	// Once its owner is gone the reclaimer is never asked again: with the pool full, the
	// checkout waits (here until its context ends) instead of taking the last idle slot.
	remove()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := p.Acquire(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire on a full pool without reclaimers = %v, want the context's deadline", err)
	}
	if idle != 1 {
		t.Fatalf("a removed reclaimer ran (idle %d)", idle)
	}
	p.Release()
	p.Release()
}

func TestFileReleasesItsSlotOnce(t *testing.T) {
	p := newPool(t, 1, 20*time.Millisecond)
	ctx := context.Background()
	dir := t.TempDir()
	f, err := p.CreateTemp(ctx, dir, "x-*")
	if err != nil {
		t.Fatal(err)
	}
	if p.InUse() != 1 {
		t.Fatalf("in use %d with a file open", p.InUse())
	}
	if _, err := p.Open(ctx, f.Name()); !errors.Is(err, storage.ErrBusy) {
		t.Fatalf("second open on a one-slot pool = %v, want ErrBusy", err)
	}
	if _, err := f.WriteString("hello"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("second Close = %v, want os.ErrClosed", err)
	}
	if p.InUse() != 0 {
		t.Fatalf("in use %d after Close (twice)", p.InUse())
	}
	// A failed open gives the slot straight back.
	if _, err := p.Open(ctx, filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("open of a missing file = %v", err)
	}
	if p.InUse() != 0 {
		t.Fatalf("a failed open kept its slot")
	}
	g, err := p.OpenFile(ctx, f.Name(), os.O_RDONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := g.ReadAt(buf, 0); err != nil || string(buf) != "hello" {
		t.Fatalf("read back %q, %v", buf, err)
	}
	_ = g.Close()
	// Adopt wraps a file opened with a slot taken beforehand.
	if !p.TryAcquire() {
		t.Fatal("TryAcquire failed")
	}
	raw, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Adopt(raw).Close(); err != nil || p.InUse() != 0 {
		t.Fatalf("adopted file close = %v, in use %d", err, p.InUse())
	}
	// Do holds a slot for the duration of fn.
	err = p.Do(ctx, func() error {
		if p.InUse() != 1 {
			return fmt.Errorf("in use %d inside Do", p.InUse())
		}
		return nil
	})
	if err != nil || p.InUse() != 0 {
		t.Fatalf("Do = %v, in use %d after", err, p.InUse())
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		busy bool
	}{
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.EMFILE}, true},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.ENFILE}, true},
		{fmt.Errorf("%w: already", storage.ErrBusy), true},
		{&os.PathError{Op: "open", Path: "/x", Err: syscall.ENOENT}, false},
		{errors.New("other"), false},
	} {
		got := Classify(c.err)
		if errors.Is(got, storage.ErrBusy) != c.busy || !errors.Is(got, c.err) {
			t.Errorf("Classify(%v) = %v, want busy=%v and the cause kept", c.err, got, c.busy)
		}
	}
	if Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
}

func TestMetrics(t *testing.T) {
	p := newPool(t, 3, 10*time.Millisecond)
	reg := prometheus.NewRegistry()
	for _, c := range p.Collectors() {
		if err := reg.Register(c); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		if !p.TryAcquire() {
			t.Fatal("TryAcquire failed")
		}
	}
	var busy atomic.Int32
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			if errors.Is(p.Acquire(context.Background()), storage.ErrBusy) {
				busy.Add(1)
			}
		})
	}
	wg.Wait()
	want := `
# HELP kura_fd_pool_capacity Size of the application-managed file-descriptor pool.
# TYPE kura_fd_pool_capacity gauge
kura_fd_pool_capacity 3
# HELP kura_fd_pool_in_use File descriptors checked out of the application-managed pool (KURA_FILE_DESCRIPTOR_POOL_SIZE).
# TYPE kura_fd_pool_in_use gauge
kura_fd_pool_in_use 3
# HELP kura_fd_pool_timeouts_total File-descriptor checkouts that waited longer than KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS and failed (503 / RESOURCE_EXHAUSTED).
# TYPE kura_fd_pool_timeouts_total counter
kura_fd_pool_timeouts_total 2
# HELP kura_fd_pool_waiters Requests and background tasks waiting for a file descriptor right now.
# TYPE kura_fd_pool_waiters gauge
kura_fd_pool_waiters 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if busy.Load() != 2 {
		t.Fatalf("%d of 2 checkouts failed busy", busy.Load())
	}
	for range 3 {
		p.Release()
	}
}
