package reliability

import (
	"context"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// TestHarnessStartsANode proves the suite's plumbing: a node built by harness.Main starts,
// answers /up, and stops gracefully with status 0 (the cleanup checks it).
func TestHarnessStartsANode(t *testing.T) {
	node := harness.StartNode(t, harness.NodeOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	up, err := node.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if up.Status != "ok" || up.Node != node.Name {
		t.Fatalf("GET /up = %+v, want status ok for %s", up, node.Name)
	}
}
