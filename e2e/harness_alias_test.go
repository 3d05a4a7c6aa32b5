package e2e

import (
	"net"
	"strconv"
	"syscall"
	"testing"

	"github.com/kuracache/kura/e2e/harness"
)

// The node harness lives in e2e/harness, shared with e2e/reliability; these names keep the
// suite's tests reading as before.
type (
	Node           = harness.Node
	NodeOptions    = harness.NodeOptions
	UpStatus       = harness.UpStatus
	Metrics        = harness.Metrics
	ArtifactCounts = harness.ArtifactCounts
)

var (
	StartNode     = harness.StartNode
	StartCluster  = harness.StartCluster
	PollUntil     = harness.PollUntil
	ScrapeMetrics = harness.ScrapeMetrics
	requireKura   = harness.RequireKura
)

func freePorts(k int) ([]int, error) { return harness.FreePorts("127.0.0.1", k) }

func loopbackAddr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// pause freezes the node with SIGSTOP: its sockets stay open but nothing answers, which is
// what a partition or a long GC pause looks like to its peers. A cleanup resumes it so the
// harness can stop it normally.
func pause(t testing.TB, n *Node) {
	t.Helper()
	if err := n.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = n.Signal(syscall.SIGCONT) })
}

// resume continues a paused node.
func resume(t testing.TB, n *Node) {
	t.Helper()
	if err := n.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
}
