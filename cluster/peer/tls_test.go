package peer

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func mustLoadTLS(t testing.TB, ca, cert, key string) (*tls.Config, *tls.Config) {
	t.Helper()
	s, c, err := LoadTLS(ca, cert, key)
	if err != nil {
		t.Fatalf("LoadTLS: %v", err)
	}
	return s, c
}

// The mutual-TLS plane: the right certificate works; no certificate, a certificate from
// another CA, a server from another CA and plaintext are all refused, and nothing is stored.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "cluster")
	caPath := testsupport.WriteFile(t, dir, "cluster-ca.pem", ca.PEM)
	nodeCert, nodeKey := ca.Issue(t, "node-a").WriteFiles(t, dir, "node-a")
	peerCert, peerKey := ca.Issue(t, "node-b").WriteFiles(t, dir, "node-b")
	serverTLS, _ := mustLoadTLS(t, caPath, nodeCert, nodeKey)
	_, clientTLS := mustLoadTLS(t, caPath, peerCert, peerKey)

	store := diskStore(t)
	_, addr := startServer(t, ServerConfig{TLS: serverTLS}, store)
	ctx := testCtx(t)
	body := []byte("over mTLS")
	push := func(c *Client, name string) error {
		info := infoFor(key(storage.KindGradle, name), body, version(1))
		_, err := c.PushObject(ctx, addr, info, bytes.NewReader(body))
		return err
	}
	stored := func(name string) bool {
		_, err := store.Stat(ctx, key(storage.KindGradle, name))
		return err == nil
	}

	good := newTestClient(t, ClientConfig{TLS: clientTLS})
	if err := push(good, "good"); err != nil {
		t.Fatalf("push with the cluster's certificate: %v", err)
	}
	if got, _ := mustFetch(t, good, addr, key(storage.KindGradle, "good")); !bytes.Equal(got, body) {
		t.Fatalf("fetched %q", got)
	}

	pool := ca.Pool
	other := testsupport.NewCA(t, "intruder")
	otherPath := testsupport.WriteFile(t, dir, "intruder-ca.pem", other.PEM)
	otherCert, otherKey := other.Issue(t, "intruder-node").WriteFiles(t, dir, "intruder-node")
	otherPair, err := tls.LoadX509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	otherServerTLS, _ := mustLoadTLS(t, otherPath, otherCert, otherKey)
	_, otherAddr := startServer(t, ServerConfig{TLS: otherServerTLS}, diskStore(t))

	for _, tc := range []struct {
		name string
		cfg  ClientConfig
		addr string
	}{
		{"no client certificate", ClientConfig{TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}}, addr},
		{"client certificate from another CA", ClientConfig{TLS: &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", Certificates: []tls.Certificate{otherPair}, MinVersion: tls.VersionTLS12}}, addr},
		{"plaintext client", ClientConfig{}, addr},
		{"server certificate from another CA", ClientConfig{TLS: clientTLS}, otherAddr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, tc.cfg)
			info := infoFor(key(storage.KindGradle, "refused"), body, version(1))
			_, err := c.PushObject(ctx, tc.addr, info, bytes.NewReader(body))
			if err == nil {
				t.Fatal("push succeeded")
			}
			t.Logf("refused: %v", err)
			if err := c.PushTombstone(ctx, tc.addr, storage.Tombstone{Tenant: "acme", Namespace: "gradle", Version: version(9)}); err == nil {
				t.Fatal("tombstone push succeeded")
			}
			if stored("refused") {
				t.Fatal("a refused client's push was stored")
			}
		})
	}

	// A TLS client against a plaintext server fails too.
	_, plainAddr := startServer(t, ServerConfig{}, diskStore(t))
	c := newTestClient(t, ClientConfig{TLS: clientTLS})
	if _, err := c.ListTombstones(ctx, plainAddr); err == nil {
		t.Fatal("TLS client talked to a plaintext server")
	}
}

