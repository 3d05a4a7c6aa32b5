package app

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/kuracache/kura/internal/config"
)

// memberlist's Shutdown does not wait for a probe already in flight: that goroutine waits out
// its ack timeout (at most the probe interval) and then returns by itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// testConfig loads a real configuration for a node on ephemeral loopback ports, plus any
// extra KURA_* settings.
func testConfig(t *testing.T, extra ...string) *config.Config {
	t.Helper()
	cfg, err := config.Load(append([]string{
		"KURA_DATA_DIR=" + t.TempDir(),
		"KURA_BIND_ADDRESS=127.0.0.1",
		"KURA_NODE_NAME=app-test",
		"KURA_DISK_BUDGET_BYTES=64MiB",
	}, extra...))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Port, cfg.GRPCPort, cfg.GossipPort, cfg.InternalPort = 0, 0, 0, 0 // the kernel picks free ports
	return cfg
}

func TestAppServesAndShutsDownGracefully(t *testing.T) {
	cfg := testConfig(t)
	var logs bytes.Buffer
	node, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()

	base := "http://" + node.HTTPAddr()
	resp, err := http.Get(base + "/up")
	if err != nil {
		t.Fatal(err)
	}
	var up map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&up); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if up["status"] != "ok" || up["node"] != "app-test" {
		t.Fatalf("/up = %v", up)
	}

	put, err := http.NewRequest(http.MethodPut, base+"/api/cache/gradle/abc123?tenant_id=t&namespace_id=n", strings.NewReader("entry"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err = http.DefaultClient.Do(put)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
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
	if !strings.Contains(logs.String(), "kura stopped") {
		t.Fatalf("no stop log in:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "analytics webhooks off") {
		t.Fatalf("no analytics startup line in:\n%s", logs.String())
	}
	http.DefaultClient.CloseIdleConnections()

	// The data directory is released on shutdown: a second node opens it and still has the entry.
	cfg.Port, cfg.GRPCPort, cfg.GossipPort, cfg.InternalPort = 0, 0, 0, 0
	again, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("reopen after shutdown: %v", err)
	}
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan error, 1)
	go func() { done2 <- again.Run(ctx2) }()
	resp, err = http.Get("http://" + again.HTTPAddr() + "/api/cache/gradle/abc123?tenant_id=t&namespace_id=n")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	cancel2()
	if err := <-done2; err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || string(body) != "entry" {
		t.Fatalf("after restart GET = %d %q", resp.StatusCode, body)
	}
}

func TestAppRefusesALockedDataDirectory(t *testing.T) {
	cfg := testConfig(t)
	first, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := first.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	second := *cfg
	_, err = New(&second, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "locked by another running kura process") {
		t.Fatalf("second node on the same data dir: err = %v", err)
	}
}

// A node with neither mTLS nor a gossip key says once, at startup, that its internal plane is
// open and how to close it; a node with a gossip key does not.
func TestAppWarnsWhenTheInternalPlaneIsOpen(t *testing.T) {
	const warning = "internal plane is open"
	for _, tc := range []struct {
		name      string
		gossipKey []byte
		warns     bool
	}{
		{"no key, no mTLS", nil, true},
		{"gossip key", bytes.Repeat([]byte{7}, 32), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			cfg.GossipKey = tc.gossipKey
			var logs bytes.Buffer
			node, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			node.closeOpened()
			n := strings.Count(logs.String(), warning)
			switch {
			case tc.warns && (n != 1 || !strings.Contains(logs.String(), "level=WARN") ||
				!strings.Contains(logs.String(), "KURA_GOSSIP_KEY") || !strings.Contains(logs.String(), "KURA_INTERNAL_TLS_")):
				t.Fatalf("want one WARN naming KURA_GOSSIP_KEY and KURA_INTERNAL_TLS_*, got %d in:\n%s", n, logs.String())
			case !tc.warns && n != 0:
				t.Fatalf("warned with a gossip key:\n%s", logs.String())
			}
		})
	}
}
