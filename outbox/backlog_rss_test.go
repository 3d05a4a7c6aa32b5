package outbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	peerplane "github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/internal/config"
	"github.com/kuracache/kura/internal/memory"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// phasedSender fails like a peer that is down, through the real internal-plane client
// dialling a port nobody listens on, until up is set; then it accepts every push, reading the
// whole body from the local store as a real push would.
type phasedSender struct {
	down   Sender
	addr   string
	up     atomic.Bool
	pushed atomic.Int64
	onPush func(n int64)
}

func (p *phasedSender) PushObject(ctx context.Context, _ string, info storage.Info, body io.Reader) (bool, error) {
	if !p.up.Load() {
		return p.down.PushObject(ctx, p.addr, info, body)
	}
	if _, err := io.Copy(io.Discard, body); err != nil {
		return false, err
	}
	p.onPush(p.pushed.Add(1))
	return true, nil
}

func (p *phasedSender) PushTombstone(ctx context.Context, _ string, t storage.Tombstone) error {
	if !p.up.Load() {
		return p.down.PushTombstone(ctx, p.addr, t)
	}
	p.onPush(p.pushed.Add(1))
	return nil
}

// procStatus reads one "Vm…: N kB" line of /proc/self/status, in bytes.
func procStatus(t *testing.T, field string) int64 {
	t.Helper()
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("read /proc/self/status: %v", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s %q: %v", field, rest, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// resetPeakRSS restarts VmHWM from the current RSS (Linux: "5" to /proc/self/clear_refs), so
// each phase's peak is its own. It reports whether the kernel allowed it.
func resetPeakRSS() bool {
	return os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
}

// peaks keeps the highest post-collection live heap seen at the samples.
type peaks struct {
	mu   sync.Mutex
	heap uint64
}

func (p *peaks) sampleHeap() {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	p.mu.Lock()
	p.heap = max(p.heap, ms.HeapAlloc)
	p.mu.Unlock()
}

func (p *peaks) take() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	h := p.heap
	p.heap = 0
	return h
}

const mib = 1 << 20

// TestMillionEntryBacklogStaysWithinMemoryBudget queues 1,000,000 entries for a peer that is
// down, on the real disk store (Pebble and segment files, sized by the budgets a 1 GiB host
// derives), runs the dispatcher against it with the real internal-plane client getting
// connection refused, then lets the peer come up and drains the whole backlog. The queue is
// never loaded into memory: the live heap stays far below the backlog's own encoded size and
// the process's peak RSS stays far below that host's soft watermark. Figures are logged.
func TestMillionEntryBacklogStaysWithinMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("a million-entry backlog takes about a minute")
	}
	if raceEnabled {
		t.Skip("RSS under the race detector measures its shadow memory; run without -race for the figures")
	}
	const (
		entries = 1_000_000
		objects = 1_000 // real writes; the rest of the backlog re-queues them
		batch   = 10_000
		target  = "peer-down"
	)
	budgets := config.DeriveBudgets(config.Host{MemoryLimitBytes: config.GiB, FileDescriptorLimit: 1024, CPUCount: runtime.NumCPU()})
	hwmReset := resetPeakRSS()
	rssStart := procStatus(t, "VmRSS")

	// A port that refuses connections: bound, then closed.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := ln.Addr().String()
	ln.Close()
	client := peerplane.NewClient(peerplane.ClientConfig{DialTimeout: time.Second, Registerer: prometheus.NewRegistry()})
	t.Cleanup(func() { _ = client.Close() })

	pk := &peaks{}
	sender := &phasedSender{down: client, addr: deadAddr, onPush: func(n int64) {
		if n%50_000 == 0 {
			pk.sampleHeap()
		}
	}}
	dir, err := local.OpenDataDir(t.TempDir(), meta.Options{
		BlockCacheBytes:             budgets.MetadataStoreReadCacheBytes,
		MemTableBytes:               budgets.MetadataStoreWriteBufferBytes,
		MemTableStopWritesThreshold: budgets.MetadataStoreMaxWriteBuffers,
		MaxOpenFiles:                budgets.MetadataStoreMaxOpenFiles,
		CompactionConcurrency:       budgets.MetadataStoreMaxBackgroundJobs,
	})
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingStore{queueStore: dir.DB()}
	ob, err := newOutbox(Config{
		DB: dir.DB(), Sender: sender, Registerer: prometheus.NewRegistry(),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}, counting)
	if err != nil {
		_ = dir.Close()
		t.Fatal(err)
	}
	st, err := local.Open(local.Options{Dir: dir, Registerer: prometheus.NewRegistry(), Observer: ob})
	if err != nil {
		t.Fatal(err)
	}
	storeClosed := false
	t.Cleanup(func() {
		if !storeClosed {
			_ = st.Close()
		}
	})
	ob.SetTargets([]Target{{Name: target, Addr: deadAddr}})

	// Phase 1: the backlog. The first entries come from real writes, the rest re-queue those
	// objects in large batches, the way a burst of writes group-commits.
	start := time.Now()
	ctx := context.Background()
	var queued []Entry
	for i := range objects {
		k := storage.Key{Tenant: "acme", Namespace: "backlog", Kind: storage.KindGradle, Name: fmt.Sprintf("object-%04d", i)}
		body := bytes.Repeat([]byte{byte(i)}, 1024)
		res, err := st.Put(ctx, k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))})
		if err != nil {
			t.Fatalf("put %s: %v", k, err)
		}
		queued = append(queued, Entry{Op: OpObject, Key: k, Version: res.Info.Version})
	}
	encoded, err := AppendEntry(nil, queued[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := objects; i < entries; i += batch {
		b := dir.DB().NewBatch()
		for j := i; j < min(i+batch, entries); j++ {
			if err := ob.Enqueue(b, queued[j%objects]); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Commit(); err != nil {
			t.Fatal(err)
		}
		b.Close()
	}
	enqueueTook := time.Since(start)
	if d := ob.Depth(target); d != entries {
		t.Fatalf("depth %d after queueing, want %d", d, entries)
	}
	pk.sampleHeap()
	heapQueued := pk.take()
	hwmQueued := procStatus(t, "VmHWM")

	// Phase 2: the dispatcher runs against the unreachable peer and backs off, watched by the
	// memory controller a node would run with these budgets (on this process's real RSS; the
	// Go runtime's limit is left alone, this being a shared test process).
	memReg := prometheus.NewRegistry()
	ctrl, err := memory.New(memory.Config{
		Soft: budgets.MemorySoftLimitBytes, Hard: budgets.MemoryHardLimitBytes, Interval: 50 * time.Millisecond,
		Sample: memory.ProcessRSS, Source: "resident set size", Registerer: memReg,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrl.PauseOnHard("outbox", ob)
	resetPeakRSS()
	runCtx, stopRun := context.WithCancel(ctx)
	runDone, ctrlDone := make(chan error, 1), make(chan error, 1)
	go func() { runDone <- ob.Run(runCtx, st) }()
	go func() { ctrlDone <- ctrl.Run(runCtx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			stopRun()
			for _, done := range []chan error{runDone, ctrlDone} {
				if err := <-done; err != nil {
					t.Errorf("Run: %v", err)
				}
			}
		}
	}
	t.Cleanup(stop)
	failures := func() float64 {
		return testutil.ToFloat64(ob.metrics.pushes.WithLabelValues(target, OpObject.String(), resultError))
	}
	// 100 failures: with up to 4 pushes per attempt and the backoff capped at 200 ms, the
	// outage lasts several seconds of retries.
	downStart := time.Now()
	testsupport.WaitFor(t, "100 failed pushes to the peer that is down", 20*time.Second, func() bool { return failures() >= 100 })
	downFor := time.Since(downStart)
	depthDown := ob.Depth(target)
	if depthDown != entries {
		t.Fatalf("depth %d while the peer is down, want %d", depthDown, entries)
	}
	if sender.pushed.Load() != 0 {
		t.Fatal("a push succeeded while the peer was down")
	}
	pk.sampleHeap()
	heapDown := pk.take()
	hwmDown := procStatus(t, "VmHWM")

	// Phase 3: the peer is back; the whole backlog drains.
	resetPeakRSS()
	sender.up.Store(true)
	ob.Notify()
	drainStart := time.Now()
	deadline := drainStart.Add(5 * time.Minute)
	var rssPeakSampled int64
	for ob.Depth(target) != 0 || sender.pushed.Load() < entries {
		if time.Now().After(deadline) {
			t.Fatalf("backlog not drained: depth %d, %d pushed", ob.Depth(target), sender.pushed.Load())
		}
		rssPeakSampled = max(rssPeakSampled, procStatus(t, "VmRSS"))
		time.Sleep(20 * time.Millisecond)
	}
	drainTook := time.Since(drainStart)
	heapDrain := pk.take()
	hwmDrain := procStatus(t, "VmHWM")
	testsupport.WaitFor(t, "the queue deleted from Pebble", 20*time.Second, func() bool {
		page, err := dir.DB().ScanOutbox(ctx, target, 0, 1)
		return err == nil && len(page) == 0
	})
	if n := sender.pushed.Load(); n != entries {
		t.Fatalf("%d pushes, want exactly %d", n, entries)
	}
	if m := counting.maxLimit.Load(); m > int64(ob.cfg.Batch) {
		t.Fatalf("a scan asked for %d entries; the page size is %d", m, ob.cfg.Batch)
	}
	stop()
	transitions := 0.0
	for _, to := range []string{"soft", "hard"} {
		transitions += gatheredCounter(t, memReg, "kura_memory_watermark_transitions_total", "to", to)
	}
	if transitions != 0 || ctrl.State() != memory.Normal {
		t.Errorf("the memory controller left the normal band %v times (now %v)", transitions, ctrl.State())
	}
	storeClosed = true
	if err := st.Close(); err != nil {
		t.Fatalf("close store: %v", err)
	}

	backlogBytes := int64(entries) * int64(len(encoded))
	peakHeap := max(heapQueued, heapDown, heapDrain)
	peakRSS := max(hwmQueued, hwmDown, hwmDrain)
	if !hwmReset {
		t.Logf("the kernel refused to reset VmHWM; peaks are since process start")
	}
	t.Logf("host budgets for 1 GiB: soft %d MiB, hard %d MiB, Pebble block cache %d MiB, memtable %d MiB x %d",
		budgets.MemorySoftLimitBytes/mib, budgets.MemoryHardLimitBytes/mib, budgets.MetadataStoreReadCacheBytes/mib,
		budgets.MetadataStoreWriteBufferBytes/mib, budgets.MetadataStoreMaxWriteBuffers)
	t.Logf("backlog: %d entries of %d bytes encoded (%.0f MiB if held in memory) queued in %v (%.0f entries/s)",
		entries, len(encoded), float64(backlogBytes)/mib, enqueueTook.Round(time.Millisecond), entries/enqueueTook.Seconds())
	t.Logf("peer down: %v failed pushes in %v, depth held at %d; the memory controller stayed in the %v band",
		failures(), downFor.Round(time.Millisecond), depthDown, ctrl.State())
	t.Logf("drained: %d pushes in %v (%.0f entries/s), %d scans of at most %d entries",
		entries, drainTook.Round(time.Millisecond), entries/drainTook.Seconds(), counting.calls.Load(), counting.maxLimit.Load())
	t.Logf("live heap (after GC) peak: queued %.1f MiB, peer down %.1f MiB, draining %.1f MiB",
		float64(heapQueued)/mib, float64(heapDown)/mib, float64(heapDrain)/mib)
	t.Logf("figure: million-entry outbox backlog: peak RSS %.1f MiB, peak live heap %.1f MiB, drained at %.0f entries/s",
		float64(peakRSS)/mib, float64(peakHeap)/mib, entries/drainTook.Seconds())
	t.Logf("RSS: %.1f MiB at start; peak (VmHWM) queueing %.1f MiB, peer down %.1f MiB, draining %.1f MiB (sampled VmRSS peak %.1f MiB)",
		float64(rssStart)/mib, float64(hwmQueued)/mib, float64(hwmDown)/mib, float64(hwmDrain)/mib, float64(rssPeakSampled)/mib)

	// Bounds with wide margins (these are not speed assertions): holding the backlog would take
	// its encoded size in heap alone; the process as a whole stays below the soft watermark.
	if peakHeap > uint64(backlogBytes)/2 {
		t.Errorf("live heap peaked at %.1f MiB: the backlog (%.0f MiB encoded) is being held in memory",
			float64(peakHeap)/mib, float64(backlogBytes)/mib)
	}
	if peakRSS > budgets.MemorySoftLimitBytes {
		t.Errorf("peak RSS %.1f MiB is above the %d MiB soft watermark of the host the budgets were derived for",
			float64(peakRSS)/mib, budgets.MemorySoftLimitBytes/mib)
	}
}

// gatheredCounter is the value of the series of a gathered counter family whose label has
// the given value (0 when there is none).
func gatheredCounter(t *testing.T, reg prometheus.Gatherer, name, label, value string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}