// The server's handshake also requires the client-authentication usage of the CA's
// certificates, and the client accepts a peer certificate whatever its SANs (chain only).
func TestTLSChainVerificationIgnoresSANs(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "cluster")
	caPath := testsupport.WriteFile(t, dir, "cluster-ca.pem", ca.PEM)
	nodeCert, nodeKey := ca.Issue(t, "node-a").WriteFiles(t, dir, "node-a")
	serverTLS, clientTLS := mustLoadTLS(t, caPath, nodeCert, nodeKey)
	_, addr := startServer(t, ServerConfig{TLS: serverTLS}, diskStore(t))
	// Dial by "localhost": not in the certificate's SANs (IP 127.0.0.1 only), still accepted.
	_, port, _ := net.SplitHostPort(addr)
	c := newTestClient(t, ClientConfig{TLS: clientTLS})
	if _, err := c.ListTombstones(testCtx(t), net.JoinHostPort("localhost", port)); err != nil {
		t.Fatalf("dial by a name outside the SANs: %v", err)
	}
}

func TestLoadTLSErrors(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "cluster")
	caPath := testsupport.WriteFile(t, dir, "cluster-ca.pem", ca.PEM)
	other := testsupport.NewCA(t, "other")
	okCert, okKey := ca.Issue(t, "ok").WriteFiles(t, dir, "ok")
	expCert, expKey := ca.IssueWith(t, "expired", testsupport.IssueSpec{NotAfter: time.Now().Add(-time.Minute)}).WriteFiles(t, dir, "expired")
	srvCert, srvKey := ca.IssueWith(t, "server-only", testsupport.IssueSpec{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}).WriteFiles(t, dir, "server-only")
	foreignCert, foreignKey := other.Issue(t, "foreign").WriteFiles(t, dir, "foreign")
	garbage := filepath.Join(dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name          string
		ca, cert, key string
		want          string
	}{
		{"missing CA file", filepath.Join(dir, "nope.pem"), okCert, okKey, "nope.pem"},
		{"CA file without certificates", garbage, okCert, okKey, "no PEM certificate"},
		{"key of another certificate", caPath, okCert, foreignKey, "load certificate"},
		{"expired certificate", caPath, expCert, expKey, "expired"},
		{"certificate without client usage", caPath, srvCert, srvKey, "client-authentication usage"},
		{"certificate from another CA", caPath, foreignCert, foreignKey, "not issued by the CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, c, err := LoadTLS(tc.ca, tc.cert, tc.key)
			if err == nil || s != nil || c != nil {
				t.Fatalf("LoadTLS = %v, %v, %v; want an error", s, c, err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

// A rotated certificate is picked up by later handshakes without a restart.
func TestTLSReloadsRotatedCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "cluster")
	caPath := testsupport.WriteFile(t, dir, "cluster-ca.pem", ca.PEM)
	certPath, keyPath := ca.Issue(t, "node-v1").WriteFiles(t, dir, "node-v1")
	clock := testsupport.NewClock(time.Now())
	src, err := loadSource(caPath, certPath, keyPath, time.Minute, clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, ServerConfig{TLS: serverConfig(src)}, diskStore(t))
	_, clientTLS := mustLoadTLS(t, caPath, certPath, keyPath)

	servedCN := func() string {
		t.Helper()
		cfg := clientTLS.Clone()
		cfg.NextProtos = []string{"h2"}
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		defer func() { _ = conn.Close() }()
		return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	if cn := servedCN(); cn != "node-v1" {
		t.Fatalf("served %q, want node-v1", cn)
	}

	// Rotate in place (as a Secret update does): a new certificate under the same paths.
	newCert, newKey := ca.Issue(t, "node-v2").WriteFiles(t, dir, "node-v2")
	for from, to := range map[string]string{newCert: certPath, newKey: keyPath} {
		data, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if cn := servedCN(); cn != "node-v1" {
		t.Fatalf("served %q before the reload interval, want node-v1 still", cn)
	}
	clock.Advance(2 * time.Minute)
	if cn := servedCN(); cn != "node-v2" {
		t.Fatalf("served %q after rotation, want node-v2", cn)
	}

	// A broken rotation keeps the last good material.
	if err := os.WriteFile(certPath, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	if cn := servedCN(); cn != "node-v2" {
		t.Fatalf("served %q after a broken rotation, want node-v2 kept", cn)
	}
}
