package peer

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// A peer that is not listening is UNAVAILABLE (storage.ErrUnavailable), quickly.
func TestClientUnreachablePeer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	c := newTestClient(t, ClientConfig{DialTimeout: time.Second})
	ctx, cancel := context.WithTimeout(testCtx(t), 20*time.Second)
	defer cancel()
	err = c.PushTombstone(ctx, addr, storage.Tombstone{Tenant: "a", Namespace: "b", Version: 1})
	if !errors.Is(err, storage.ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("PushTombstone(nobody listening) = %v, want ErrUnavailable", err)
	}
	body := []byte("x")
	if _, err := c.PushObject(ctx, addr, infoFor(key(storage.KindGradle, "x"), body, 1), bytes.NewReader(body)); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("PushObject(nobody listening) = %v, want ErrUnavailable", err)
	}
	if _, err := c.FetchObject(ctx, addr, key(storage.KindGradle, "x")); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("FetchObject(nobody listening) = %v, want ErrUnavailable", err)
	}
}

// One connection per address, reused; Forget and Close release them; calls after Close fail.
func TestClientPoolAndClose(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	for range 3 {
		if _, err := p.client.ListTombstones(ctx, p.addr); err != nil {
			t.Fatal(err)
		}
	}
	p.client.mu.Lock()
	n := len(p.client.conns)
	p.client.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d pooled connections after 3 calls to one peer, want 1", n)
	}
	if err := p.client.Forget(p.addr); err != nil {
		t.Fatal(err)
	}
	if _, err := p.client.ListTombstones(ctx, p.addr); err != nil {
		t.Fatalf("call after Forget: %v", err)
	}
	if err := p.client.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.client.ListTombstones(ctx, p.addr); !errors.Is(err, ErrClientClosed) {
		t.Fatalf("call after Close = %v, want ErrClientClosed", err)
	}
}

// Stop waits for running calls; when its context ends first it cancels them. Serve returns
// nil either way.
func TestServerStop(t *testing.T) {
	t.Run("graceful", func(t *testing.T) {
		store := diskStore(t)
		backend := &observedBackend{Backend: store, threshold: 1, crossed: make(chan struct{})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := NewServer(ServerConfig{}, backend)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		c := newTestClient(t, ClientConfig{})

		k := key(storage.KindGradle, "in-flight")
		const size = 3 << 20
		info := streamInfo(t, k, 4, size, version(1))
		release := make(chan struct{})
		pushed := make(chan error, 1)
		go func() {
			_, err := c.PushObject(testCtx(t), ln.Addr().String(), info,
				&gatedReader{r: testsupport.NewPatternReader(4, size), after: 1 << 20, gate: release, timeout: time.Minute})
			pushed <- err
		}()
		<-backend.crossed // the push is being stored

		stopped := make(chan struct{})
		go func() {
			srv.Stop(testCtx(t))
			close(stopped)
		}()
		select {
		case <-stopped:
			t.Fatal("Stop returned while a push was still running")
		case <-time.After(100 * time.Millisecond):
		}
		close(release)
		if err := <-pushed; err != nil {
			t.Fatalf("the in-flight push failed during a graceful stop: %v", err)
		}
		<-stopped
		if err := <-served; err != nil {
			t.Fatalf("Serve = %v, want nil after Stop", err)
		}
		if _, err := store.Stat(testCtx(t), k); err != nil {
			t.Fatalf("the push that finished during Stop is not stored: %v", err)
		}
	})
	t.Run("forced", func(t *testing.T) {
		store := diskStore(t)
		backend := &observedBackend{Backend: store, threshold: 1, crossed: make(chan struct{})}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := NewServer(ServerConfig{}, backend)
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ln) }()
		c := newTestClient(t, ClientConfig{})

		k := key(storage.KindGradle, "stuck")
		const size = 3 << 20
		info := streamInfo(t, k, 5, size, version(1))
		release := make(chan struct{})
		pushed := make(chan error, 1)
		go func() {
			_, err := c.PushObject(testCtx(t), ln.Addr().String(), info,
				&gatedReader{r: testsupport.NewPatternReader(5, size), after: 1 << 20, gate: release, timeout: time.Minute})
			pushed <- err
		}()
		<-backend.crossed

		ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
		defer cancel()
		srv.Stop(ctx) // returns once the stuck handler was cancelled
		if err := <-served; err != nil {
			t.Fatalf("Serve = %v, want nil after Stop", err)
		}
		close(release) // the client notices the broken stream at its next Send
		if err := <-pushed; err == nil {
			t.Fatal("a push cut off by a forced stop reported success")
		}
		if _, err := store.Stat(testCtx(t), k); !isNotFound(err) {
			t.Fatalf("a push cut off by a forced stop was stored: %v", err)
		}
	})
}

// Both sides count calls by method and code; on one registry (as in the app) the server and
// the client share the families.
func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{Registerer: reg}, ClientConfig{Registerer: reg})
	ctx := testCtx(t)
	body := []byte("counted")
	info := infoFor(key(storage.KindGradle, "m"), body, version(1))
	for range 2 {
		if _, err := p.client.PushObject(ctx, p.addr, info, bytes.NewReader(body)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := p.client.FetchObject(ctx, p.addr, key(storage.KindGradle, "absent")); !isNotFound(err) {
		t.Fatal(err)
	}
	mustFetch(t, p.client, p.addr, info.Key)

	for _, tc := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kura_peer_requests_total", map[string]string{"side": "server", "method": "PushObject", "code": "OK"}, 2},
		{"kura_peer_requests_total", map[string]string{"side": "client", "method": "PushObject", "code": "OK"}, 2},
		{"kura_peer_requests_total", map[string]string{"side": "server", "method": "FetchObject", "code": "NotFound"}, 1},
		{"kura_peer_requests_total", map[string]string{"side": "client", "method": "FetchObject", "code": "NotFound"}, 1},
		{"kura_peer_requests_total", map[string]string{"side": "client", "method": "FetchObject", "code": "OK"}, 1},
		{"kura_peer_request_duration_seconds", map[string]string{"side": "server", "method": "PushObject"}, 2},
		{"kura_peer_request_duration_seconds", map[string]string{"side": "client", "method": "FetchObject"}, 2},
	} {
		if got := counterValue(t, reg, tc.name, tc.labels); got != tc.want {
			t.Errorf("%s%v = %v, want %v", tc.name, tc.labels, got, tc.want)
		}
	}
}
