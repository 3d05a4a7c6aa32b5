package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kuracache/kura/internal/config"
)

// healthcheckTimeout bounds the whole probe, below the 3 s timeout the Dockerfile gives it.
const healthcheckTimeout = 2 * time.Second

// healthcheck asks the node running in this container (or host) for GET /up on its own
// KURA_PORT and exits 0 on a 200, 1 otherwise. It exists so the image can be distroless: no
// shell, no curl. It reads only the listener variables, never the whole configuration, so it
// cannot fail for a reason that does not stop the node from serving (the data directory the
// node holds locked, say).
func healthcheck(environ []string, stderr io.Writer) int {
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = strings.TrimSpace(v)
		}
	}
	port := 4000
	if v := env[config.EnvPort]; v != "" {
		p, err := strconv.Atoi(v)
		if err != nil || p < 1 || p > 65535 {
			fmt.Fprintf(stderr, "kura healthcheck: %s=%q is not a port\n", config.EnvPort, v)
			return 2
		}
		port = p
	}
	// A node bound to every interface answers on loopback; one bound to a single address
	// only there.
	host := "127.0.0.1"
	if ip := net.ParseIP(env[config.EnvBindAddress]); ip != nil && !ip.IsUnspecified() {
		host = ip.String()
	}
	scheme := "http"
	client := &http.Client{Timeout: healthcheckTimeout}
	if env[config.EnvPublicTLSCert] != "" {
		// The probe asks whether this very process serves, not whether its certificate is
		// valid for the name 127.0.0.1. With KURA_PUBLIC_TLS_CLIENT_CA_PATH the node requires
		// a client certificate the probe does not have: replace the image's HEALTHCHECK then.
		scheme = "https"
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
	}
	url := scheme + "://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/up"

	ctx, cancel := context.WithTimeout(context.Background(), healthcheckTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "kura healthcheck: %v\n", err)
		return 1
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(stderr, "kura healthcheck: GET %s: %v\n", url, err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "kura healthcheck: GET %s: %s\n", url, resp.Status)
		return 1
	}
	return 0
}
