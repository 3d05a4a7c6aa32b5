package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// Watermarks far below any kura process's resident set (the binary's own text pages alone
// are larger), so the node measures itself above the hard watermark from its first sample.
// The soft one stays above the auto-derived manifest cache (at least 8 MiB), which config
// requires. The Go runtime's limit becomes 16 MiB too; kura's Go-managed memory at rest is
// about 13 MiB, so the collector works a little harder but does not thrash.
const (
	tinySoftLimit = "12MiB"
	tinyHardLimit = "16MiB"
)

// TestHardMemoryWatermarkPausesReplication starts two real nodes. Node A's watermarks are
// below its real resting memory use, so A enters the hard band at once: /metrics shows it,
// its outbox dispatcher and anti-entropy are paused, and writes on A queue for B without
// being pushed. B sweeps only at start (its bootstrap), so nothing reaches it by pull either.
// Then A is restarted with the derived (auto) watermarks, as an operator raising the limit
// would: the queue survived on disk, A is in the normal band, and the paused writes are
// pushed to B. The live resume without a restart (use falling below the hard exit level) is
// covered in-process by internal/app's TestHardWatermarkPausesAndResumesReplication and with
// real RSS by internal/memory's TestRealMemoryCrossesTheWatermarks; a black-box test cannot
// make a process's memory fall on cue without a test-only knob in the product.
func TestHardMemoryWatermarkPausesReplication(t *testing.T) {
	t.Parallel()
	nodes := StartCluster(t, 2, func(i int, o *NodeOptions) {
		o.Env = map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": "3600000"}
		if i == 0 {
			o.Env["KURA_MEMORY_SOFT_LIMIT_BYTES"] = tinySoftLimit
			o.Env["KURA_MEMORY_HARD_LIMIT_BYTES"] = tinyHardLimit
		}
	})
	a, b := nodes[0], nodes[1]
	const wait = 60 * time.Second

	PollUntil(t, wait, "A in the hard band with replication paused", func() (bool, string) {
		m := ScrapeMetrics(t, a)
		state := m.Sum("kura_memory_watermark_state", nil)
		outbox := m.Sum("kura_background_work_paused", map[string]string{"work": "outbox"})
		ae := m.Sum("kura_background_work_paused", map[string]string{"work": "antientropy"})
		usage, hard := m.Sum("kura_memory_usage_bytes", nil), m.Sum("kura_memory_hard_limit_bytes", nil)
		return state == 2 && outbox == 1 && ae == 1 && usage >= hard && hard == 16<<20,
			fmt.Sprintf("state %v, paused outbox %v antientropy %v, usage %v, hard %v", state, outbox, ae, usage, hard)
	})
	// The writes below must be queued for B (A's outbox knows B as a target) and must not
	// reach B by B's own pull (B finished its bootstrap sweep; the next is an hour away).
	PollUntil(t, wait, "A and B joined, A's outbox targets B, B bootstrapped", func() (bool, string) {
		ma, mb := ScrapeMetrics(t, a), ScrapeMetrics(t, b)
		target := len(ma.Series("kura_outbox_depth", map[string]string{"peer": b.Name})) > 0
		sweeps := mb.Sum("kura_antientropy_runs_total", map[string]string{"result": "ok"})
		return target && sweeps >= 1, fmt.Sprintf("A's outbox has a queue for %s: %v; B's ok sweeps: %v", b.Name, target, sweeps)
	})
	m := ScrapeMetrics(t, a)
	usage := m.Sum("kura_memory_usage_bytes", nil)
	figure(t, "node A at rest uses %.1f MiB by its own measure, above its %s hard watermark; memory actions shed %v pause %v trim %v",
		usage/(1<<20), tinyHardLimit, m.Sum("kura_memory_actions_total", map[string]string{"action": "shed"}),
		m.Sum("kura_memory_actions_total", map[string]string{"action": "pause"}), m.Sum("kura_memory_actions_total", map[string]string{"action": "trim"}))

	keys := []string{"mem-paused-1", "mem-paused-2", "mem-paused-3"}
	gradleURL := func(n *Node, key string) string {
		return n.URL() + "/api/cache/gradle/" + key + "?tenant_id=acme&namespace_id=mem"
	}
	body := func(key string) []byte { return []byte("written on A while paused: " + key) }
	for _, k := range keys {
		// A keeps serving clients above the hard watermark; only background work stops.
		expectStatus(t, "PUT on A above the hard watermark", do(t, request{Method: "PUT", URL: gradleURL(a, k), Body: strings.NewReader(string(body(k)))}), 201)
	}
	depthOnA := func() float64 {
		return ScrapeMetrics(t, a).Sum("kura_outbox_depth", map[string]string{"peer": b.Name})
	}
	if d := depthOnA(); d != float64(len(keys)) {
		t.Fatalf("A's queue for B holds %v entries after the writes, want %d", d, len(keys))
	}
	// Pushes B received, alone or batched (small objects travel on the batched lane, so one
	// PushBatch may carry all three writes).
	pushesToB := func() float64 {
		m := ScrapeMetrics(t, b)
		return m.Sum("kura_peer_requests_total", map[string]string{"side": "server", "method": "PushObject"}) +
			m.Sum("kura_peer_requests_total", map[string]string{"side": "server", "method": "PushBatch"})
	}
	// An absence can only be watched for a while: 3 s is a dozen of the outbox's idle polls and
	// hundreds of times the push latency between two loopback nodes.
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if n := pushesToB(); n != 0 {
			t.Fatalf("B received %v pushes while A was above its hard watermark", n)
		}
		ma := ScrapeMetrics(t, a)
		if n := ma.Sum("kura_replication_pushes_total", nil); n != 0 {
			t.Fatalf("A attempted %v pushes while paused", n)
		}
		if d := ma.Sum("kura_outbox_depth", map[string]string{"peer": b.Name}); d != float64(len(keys)) {
			t.Fatalf("A's queue for B changed to %v while paused", d)
		}
	}
	log, err := os.ReadFile(a.LogPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"memory above the hard watermark", "replication dispatch paused"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("A's log lacks %q", want)
		}
	}

	// The operator raises the limit: A restarts with derived watermarks.
	a.Stop()
	a.UnsetEnv("KURA_MEMORY_SOFT_LIMIT_BYTES", "KURA_MEMORY_HARD_LIMIT_BYTES")
	a.Restart()
	start := time.Now()
	PollUntil(t, wait, "A back in the normal band and the paused writes pushed to B", func() (bool, string) {
		ma := ScrapeMetrics(t, a)
		state := ma.Sum("kura_memory_watermark_state", nil)
		paused := ma.Sum("kura_background_work_paused", nil)
		depth := ma.Sum("kura_outbox_depth", map[string]string{"peer": b.Name})
		pushed := pushesToB()
		return state == 0 && paused == 0 && depth == 0 && pushed >= 1,
			fmt.Sprintf("state %v, paused %v, depth %v, pushes received by B %v", state, paused, depth, pushed)
	})
	figure(t, "after the restart with derived watermarks the %d queued writes reached B in %s", len(keys), time.Since(start).Round(time.Millisecond))
	for _, k := range keys {
		expectBody(t, "GET on B of a write made on A while paused", do(t, request{Method: "GET", URL: gradleURL(b, k)}), body(k))
	}
	if n := ScrapeMetrics(t, b).Sum("kura_read_through_total", nil); n != 0 {
		t.Errorf("B served %v reads through its peers; the writes should have been pushed", n)
	}
}
