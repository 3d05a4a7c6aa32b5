package outbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"runtime/pprof"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	peerplane "github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

// replPair is the real composition of two nodes in one process: node A's disk store with its
// outbox (the commit observer) pushing through a real internal-plane client to node B's
// internal-plane server over loopback, which applies into B's disk store.
type replPair struct {
	a, b      *local.Store
	ob        *Outbox
	sender    *timingSender
	client    *peerplane.Client
	addr      string               // B's internal plane
	serverReg *prometheus.Registry // B's kura_peer_* metrics
	obReg     *prometheus.Registry // A's outbox metrics
}

// timingSender records when each key's push returned (delivered to B and committed there).
type timingSender struct {
	BatchSender
	mu   sync.Mutex
	done map[storage.Key]time.Time
}

func (s *timingSender) mark(k storage.Key) {
	now := time.Now()
	s.mu.Lock()
	if s.done != nil {
		if _, ok := s.done[k]; !ok {
			s.done[k] = now
		}
	}
	s.mu.Unlock()
}

func (s *timingSender) PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (bool, error) {
	applied, err := s.BatchSender.PushObject(ctx, addr, info, body)
	if err == nil {
		s.mark(info.Key)
	}
	return applied, err
}

func (s *timingSender) PushBatch(ctx context.Context, addr string, objs []storage.PutItem) ([]storage.PutItemResult, error) {
	res, err := s.BatchSender.PushBatch(ctx, addr, objs)
	for i, r := range res {
		if r.Err == nil {
			s.mark(objs[i].Key)
		}
	}
	return res, err
}

// perObject hides a sender's batched lane: the outbox then pushes every object alone.
type perObject struct{ Sender }

// newReplPair builds the pair; mod may change the outbox's configuration (its Sender
// included) before it is built.
func newReplPair(b testing.TB, mod func(*Config)) *replPair {
	b.Helper()
	metaOpts := meta.Options{BlockCacheBytes: 32 << 20, MemTableBytes: 16 << 20}
	// Node B: its store behind a real internal-plane server.
	bStore, err := local.Open(local.Options{DataDir: b.TempDir(), Registerer: prometheus.NewRegistry(), Metadata: metaOpts})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = bStore.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	serverReg := prometheus.NewRegistry()
	srv := peerplane.NewServer(peerplane.ServerConfig{Registerer: serverReg}, bStore)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Stop(ctx)
		<-served
	})
	// Node A: outbox over its data directory, then the store observed by it.
	client := peerplane.NewClient(peerplane.ClientConfig{Registerer: prometheus.NewRegistry()})
	b.Cleanup(func() { _ = client.Close() })
	sender := &timingSender{BatchSender: client}
	dir, err := local.OpenDataDir(b.TempDir(), metaOpts)
	if err != nil {
		b.Fatal(err)
	}
	obReg := prometheus.NewRegistry()
	cfg := Config{DB: dir.DB(), Sender: sender, Registerer: obReg}
	if os.Getenv("KURA_BENCH_PER_OBJECT") != "" {
		cfg.Sender = perObject{sender} // the lane before PushBatch, for comparison
	}
	if mod != nil {
		mod(&cfg)
	}
	if v, err := strconv.Atoi(os.Getenv("KURA_BENCH_INFLIGHT")); err == nil {
		cfg.InFlight = v // exploring the lever: go test -bench … with KURA_BENCH_INFLIGHT=16
	}
	ob, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	aStore, err := local.Open(local.Options{Dir: dir, Registerer: prometheus.NewRegistry(), Observer: ob})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = aStore.Close() })
	ob.SetTargets([]Target{{Name: "b", Addr: ln.Addr().String()}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ob.Run(ctx, aStore) }()
	b.Cleanup(func() { cancel(); <-done })
	return &replPair{a: aStore, b: bStore, ob: ob, sender: sender, client: client, addr: ln.Addr().String(), serverReg: serverReg, obReg: obReg}
}

// writeA stores n objects of size bytes on A from writers goroutines and returns their keys
// and when each write was acknowledged.
func (p *replPair) writeA(b testing.TB, prefix string, n, size, writers int) ([]storage.Key, []time.Time) {
	return p.writeAPaced(b, prefix, n, size, writers, 0)
}

