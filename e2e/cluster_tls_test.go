package e2e

import (
	"context"
	"crypto/tls"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/internal/testsupport"
)

// TestClusterMTLS runs three nodes with the internal plane under mutual TLS: they replicate;
// a client without a certificate, with one from another CA, or in plaintext is refused by the
// internal port while one holding a certificate of the cluster's CA is served; the internal
// plane is on neither public port.
func TestClusterMTLS(t *testing.T) {
	t.Parallel()
	ca := testsupport.NewCA(t, "kura e2e internal CA")
	stranger := testsupport.NewCA(t, "some other CA")
	dir := t.TempDir()
	caPath := testsupport.WriteFile(t, dir, "ca.pem", ca.PEM)
	nodes := startKuraCluster(t, 3, func(i int, o *NodeOptions) {
		name := []string{"node-0", "node-1", "node-2"}[i]
		cert := ca.Issue(t, name)
		o.Env = map[string]string{
			"KURA_INTERNAL_TLS_CA_CERT_PATH": caPath,
			"KURA_INTERNAL_TLS_CERT_PATH":    testsupport.WriteFile(t, dir, name+".pem", cert.CertPEM),
			"KURA_INTERNAL_TLS_KEY_PATH":     testsupport.WriteFile(t, dir, name+"-key.pem", cert.KeyPEM),
		}
	})
	a, b, c := nodes[0], nodes[1], nodes[2]
	client := ca.Issue(t, "e2e client")
	k := newClusterKit(t, &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool, Certificates: []tls.Certificate{client.TLS}})

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
		strangerCert := stranger.Issue(t, "intruder")
		cases := []struct {
			name  string
			creds credentials.TransportCredentials
		}{
			{"no client certificate", credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool})},
			{"a certificate from another CA", credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool, Certificates: []tls.Certificate{strangerCert.TLS}})},
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
