package e2e

import (
	"context"
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
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// testCA is a throwaway certificate authority for the internal plane's mTLS.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
	pool *x509.CertPool
}

// randomSerial is a certificate serial number; random ones never repeat within a CA.
func randomSerial(t testing.TB) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatalf("draw a serial number: %v", err)
	}
	return n
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate the CA key: %v", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatalf("create the CA certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("parse the CA certificate: %v", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pool: pool}
}

// issued is a leaf certificate with its key, as PEM and as a tls.Certificate.
type issued struct {
	certPEM, keyPEM []byte
	tls             tls.Certificate
}

// issue signs a node certificate: IP SAN 127.0.0.1, usable to serve and to dial (the same
// certificate does both on the internal plane).
func (ca *testCA) issue(t testing.TB, cn string) issued {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("generate a key for %s: %v", cn, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(t),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatalf("sign a certificate for %s: %v", cn, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatalf("marshal the key of %s: %v", cn, err)
	}
	out := issued{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	if out.tls, err = tls.X509KeyPair(out.certPEM, out.keyPEM); err != nil {
		t.Fatalf("load the pair of %s: %v", cn, err)
	}
	return out
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	return path
}

// TestClusterMTLS runs three nodes with the internal plane under mutual TLS: they replicate;
// a client without a certificate, with one from another CA, or in plaintext is refused by the
// internal port while one holding a certificate of the cluster's CA is served; the internal
// plane is on neither public port.
func TestClusterMTLS(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, "kura e2e internal CA")
	stranger := newTestCA(t, "some other CA")
	dir := t.TempDir()
	caPath := writeFile(t, dir, "ca.pem", ca.pem)
	nodes := startKuraCluster(t, 3, func(i int, o *NodeOptions) {
		name := []string{"node-0", "node-1", "node-2"}[i]
		cert := ca.issue(t, name)
		o.Env = map[string]string{
			"KURA_INTERNAL_TLS_CA_CERT_PATH": caPath,
			"KURA_INTERNAL_TLS_CERT_PATH":    writeFile(t, dir, name+".pem", cert.certPEM),
			"KURA_INTERNAL_TLS_KEY_PATH":     writeFile(t, dir, name+"-key.pem", cert.keyPEM),
		}
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	client := ca.issue(t, "e2e client")
	k := newClusterKit(t, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.pool, Certificates: []tls.Certificate{client.tls}})

	t.Run("replicates over mTLS", func(t *testing.T) {
		gen := newObjectGen(t.Name())
		var objs []*clusterObject
		for _, kind := range everyKind {
			objs = append(objs, gen.object(kind, "mtls", 8<<10))
		}
		objs = append(objs, gen.object(kindGradle, "mtls", 3<<20))
		writeObjects(t, k, objs, 4, a)
		took := k.waitConverged(t, convergeTimeout(len(objs)), storedCount(objs), a, b, c)
		expectIntact(t, k, objs, b, c)
		figure(t, "%d objects written on A identical on B and C over mTLS %s later", len(objs), took)
	})

	t.Run("refuses clients without the cluster's certificate", func(t *testing.T) {
		strangerCert := stranger.issue(t, "intruder")
		cases := []struct {
			name  string
			creds credentials.TransportCredentials
		}{
			{"no client certificate", credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.pool})},
			{"a certificate from another CA", credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.pool, Certificates: []tls.Certificate{strangerCert.tls}})},
			{"plaintext", insecure.NewCredentials()},
		}
		for _, tc := range cases {
			conn, err := grpc.NewClient(a.InternalAddr(), grpc.WithTransportCredentials(tc.creds))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			_, err = peerpb.NewReplicationClient(conn).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
			cancel()
			_ = conn.Close()
			if err == nil {
				t.Errorf("%s: ListTombstones on the mTLS internal port succeeded", tc.name)
				continue
			}
			t.Logf("%s: refused with %v", tc.name, status.Code(err))
		}
		// The same call with the cluster CA's certificate is served.
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		if _, err := k.internal(a).ListTombstones(ctx, &peerpb.ListTombstonesRequest{}); err != nil {
			t.Fatalf("ListTombstones with a certificate of the cluster CA: %v", err)
		}
	})

	t.Run("internal plane only on its own port", func(t *testing.T) {
		expectInternalPlaneOnlyOnItsPort(t, k, a)
	})
}
