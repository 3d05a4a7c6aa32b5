package e2e

import (
	"context"
	"errors"

	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// runKuraExpectingExit runs the kura binary with the given node's environment plus overrides
// and returns its exit code and output; it fails the test if kura is still running after the
// timeout (it should have refused to start).
func runKuraExpectingExit(t *testing.T, env []string, timeout time.Duration) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, harness.Binary())
	cmd.Env = env
	cmd.Dir = t.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("kura did not exit within %s; it should have refused to start. Output:\n%s", timeout, out)
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return exit.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("run kura: %v", err)
	}
	return 0, string(out)
}

// TestStartupRefusals checks that the binary refuses bad setups with a clear message and a
// non-zero exit instead of starting half-configured (docs/contract.md §1).
func TestStartupRefusals(t *testing.T) {
	t.Parallel()
	requireKura(t)

	t.Run("every invalid variable is reported at once", func(t *testing.T) {
		env := harness.WithoutKuraEnv()
		env = append(env,
			"KURA_BIND_ADDRESS=127.0.0.1",
			"KURA_DATA_DIR="+t.TempDir(),
			"KURA_PORT=not-a-port",
			"KURA_GRPC_PORT=70000",
			"KURA_LOG_FORMAT=yaml",
		)
		code, out := runKuraExpectingExit(t, env, 30*time.Second)
		if code == 0 {
			t.Fatalf("kura accepted an invalid configuration:\n%s", out)
		}
		for _, variable := range []string{"KURA_PORT", "KURA_GRPC_PORT", "KURA_LOG_FORMAT"} {
			if !strings.Contains(out, variable) {
				t.Errorf("the error does not name %s:\n%s", variable, out)
			}
		}
	})

	t.Run("a data directory in use by a running node", func(t *testing.T) {
		first := StartNode(t, NodeOptions{Name: "owner"})
		second := harness.Prepare(t, NodeOptions{Name: "intruder", DataDir: first.DataDir}, 1)
		code, out := runKuraExpectingExit(t, second.Environ(), 30*time.Second)
		if code == 0 {
			t.Fatalf("a second kura started on a locked data directory:\n%s", out)
		}
		if !strings.Contains(strings.ToLower(out), "lock") {
			t.Errorf("the refusal does not say the data directory is locked:\n%s", out)
		}
		// The owner is unaffected.
		if _, err := first.Up(t.Context()); err != nil {
			t.Fatalf("the running node stopped answering after the refused start: %v", err)
		}
	})
}

// TestClusterHarness starts three nodes through StartCluster: each gets its own ports, data
// directory and name, is seeded with the others' gossip addresses, and survives a restart of
// a neighbour. (Replication is tested by the cluster suite.)
func TestClusterHarness(t *testing.T) {
	t.Parallel()
	nodes := StartCluster(t, 3, func(i int, o *NodeOptions) {
		o.Region = []string{"us", "eu", "ap"}[i]
	})
	seen := map[string]bool{}
	for i, n := range nodes {
		up, err := n.Up(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if up.Node != n.Name || up.NodeURL != n.URL() || up.Region != n.Options().Region {
			t.Errorf("node %d /up = node %q url %q region %q; want %q %q %q", i, up.Node, up.NodeURL, up.Region, n.Name, n.URL(), n.Options().Region)
		}
		if len(n.Options().Peers) != 2 {
			t.Errorf("node %d seeded with %v, want the 2 other gossip addresses", i, n.Options().Peers)
		}
		for _, addr := range []string{n.HTTPAddr(), n.GRPCAddr(), n.GossipAddr(), n.InternalAddr(), n.DataDir} {
			if seen[addr] {
				t.Errorf("node %d shares %s with another node", i, addr)
			}
			seen[addr] = true
		}
	}
	nodes[1].Kill()
	nodes[1].Restart()
	for _, n := range nodes {
		if _, err := n.Up(t.Context()); err != nil {
			t.Errorf("%s after restarting node-1: %v", n.Name, err)
		}
	}
}
