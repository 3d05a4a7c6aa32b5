package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/config"
	"github.com/kuracache/kura/internal/memory"
	"github.com/kuracache/kura/storage"
)

// nodeConfig is a real configuration for one in-process node on ephemeral loopback ports.
func nodeConfig(t *testing.T, name string, env ...string) *config.Config {
	t.Helper()
	cfg, err := config.Load(append([]string{
		"KURA_DATA_DIR=" + t.TempDir(),
		"KURA_BIND_ADDRESS=127.0.0.1",
		"KURA_NODE_NAME=" + name,
		"KURA_DISK_BUDGET_BYTES=64MiB",
		"KURA_LOG_LEVEL=debug",
	}, env...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Port, cfg.GRPCPort, cfg.GossipPort, cfg.InternalPort = 0, 0, 0, 0
	return cfg
}

// runApp runs a until the test ends; Run must then return nil.
func runApp(t *testing.T, a *App) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run of %s: %v", a.cfg.NodeName, err)
			}
		case <-time.After(config.DefaultDrainTimeout + 5*time.Second):
			t.Errorf("Run of %s did not return", a.cfg.NodeName)
		}
	})
}

// metricValue sums the series of a gathered family whose labels include match.
func metricValue(t *testing.T, reg prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var sum float64
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	series:
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range match {
				if labels[k] != v {
					continue series
				}
			}
			sum += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	return sum
}

func putGradle(t *testing.T, a *App, key, body string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://"+a.HTTPAddr()+"/api/cache/gradle/"+key+"?tenant_id=t&namespace_id=n", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT gradle %s = %d", key, resp.StatusCode)
	}
}

// storedLocally asks the raw store (never read-through) whether it holds the gradle entry.
func storedLocally(t *testing.T, a *App, key string) bool {
	t.Helper()
	_, err := a.store.Stat(context.Background(), storage.Key{Tenant: "t", Namespace: "n", Kind: storage.KindGradle, Name: key})
	if err != nil && !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat %s on %s: %v", key, a.cfg.NodeName, err)
	}
	return err == nil
}

