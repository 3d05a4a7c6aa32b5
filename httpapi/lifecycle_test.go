package httpapi

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func TestReadyFollowsTheLifecycle(t *testing.T) {
	node, err := lifecycle.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, harnessOpts{lifecycle: node})
	ready := func() (int, string) {
		r := h.do("GET", "/ready", nil)
		var body readyResponse
		_ = json.Unmarshal(r.body, &body)
		return r.status, body.State
	}
	state := func() string {
		var up upResponse
		_ = json.Unmarshal(h.do("GET", "/up", nil).body, &up)
		return up.State
	}
	if code, st := ready(); code != 503 || st != "joining" || state() != "joining" {
		t.Fatalf("joining: /ready %d %s, /up state %s", code, st, state())
	}
	// A joining node already answers requests (what it has is served; read-through fills in).
	expect(t, h.do("PUT", "/v1/cache/1", "a"), http.StatusOK, "")
	node.SetServing()
	if code, st := ready(); code != 200 || st != "serving" || state() != "serving" {
		t.Fatalf("serving: /ready %d %s", code, st)
	}
	node.BeginDrain()
	if code, st := ready(); code != 503 || st != "draining" || state() != "draining" {
		t.Fatalf("draining: /ready %d %s", code, st)
	}
	// New requests are refused with a retryable 503; probes still answer.
	r := h.do("GET", "/v1/cache/1", nil)
	expectMessage(t, r, http.StatusServiceUnavailable, "Draining: this node is shutting down; retry on another node")
	if r.header.Get("Retry-After") == "" {
		t.Fatalf("draining refusal headers: %v", r.header)
	}
	// Keep-alive clients are told to reconnect (to another node).
	if raw := h.rawRequest("GET /v1/cache/1 HTTP/1.1\r\nHost: x\r\n", nil); !raw.Close || raw.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("a keep-alive request while draining: status %d, close %v", raw.StatusCode, raw.Close)
	}
	expect(t, h.do("GET", "/up", nil), http.StatusOK, "-")
	expect(t, h.do("GET", "/metrics", nil), http.StatusOK, "-")
}

// TestDrainLetsRequestsInFlightFinish: an upload that started before the drain completes and
// is acknowledged; the drain's WaitIdle returns only after it.
func TestDrainLetsRequestsInFlightFinish(t *testing.T) {
	node, _ := lifecycle.New(nil)
	node.SetServing()
	h := newHarness(t, harnessOpts{lifecycle: node})
	pr, pw := io.Pipe()
	req, _ := http.NewRequest("PUT", h.base+"/v1/cache/42", pr)
	req.ContentLength = 10
	result := make(chan int, 1)
	go func() {
		resp, err := h.client.Do(req)
		if err != nil {
			result <- -1
			return
		}
		resp.Body.Close()
		result <- resp.StatusCode
	}()
	if _, err := pw.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	testsupport.WaitFor(t, "the upload to be in flight", 5*time.Second, func() bool { return node.InFlight() == 1 })
	node.BeginDrain()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := node.WaitIdle(ctx); err == nil {
		t.Fatal("the drain did not wait for the upload")
	}
	if r := h.do("GET", "/v1/cache/42", nil); r.status != http.StatusServiceUnavailable {
		t.Fatalf("a new request while draining: %d", r.status)
	}
	_, _ = pw.Write([]byte("world"))
	_ = pw.Close()
	if code := <-result; code != http.StatusOK {
		t.Fatalf("the in-flight upload finished with %d, want 200", code)
	}
	if err := node.WaitIdle(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "nx", Kind: storage.KindNx, Name: "42"}) {
		t.Fatal("the acknowledged upload is not stored")
	}
}
