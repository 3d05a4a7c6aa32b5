package app

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// A node with KURA_PPROF_ADDRESS serves the profiles on that address, the public port does not
// serve them, and the listener goes away with the node.
func TestPprofOnItsOwnListenerOnly(t *testing.T) {
	cfg := testConfig(t)
	cfg.PprofAddress = "127.0.0.1:0"
	node, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- node.Run(ctx) }()
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}

	if !node.pprof.loopback() {
		t.Errorf("%s is not counted as loopback", node.PprofAddr())
	}
	pprofAddr := node.PprofAddr()
	if pprofAddr == "" || pprofAddr == node.HTTPAddr() {
		t.Fatalf("pprof address %q (public %q)", pprofAddr, node.HTTPAddr())
	}
	if code, body := get("http://" + pprofAddr + "/debug/pprof/"); code != http.StatusOK || !strings.Contains(body, "goroutine") {
		t.Fatalf("GET /debug/pprof/ on the pprof listener = %d %.200q", code, body)
	}
	if code, body := get("http://" + pprofAddr + "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Fatalf("GET /debug/pprof/goroutine on the pprof listener = %d %.200q", code, body)
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/goroutine?debug=1", "/debug/pprof/cmdline"} {
		if code, body := get("http://" + node.HTTPAddr() + path); code == http.StatusOK || strings.Contains(body, "goroutine profile") {
			t.Fatalf("GET %s on the public port = %d %.200q", path, code, body)
		}
	}

	client.CloseIdleConnections()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", pprofAddr, time.Second); err == nil {
		conn.Close()
		t.Fatalf("the pprof listener %s still accepts after the node stopped", pprofAddr)
	}
}

// Without KURA_PPROF_ADDRESS there is no profiling listener at all.
func TestPprofOffByDefault(t *testing.T) {
	node, err := New(testConfig(t), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer node.closeOpened()
	if node.pprof != nil || node.PprofAddr() != "" {
		t.Fatalf("pprof listener %q without KURA_PPROF_ADDRESS", node.PprofAddr())
	}
}
