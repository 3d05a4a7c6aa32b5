package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
)

// upServer answers /up with the given status on 127.0.0.1 and counts the requests to it.
func upServer(t *testing.T, status int) (port string, hits *atomic.Int32) {
	t.Helper()
	hits = new(atomic.Int32)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/up" || r.Method != http.MethodGet {
			t.Errorf("healthcheck asked %s %s, want GET /up", r.Method, r.URL.Path)
		}
		hits.Add(1)
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return port, hits
}

func TestHealthcheckAsksUpOnKuraPort(t *testing.T) {
	port, hits := upServer(t, http.StatusOK)
	for _, env := range [][]string{
		{"KURA_PORT=" + port},
		{"KURA_PORT=" + port, "KURA_BIND_ADDRESS=0.0.0.0"},
		{"KURA_PORT=" + port, "KURA_BIND_ADDRESS=127.0.0.1"},
	} {
		var out, errOut bytes.Buffer
		if code := run([]string{"healthcheck"}, env, &out, &errOut); code != 0 {
			t.Errorf("%v: exit %d, stderr %q", env, code, errOut.String())
		}
	}
	if n := hits.Load(); n != 3 {
		t.Fatalf("/up asked %d times, want 3", n)
	}
}

func TestHealthcheckFailsUnlessUpAnswers200(t *testing.T) {
	port, _ := upServer(t, http.StatusServiceUnavailable)
	var out, errOut bytes.Buffer
	if code := run([]string{"healthcheck"}, []string{"KURA_PORT=" + port}, &out, &errOut); code != 1 {
		t.Fatalf("503 from /up: exit %d, want 1", code)
	}
	if !strings.Contains(errOut.String(), "503") {
		t.Fatalf("stderr %q does not give the status", errOut.String())
	}

	// Nothing listening: a port that was free a moment ago.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closed, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	errOut.Reset()
	if code := run([]string{"healthcheck"}, []string{"KURA_PORT=" + closed}, &out, &errOut); code != 1 {
		t.Fatalf("no listener: exit %d, want 1", code)
	}

	errOut.Reset()
	if code := run([]string{"healthcheck"}, []string{"KURA_PORT=http"}, &out, &errOut); code != 2 {
		t.Fatalf("KURA_PORT=http: exit %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), "KURA_PORT") {
		t.Fatalf("stderr %q does not name KURA_PORT", errOut.String())
	}
}

func TestHealthcheckSpeaksTLSWhenThePublicPortDoes(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/up" {
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(srv.Close)
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	var out, errOut bytes.Buffer
	env := []string{"KURA_PORT=" + port, "KURA_PUBLIC_TLS_CERT_PATH=/etc/kura/tls/tls.crt"}
	if code := run([]string{"healthcheck"}, env, &out, &errOut); code != 0 {
		t.Fatalf("HTTPS node: exit %d, stderr %q", code, errOut.String())
	}
	if code := run([]string{"healthcheck"}, env[:1], &out, &errOut); code != 1 {
		t.Fatalf("plain HTTP to an HTTPS port: exit %d, want 1", code)
	}
}
