package peer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
)

// testCA issues certificates for tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	path string // PEM file of the CA certificate
}

var serial atomic.Int64

func newTestCA(t testing.TB, dir, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(serial.Add(1)),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	ca := &testCA{cert: cert, key: key, path: filepath.Join(dir, name+"-ca.pem")}
	writePEM(t, ca.path, "CERTIFICATE", der)
	return ca
}

type certSpec struct {
	name     string
	usages   []x509.ExtKeyUsage
	notAfter time.Time
}

// issue writes a node certificate and key (IP SAN 127.0.0.1) and returns their paths.
func (ca *testCA) issue(t testing.TB, dir string, spec certSpec) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if spec.usages == nil {
		spec.usages = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}
	}
	if spec.notAfter.IsZero() {
		spec.notAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial.Add(1)),
		Subject:      pkix.Name{CommonName: spec.name},
		NotBefore:    time.Now().Add(-2 * time.Hour),
		NotAfter:     spec.notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  spec.usages,
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath = filepath.Join(dir, spec.name+".pem")
	keyPath = filepath.Join(dir, spec.name+"-key.pem")
	writePEM(t, certPath, "CERTIFICATE", der)
	writePEM(t, keyPath, "PRIVATE KEY", keyDER)
	return certPath, keyPath
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

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
	ca := newTestCA(t, dir, "cluster")
	nodeCert, nodeKey := ca.issue(t, dir, certSpec{name: "node-a"})
	peerCert, peerKey := ca.issue(t, dir, certSpec{name: "node-b"})
	serverTLS, _ := mustLoadTLS(t, ca.path, nodeCert, nodeKey)
	_, clientTLS := mustLoadTLS(t, ca.path, peerCert, peerKey)

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

	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	other := newTestCA(t, dir, "intruder")
	otherCert, otherKey := other.issue(t, dir, certSpec{name: "intruder-node"})
	otherPair, err := tls.LoadX509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}
	otherServerTLS, _ := mustLoadTLS(t, other.path, otherCert, otherKey)
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
	ca := newTestCA(t, dir, "cluster")
	nodeCert, nodeKey := ca.issue(t, dir, certSpec{name: "node-a"})
	serverTLS, clientTLS := mustLoadTLS(t, ca.path, nodeCert, nodeKey)
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
	ca := newTestCA(t, dir, "cluster")
	other := newTestCA(t, dir, "other")
	okCert, okKey := ca.issue(t, dir, certSpec{name: "ok"})
	expCert, expKey := ca.issue(t, dir, certSpec{name: "expired", notAfter: time.Now().Add(-time.Minute)})
	srvCert, srvKey := ca.issue(t, dir, certSpec{name: "server-only", usages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	foreignCert, foreignKey := other.issue(t, dir, certSpec{name: "foreign"})
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
		{"key of another certificate", ca.path, okCert, foreignKey, "load certificate"},
		{"expired certificate", ca.path, expCert, expKey, "expired"},
		{"certificate without client usage", ca.path, srvCert, srvKey, "client-authentication usage"},
		{"certificate from another CA", ca.path, foreignCert, foreignKey, "not issued by the CA"},
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
	ca := newTestCA(t, dir, "cluster")
	certPath, keyPath := ca.issue(t, dir, certSpec{name: "node-v1"})
	var now atomic.Int64
	now.Store(time.Now().UnixNano())
	src, err := loadSource(ca.path, certPath, keyPath, time.Minute, func() time.Time { return time.Unix(0, now.Load()) })
	if err != nil {
		t.Fatal(err)
	}
	_, addr := startServer(t, ServerConfig{TLS: serverConfig(src)}, diskStore(t))
	_, clientTLS := mustLoadTLS(t, ca.path, certPath, keyPath)

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
	newCert, newKey := ca.issue(t, dir, certSpec{name: "node-v2"})
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
	now.Add(int64(2 * time.Minute))
	if cn := servedCN(); cn != "node-v2" {
		t.Fatalf("served %q after rotation, want node-v2", cn)
	}

	// A broken rotation keeps the last good material.
	if err := os.WriteFile(certPath, []byte("half written"), 0o600); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(2 * time.Minute))
	if cn := servedCN(); cn != "node-v2" {
		t.Fatalf("served %q after a broken rotation, want node-v2 kept", cn)
	}
}
