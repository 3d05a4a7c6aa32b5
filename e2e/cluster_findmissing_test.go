package e2e

import (
	"fmt"
	"testing"
	"time"
)

// uploads counts the blob uploads a node's REAPI handled (ByteStream Write and
// BatchUpdateBlobs calls, whatever their outcome).
func uploads(t testing.TB, n *Node) float64 {
	t.Helper()
	m := ScrapeMetrics(t, n)
	return m.Sum("kura_grpc_requests_total", map[string]string{"method": "/google.bytestream.ByteStream/Write"}) +
		m.Sum("kura_grpc_requests_total", map[string]string{"method": "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs"})
}

// TestClusterBazelBlobsOnAPeer builds with Debian's Bazel against node A while replication
// is held back (every node in the hard memory band: outboxes and anti-entropy paused, docs/contract.md
// §6), so nodes B and C have received nothing. Then:
//   - against B, after a clean, every action is a remote cache hit: B reads the action results
//     through from A and its completeness check counts the outputs A holds, instead of turning
//     the hits into misses; B uploads nothing;
//   - against C, with --noremote_accept_cached (Bazel runs every action and uploads what the
//     cache lacks), FindMissingBlobs on C reports A's blobs present, so Bazel uploads only
//     the blobs this run made anew (the genrules write timestamps and random bytes).
func TestClusterBazelBlobsOnAPeer(t *testing.T) {
	t.Parallel()
	ws := newBazelWorkspace(t)
	nodes := startKuraCluster(t, 3, func(_ int, o *NodeOptions) {
		o.Env = map[string]string{
			"KURA_ANTI_ENTROPY_INTERVAL_MS": "3600000",
			"KURA_BOOTSTRAP_TIMEOUT_MS":     "1000",
			// What is tested is that B counts A's blobs, not how fast A answers: the tiny
			// memory limits keep these nodes collecting garbage, and on a loaded machine A
			// misses the default 300 ms (then B rightly answers a miss).
			"KURA_READ_THROUGH_FIND_TIMEOUT_MS": "10000",
			"KURA_MEMORY_SOFT_LIMIT_BYTES":      tinySoftLimit,
			"KURA_MEMORY_HARD_LIMIT_BYTES":      tinyHardLimit,
		}
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	PollUntil(t, 60*time.Second, "every node in the hard band with replication paused", func() (bool, string) {
		var states []string
		ok := true
		for _, n := range nodes {
			m := ScrapeMetrics(t, n)
			paused := m.Sum("kura_background_work_paused", map[string]string{"work": "outbox"}) +
				m.Sum("kura_background_work_paused", map[string]string{"work": "antientropy"})
			ok = ok && paused == 2
			states = append(states, fmt.Sprintf("%s paused %v", n.Name, paused))
		}
		return ok, fmt.Sprint(states)
	})

	filled := ws.build("grpc://" + a.GRPCAddr())
	checkNoRemoteHits(t, filled)
	sums := ws.outputDigests()
	for _, n := range []*Node{b, c} {
		if got := metric(t, n, "kura_artifact_writes_total", nil); got != 0 {
			t.Fatalf("%s stored %v writes although replication is paused", n.Name, got)
		}
	}

	// B: all hits, nothing uploaded.
	ws.clean()
	before := uploads(t, b)
	hits := ws.build("grpc://" + b.GRPCAddr())
	checkAllRemoteHits(t, filled, hits)
	compareDigests(t, sums, ws.outputDigests())
	if got := uploads(t, b) - before; got != 0 {
		t.Errorf("Bazel made %v uploads to B although every blob was on A", got)
	}

	// C: Bazel runs everything and uploads only what FindMissingBlobs reports missing.
	ws.clean()
	before = uploads(t, c)
	ran := ws.build("grpc://"+c.GRPCAddr(), "--noremote_accept_cached")
	if ran.RemoteHits() != 0 || len(ran.Spawns) != len(filled.Spawns) {
		t.Fatalf("build with --noremote_accept_cached: %d hits of %d actions, want 0 of %d", ran.RemoteHits(), len(ran.Spawns), len(filled.Spawns))
	}
	// The genrules write fresh bytes on every run (timestamps, random data): those outputs
	// are new and must be uploaded. Everything else (the Action and Command messages, the
	// C++ outputs) is on A already and must not be.
	// An action that reads a fresh output has a new Action message too (it names the input
	// root): upper reads hello.txt, big_digest reads big.bin.
	readBy := map[string]string{"hello.txt": "upper", "big.bin": "big_digest"}
	fresh := 0
	for name, sum := range ws.outputDigests() {
		if sums[name] != sum {
			fresh++
			if readBy[name] != "" {
				fresh++
			}
		}
	}
	if got := uploads(t, c) - before; got != float64(fresh) {
		t.Errorf("Bazel made %v blob uploads to C, want only the %d blobs this run made anew (A had every other blob)", got, fresh)
	}
	if present := metric(t, c, "kura_read_through_find_total", map[string]string{"result": "present"}); present == 0 {
		t.Errorf("C's FindMissingBlobs found nothing on A (kura_read_through_find_total{present} = 0)")
	}
	figure(t, "blobs on a peer only: %d/%d remote cache hits against B, %v blob uploads to C for %d actions run with --noremote_accept_cached (FindMissingBlobs digests found on A: %v)",
		hits.RemoteHits(), len(hits.Spawns), uploads(t, c)-before, len(ran.Spawns),
		metric(t, c, "kura_read_through_find_total", map[string]string{"result": "present"}))
}
