package e2e

import (
	"testing"
	"time"
)

// TestClusterBazelAcrossNodes builds with Debian's Bazel against one node's REAPI, cleans, and
// builds against the other node once the two have converged: every action is a remote cache
// hit with byte-identical outputs, served from the second node's own replica (no read-through).
func TestClusterBazelAcrossNodes(t *testing.T) {
	t.Parallel()
	ws := newBazelWorkspace(t)
	nodes := startKuraCluster(t, 2, nil)
	a, b := nodes[0], nodes[1]
	k := newClusterKit(t, nil)

	filled := ws.build("grpc://" + a.GRPCAddr())
	checkNoRemoteHits(t, filled)
	sums := ws.outputDigests()
	ws.clean()

	converged := k.waitConverged(t, convergeTimeout(0), 1, a, b)
	readThroughBefore := readThroughHits(t, b)
	start := time.Now()
	second := ws.build("grpc://" + b.GRPCAddr())
	took := time.Since(start).Round(time.Millisecond)
	checkAllRemoteHits(t, filled, second)
	compareDigests(t, sums, ws.outputDigests())
	if got := readThroughHits(t, b) - readThroughBefore; got != 0 {
		t.Errorf("B served %v reads through A: the build was not served from B's replica", got)
	}
	figure(t, "bazel build filled node A over gRPC; B held a replica %s after the build; after clean, build against B in %s with %d/%d remote cache hits",
		converged, took, second.RemoteHits(), len(second.Spawns))
}