// writeAPaced is writeA with each writer starting a write at most every every (0: no pacing),
// so that the lag is measured under a load the pair sustains rather than with a backlog.
func (p *replPair) writeAPaced(b testing.TB, prefix string, n, size, writers int, every time.Duration) ([]storage.Key, []time.Time) {
	b.Helper()
	keys := make([]storage.Key, n)
	acked := make([]time.Time, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var tick <-chan time.Time
			if every > 0 {
				t := time.NewTicker(every)
				defer t.Stop()
				tick = t.C
			}
			for {
				if tick != nil {
					<-tick
				}
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				body := storagetest.Bytes(uint64(i)+1, size)
				k := storage.Key{Tenant: "bench", Namespace: "repl", Kind: storage.KindGradle, Name: fmt.Sprintf("%s-%d", prefix, i)}
				if _, err := p.a.Put(context.Background(), k, bytes.NewReader(body), storage.PutOptions{Size: int64(size)}); err != nil {
					failed.Store(err)
					return
				}
				keys[i], acked[i] = k, time.Now()
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	return keys, acked
}

func (p *replPair) drain(b testing.TB) {
	b.Helper()
	testsupport.WaitFor(b, "outbox drained", 10*time.Minute, func() bool { return p.ob.Depth("b") == 0 })
}

// BenchmarkReplicationDrain measures sustained replication alone: b.N objects are written on
// A with dispatch paused, then the timer runs while the outbox delivers the backlog to B.
// objects/s and MiB/s are the replication rate (the sender's reads, the pushes, B's commits).
func BenchmarkReplicationDrain(b *testing.B) {
	for _, c := range []struct {
		name    string
		size    int
		writers int
	}{
		{"1KiB", 1 << 10, 16},
		{"64MiB", 64 << 20, 2},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := newReplPair(b, nil)
			p.ob.SetPaused(true)
			keys, _ := p.writeA(b, "drain", b.N, c.size, c.writers)
			b.SetBytes(int64(c.size))
			stopProfile := drainProfile(b, c.name)
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			p.ob.SetPaused(false)
			p.drain(b)
			elapsed := time.Since(start)
			b.StopTimer()
			stopProfile()
			b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/object")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "objects/s")
			p.checkOnB(b, keys)
		})
	}
}

// BenchmarkReplicationLag writes on A as fast as writers allow (or paced at 1,000/s) while the
// outbox runs, and reports the lag from A's acknowledgement to B's commit (p50, p99) and the replicated rate.
func BenchmarkReplicationLag(b *testing.B) {
	for _, c := range []struct {
		name    string
		size    int
		writers int
		every   time.Duration
	}{
		{"1KiB", 1 << 10, 16, 0},
		{"1KiB-1000/s", 1 << 10, 16, 16 * time.Millisecond},
		{"1KiB-200/s", 1 << 10, 16, 80 * time.Millisecond},
		{"64MiB", 64 << 20, 2, 0},
	} {
		b.Run(c.name, func(b *testing.B) {
			p := newReplPair(b, nil)
			p.sender.mu.Lock()
			p.sender.done = map[storage.Key]time.Time{}
			p.sender.mu.Unlock()
			b.SetBytes(int64(c.size))
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			keys, acked := p.writeAPaced(b, "lag", b.N, c.size, c.writers, c.every)
			p.drain(b)
			elapsed := time.Since(start)
			b.StopTimer()
			p.sender.mu.Lock()
			lags := make([]time.Duration, 0, len(keys))
			for i, k := range keys {
				if d, ok := p.sender.done[k]; ok {
					lags = append(lags, d.Sub(acked[i]))
				}
			}
			p.sender.mu.Unlock()
			slices.Sort(lags)
			if len(lags) > 0 {
				b.ReportMetric(float64(lags[len(lags)/2].Microseconds())/1000, "p50-lag-ms")
				b.ReportMetric(float64(lags[len(lags)*99/100].Microseconds())/1000, "p99-lag-ms")
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "objects/s")
			b.ReportMetric(float64((processCPU()-cpu).Microseconds())/float64(b.N), "cpu-µs/object")
			p.checkOnB(b, keys)
		})
	}
}

// processCPU is the CPU time (user and system) this process has used: both nodes, so a
// drain's figure is the replication's whole cost per object, sender and receiver.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// checkOnB makes sure every key is readable on B (a benchmark that measured nothing is wrong).
func (p *replPair) checkOnB(b testing.TB, keys []storage.Key) {
	b.Helper()
	for _, k := range keys {
		if _, err := p.b.Stat(context.Background(), k); err != nil {
			b.Fatalf("%s on B: %v", k, err)
		}
	}
}

// drainProfile CPU-profiles the drain alone (not the writes on A that prepare it) into
// $KURA_BENCH_DRAIN_PROFILE-<name> when that is set; run without -cpuprofile then.
func drainProfile(b *testing.B, name string) (stop func()) {
	path := os.Getenv("KURA_BENCH_DRAIN_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path + "-" + name)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		pprof.StopCPUProfile()
		_ = f.Close()
	}
}
