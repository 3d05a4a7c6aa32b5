package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestClusterObjectDeleteReplicates: a plain object's DELETE is a replicated delete marker
// (a newer last-writer-wins write). Deleted on A while C is down and still holds the object,
// it is gone on B, stays gone on A and B while C comes back with its old copy (anti-entropy
// and read-through meet that copy), and C drops it too; a PUT after the DELETE wins everywhere.
func TestClusterObjectDeleteReplicates(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	path := "/api/cache/objects/acme/cpp/3f/" + strings.Repeat("ab", 18)
	get := func(n *Node) response { return do(t, request{Method: http.MethodGet, URL: n.URL() + path}) }

	expectStatus(t, "PUT on A", do(t, request{Method: http.MethodPut, URL: a.URL() + path, Body: strings.NewReader("v1")}), http.StatusCreated)
	for _, n := range []*Node{b, c} {
		PollUntil(t, convergeBaseTimeout, "v1 replicated to "+n.Name, func() (bool, string) {
			r := get(n)
			return r.Status == http.StatusOK && string(r.Body) == "v1", r.String()
		})
	}

	c.Kill()
	waitDropped(t, 60*time.Second, c, a, b)
	start := time.Now()
	expectStatus(t, "DELETE on A", do(t, request{Method: http.MethodDelete, URL: a.URL() + path}), http.StatusNoContent)
	expectStatus(t, "GET on A after the DELETE", get(a), http.StatusNotFound)
	PollUntil(t, convergeBaseTimeout, "the delete reached B", func() (bool, string) {
		r := get(b)
		return r.Status == http.StatusNotFound, r.String()
	})
	onB := time.Since(start)

	c.Restart()
	waitMembership(t, membershipTimeout, a, b, c)
	start = time.Now()
	PollUntil(t, convergeBaseTimeout, "C, down during the delete, dropped its copy", func() (bool, string) {
		for _, n := range []*Node{a, b} {
			if r := get(n); r.Status != http.StatusNotFound {
				t.Fatalf("%s serves the deleted object again after C returned: %s", n.Name, r)
			}
		}
		r := get(c)
		return r.Status == http.StatusNotFound, r.String()
	})
	onC := time.Since(start)
	waitSweeps(t, 2, a, b, c)
	for _, n := range nodes {
		expectStatus(t, fmt.Sprintf("GET on %s after two sweeps", n.Name), get(n), http.StatusNotFound)
	}

	expectStatus(t, "PUT on B after the DELETE", do(t, request{Method: http.MethodPut, URL: b.URL() + path, Body: strings.NewReader("v2")}), http.StatusCreated)
	for _, n := range nodes {
		PollUntil(t, convergeBaseTimeout, "v2 on "+n.Name, func() (bool, string) {
			r := get(n)
			return r.Status == http.StatusOK && string(r.Body) == "v2", r.String()
		})
	}
	figure(t, "DELETE on A: gone on B %s later; C, down during it, dropped its copy %s after rejoining; a later PUT wins on all three",
		onB.Round(time.Millisecond), onC.Round(time.Millisecond))
}
