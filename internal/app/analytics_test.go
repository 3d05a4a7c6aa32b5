package app

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/config"
)

// TestAppSendsAnalyticsOnShutdown: with KURA_ANALYTICS_* set the node reports a Gradle upload.
// The batch timeout is an hour, so the event can only arrive through the final flush, which
// proves the reporter runs in the lifecycle group and is stopped after the HTTP drain.
func TestAppSendsAnalyticsOnShutdown(t *testing.T) {
	const key = "app-test-key"
	var mu sync.Mutex
	var bodies [][]byte
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write(body)
		if r.URL.Path != "/webhooks/gradle-cache" || r.Header.Get("X-Cache-Signature") != hex.EncodeToString(mac.Sum(nil)) ||
			r.Header.Get("X-Cache-Endpoint") != "cache.example:4000" {
			t.Errorf("webhook %s with a bad path, signature or endpoint (%v): %s", r.URL.Path, r.Header, body)
		}
		mu.Lock()
		bodies = append(bodies, body)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer receiver.Close()

	cfg := testConfig(t,
		"KURA_ANALYTICS_SERVER_URL="+receiver.URL,
		"KURA_ANALYTICS_SIGNING_KEY="+key,
		"KURA_ANALYTICS_BATCH_TIMEOUT_MS=3600000",
		"KURA_NODE_URL=http://cache.example:4000",
	)
	var logs bytes.Buffer
	node, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()

	put, err := http.NewRequest(http.MethodPut, "http://"+node.HTTPAddr()+"/api/cache/gradle/acme/android/k1", strings.NewReader("entry"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(put)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT gradle = %d", resp.StatusCode)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run returned %v", err)
		}
	case <-time.After(config.DefaultDrainTimeout + 5*time.Second):
		t.Fatal("Run did not return after cancellation")
	}

	mu.Lock()
	defer mu.Unlock()
	if len(bodies) != 1 {
		t.Fatalf("receiver got %d webhooks, want 1 (the final flush)", len(bodies))
	}
	var doc struct {
		Events []map[string]any `json:"events"`
	}
	if err := json.Unmarshal(bodies[0], &doc); err != nil || len(doc.Events) != 1 {
		t.Fatalf("webhook body %s: %v", bodies[0], err)
	}
	e := doc.Events[0]
	if e["account_handle"] != "acme" || e["project_handle"] != "android" || e["cache_key"] != "k1" ||
		e["action"] != "upload" || e["size"] != float64(5) {
		t.Fatalf("event = %v", e)
	}
	if !strings.Contains(logs.String(), "analytics webhooks on") || !strings.Contains(logs.String(), "server_url="+receiver.URL) {
		t.Fatalf("no analytics startup line naming the server in:\n%s", logs.String())
	}
}