// TestHardWatermarkPausesAndResumesReplication runs two real nodes in this process (Pebble on
// disk, gossip and the internal gRPC plane over loopback) and moves node A across its
// watermarks with a sampler the test controls: the controller, the outbox, the sweeper and the
// metrics are the real ones; only the memory figure is chosen. Real memory crossing real
// watermarks is covered by internal/memory's RSS test and the e2e test.
func TestHardWatermarkPausesAndResumesReplication(t *testing.T) {
	var usage atomic.Int64
	cfgA := nodeConfig(t, "node-a")
	a, err := newApp(cfgA, slog.New(slog.NewTextHandler(io.Discard, nil)), options{
		memorySample:   func() (int64, error) { return usage.Load(), nil },
		memoryInterval: 5 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	runApp(t, a)
	// B sweeps once at start (its bootstrap), then not for an hour: it must not pull A's
	// writes itself, so whatever reaches it while A is paused would have been pushed.
	cfgB := nodeConfig(t, "node-b", "KURA_PEERS="+a.cluster.Self().GossipAddr, "KURA_ANTI_ENTROPY_INTERVAL_MS=3600000")
	b, err := New(cfgB, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	runApp(t, b)
	t.Cleanup(http.DefaultClient.CloseIdleConnections)

	testsupport.WaitFor(t, "the two nodes to see each other and B to bootstrap", 30*time.Second, func() bool {
		return len(a.cluster.Peers()) == 1 && len(b.cluster.Peers()) == 1 && b.sweeper.Bootstrapped()
	})
	// Pushes B answered, alone or batched: small objects travel on the batched lane, so one
	// call may carry several of the writes below.
	received := func() float64 {
		var n float64
		for _, method := range []string{"PushObject", "PushBatch"} {
			n += metricValue(t, b.registry, "kura_peer_requests_total", map[string]string{"side": "server", "method": method, "code": "OK"})
		}
		return n
	}
	// Control: in the normal band a write reaches B by push within moments.
	start := time.Now()
	putGradle(t, a, "control", "control body")
	testsupport.WaitFor(t, "the control write pushed to B", 30*time.Second, func() bool { return received() == 1 && storedLocally(t, b, "control") })
	pushLatency := time.Since(start)

	// Over the hard watermark: A pauses its dispatcher and its sweeper.
	usage.Store(cfgA.MemoryHardLimitBytes)
	// The state flips before its reactions run, and the trim (which returns memory to the OS)
	// is the last of them: wait for it, so every reaction below has been counted.
	testsupport.WaitFor(t, "A in the hard band, its reactions done", 10*time.Second, func() bool {
		return a.memory.State() == memory.Hard &&
			metricValue(t, a.registry, "kura_memory_actions_total", map[string]string{"action": "trim"}) >= 1
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kura_memory_watermark_state", nil, 2},
		{"kura_memory_usage_bytes", nil, float64(cfgA.MemoryHardLimitBytes)},
		{"kura_background_work_paused", map[string]string{"work": "outbox"}, 1},
		{"kura_background_work_paused", map[string]string{"work": "antientropy"}, 1},
		{"kura_outbox_dispatch_paused", nil, 1},
		{"kura_antientropy_paused", nil, 1},
		{"kura_memory_actions_total", map[string]string{"action": "shed"}, 1},
		{"kura_memory_actions_total", map[string]string{"action": "pause"}, 1},
		{"kura_memory_actions_total", map[string]string{"action": "trim"}, 1},
	} {
		if got := metricValue(t, a.registry, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	keys := []string{"paused-1", "paused-2", "paused-3"}
	for _, k := range keys {
		putGradle(t, a, k, "written while paused: "+k)
	}
	if d := a.outbox.Depth("node-b"); d != int64(len(keys)) {
		t.Fatalf("A's queue for B holds %d entries, want %d", d, len(keys))
	}
	// Nothing may leave while paused. An absence can only be watched for a while: the window
	// is many times the control write's push latency and several of the outbox's idle polls.
	window := max(2*time.Second, 20*pushLatency)
	for end := time.Now().Add(window); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		if n := received(); n != 1 {
			t.Fatalf("B received %v pushes while A was paused, want only the control write", n)
		}
		if d := a.outbox.Depth("node-b"); d != int64(len(keys)) {
			t.Fatalf("A's queue for B changed to %d while paused", d)
		}
	}
	for _, k := range keys {
		if storedLocally(t, b, k) {
			t.Fatalf("%s reached B while A was paused", k)
		}
	}

	// Back below the hard watermark's exit level (but above soft): dispatch resumes and the
	// queue drains, while cache admission stays shed.
	usage.Store(cfgA.MemorySoftLimitBytes)
	testsupport.WaitFor(t, "A in the soft band", 10*time.Second, func() bool { return a.memory.State() == memory.Soft })
	testsupport.WaitFor(t, "the paused writes pushed to B", 30*time.Second, func() bool {
		if received() < 2 || a.outbox.Depth("node-b") != 0 {
			return false
		}
		for _, k := range keys {
			if !storedLocally(t, b, k) {
				return false
			}
		}
		return true
	})
	for _, k := range keys {
		if !storedLocally(t, b, k) {
			t.Fatalf("%s did not reach B after the resume", k)
		}
	}
	usage.Store(0)
	testsupport.WaitFor(t, "A in the normal band", 10*time.Second, func() bool { return a.memory.State() == memory.Normal })
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kura_memory_watermark_state", nil, 0},
		{"kura_background_work_paused", map[string]string{"work": "outbox"}, 0},
		{"kura_background_work_paused", map[string]string{"work": "antientropy"}, 0},
		{"kura_outbox_dispatch_paused", nil, 0},
		{"kura_antientropy_paused", nil, 0},
		{"kura_memory_actions_total", map[string]string{"action": "resume"}, 1},
		{"kura_memory_actions_total", map[string]string{"action": "restore"}, 1},
		{"kura_memory_watermark_transitions_total", map[string]string{"to": "hard"}, 1},
		{"kura_memory_watermark_transitions_total", map[string]string{"to": "soft"}, 1},
		{"kura_memory_watermark_transitions_total", map[string]string{"to": "normal"}, 1},
	} {
		if got := metricValue(t, a.registry, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	// B's own controller samples the real process and was never told anything.
	if got := metricValue(t, b.registry, "kura_memory_usage_bytes", nil); got <= 0 {
		t.Errorf("B's kura_memory_usage_bytes = %v", got)
	}
	t.Logf("control push latency %v; paused window %v", pushLatency.Round(time.Millisecond), window)
}

// A node that starts above its hard watermark never runs replication before the pause: the
// first sample is applied in New, before any actor starts.
func TestNodeStartingAboveHardIsPausedBeforeRun(t *testing.T) {
	cfg := nodeConfig(t, "hot")
	a, err := newApp(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), options{
		memorySample: func() (int64, error) { return cfg.MemoryHardLimitBytes + 1, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if a.memory.State() != memory.Hard {
		t.Fatalf("state after New = %v", a.memory.State())
	}
	for _, work := range []string{"outbox", "antientropy"} {
		if got := metricValue(t, a.registry, "kura_background_work_paused", map[string]string{"work": work}); got != 1 {
			t.Errorf("%s paused = %v before Run", work, got)
		}
	}
	runApp(t, a)
	resp, err := http.Get("http://" + a.HTTPAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"kura_memory_watermark_state 2",
		`kura_background_work_paused{work="outbox"} 1`,
		fmt.Sprintf("kura_memory_hard_limit_bytes %g", float64(cfg.MemoryHardLimitBytes)),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// leveredStore records the cache levers the controller pulls.
type leveredStore struct {
	mu    sync.Mutex
	admit []bool
	trims int
}

func (s *leveredStore) SetCacheAdmission(admit bool) {
	s.mu.Lock()
	s.admit = append(s.admit, admit)
	s.mu.Unlock()
}

func (s *leveredStore) TrimCaches() {
	s.mu.Lock()
	s.trims++
	s.mu.Unlock()
}

// The store's levers (added to storage/local separately) are found by interface and pulled
// at the right bands; a store without them is simply not levered.
func TestStoreCacheLevers(t *testing.T) {
	var usage atomic.Int64
	ctrl, err := memory.New(memory.Config{
		Soft: 100, Hard: 200, Sample: func() (int64, error) { return usage.Load(), nil },
		FreeOSMemory: func() {}, Registerer: prometheus.NewRegistry(),
	})
	if err != nil {
		t.Fatal(err)
	}
	if levers := wireStoreLevers(ctrl, struct{}{}); len(levers) != 0 {
		t.Fatalf("levers on a store without any: %v", levers)
	}
	s := &leveredStore{}
	if levers := wireStoreLevers(ctrl, s); strings.Join(levers, ",") != "cache admission,cache trimming" {
		t.Fatalf("levers = %v", levers)
	}
	step := func(v int64, wantAdmit []bool, wantTrims int) {
		t.Helper()
		usage.Store(v)
		if _, err := ctrl.Check(); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		if fmt.Sprint(s.admit) != fmt.Sprint(wantAdmit) || s.trims != wantTrims {
			t.Fatalf("at %d: admission calls %v, trims %d; want %v, %d", v, s.admit, s.trims, wantAdmit, wantTrims)
		}
	}
	step(50, nil, 0)
	step(150, []bool{false}, 0)     // soft: admission off
	step(250, []bool{false}, 1)     // hard: trimmed, admission still off
	step(0, []bool{false, true}, 1) // normal: admission back on
}

// While the node runs, the Go runtime's memory limit is the hard watermark; it is restored
// when the node stops, and left alone when the operator set GOMEMLIMIT.
func TestGoMemoryLimitFollowsTheHardWatermark(t *testing.T) {
	for _, withEnv := range []bool{false, true} {
		t.Run(fmt.Sprintf("GOMEMLIMIT set %v", withEnv), func(t *testing.T) {
			if withEnv {
				t.Setenv("GOMEMLIMIT", "1GiB")
			}
			before := debug.SetMemoryLimit(-1)
			cfg := nodeConfig(t, "limit")
			var logs testsupport.LockedBuffer
			a, err := newApp(cfg, slog.New(slog.NewTextHandler(&logs, nil)), options{
				memorySample: func() (int64, error) { return 0, nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			testsupport.WaitFor(t, "the memory controller running", 10*time.Second, func() bool {
				return strings.Contains(logs.String(), "memory controller running")
			})
			want := cfg.MemoryHardLimitBytes
			if withEnv {
				want = before
				if !strings.Contains(logs.String(), "GOMEMLIMIT is set") {
					t.Error("GOMEMLIMIT not acknowledged in the log")
				}
			}
			if got := debug.SetMemoryLimit(-1); got != want {
				t.Errorf("Go memory limit while running = %d, want %d", got, want)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			if got := debug.SetMemoryLimit(-1); got != before {
				t.Errorf("Go memory limit after stopping = %d, want the previous %d", got, before)
			}
		})
	}
}
