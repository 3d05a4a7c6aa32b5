package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestBazelGRPCCache drives Debian's Bazel 4.2 against Kura's REAPI over gRPC: a cold build
// fills the cache, and after `bazel clean` every action is a remote cache hit with
// byte-identical outputs; the same holds under --remote_instance_name (a namespace of its own),
// with --remote_download_minimal, and across protocols (the gRPC-filled cache serves Bazel's
// HTTP cache client, because both share storage).
func TestBazelGRPCCache(t *testing.T) {
	t.Parallel()
	ws := newBazelWorkspace(t)
	node := StartNode(t, NodeOptions{})
	remote := "grpc://" + node.GRPCAddr()

	var filled bazelBuild
	var sums map[string][32]byte
	t.Run("default instance", func(t *testing.T) {
		ws.t = t
		start := time.Now()
		filled = ws.build(remote)
		missTook := time.Since(start).Round(time.Millisecond)
		checkNoRemoteHits(t, filled)
		sums = ws.outputDigests()

		ws.clean()
		start = time.Now()
		second := ws.build(remote)
		hitTook := time.Since(start).Round(time.Millisecond)
		checkAllRemoteHits(t, filled, second)
		compareDigests(t, sums, ws.outputDigests())
		figure(t, "bazel grpc: build //... %s executing %d actions, %s after clean with %d/%d remote cache hits",
			missTook, len(filled.Spawns), hitTook, second.RemoteHits(), len(second.Spawns))
	})

	t.Run("written over gRPC, read over HTTP", func(t *testing.T) {
		ws.t = t
		ws.clean()
		overHTTP := ws.build(node.URL())
		checkAllRemoteHits(t, filled, overHTTP)
		compareDigests(t, sums, ws.outputDigests())
	})

	t.Run("remote_download_minimal", func(t *testing.T) {
		ws.t = t
		ws.clean()
		minimal := ws.build(remote, "--remote_download_minimal")
		checkAllRemoteHits(t, filled, minimal)
		if _, err := os.Stat(filepath.Join(ws.dir, "bazel-bin", "big.bin")); err == nil {
			t.Fatalf("--remote_download_minimal downloaded big.bin anyway")
		}
	})

	t.Run("instance name", func(t *testing.T) {
		ws.t = t
		ws.clean()
		first := ws.build(remote, "--remote_instance_name=inst1")
		checkNoRemoteHits(t, first)
		instSums := ws.outputDigests()
		if instSums["big.bin"] == sums["big.bin"] {
			t.Fatalf("instance inst1 restored big.bin from the default instance")
		}
		ws.clean()
		second := ws.build(remote, "--remote_instance_name=inst1")
		checkAllRemoteHits(t, first, second)
		compareDigests(t, instSums, ws.outputDigests())
	})
}
