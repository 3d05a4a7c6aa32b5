package reliability

import (
	"context"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// Item 9: the internal plane refuses every caller without the cluster's credentials, and is
// never reachable through a public port.

const planeItem = 9

// planeNamespace is where refused pushes would land if they were not refused.
const planeNamespace = "intrusion"

// intrusionKey is the object a refused push tries to plant.
func intrusionKey(name string) *peerpb.ObjectKey {
	return &peerpb.ObjectKey{Tenant: "default", Namespace: planeNamespace, Kind: "gradle", Name: name}
}

// plant tries the three writes an intruder would (an object push, a tombstone push) and a
// listing, and returns the first error of each.
func plant(ctx context.Context, client peerpb.ReplicationClient, name string) (push, tomb, list error) {
	body := []byte("planted by an intruder")
	sum := sha256.Sum256(body)
	version := uint64(time.Now().UnixMilli()) << 16 // a fresh hybrid-logical-clock version
	stream, err := client.PushObject(ctx)
	if err == nil {
		hdr := &peerpb.ObjectHeader{Key: intrusionKey(name), Size: int64(len(body)), ContentType: "application/octet-stream", Sha256: sum[:], Version: version}
		if stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: hdr}}) == nil {
			_ = stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: body}})
		}
		_, err = stream.CloseAndRecv()
	}
	push = err
	_, tomb = client.PushTombstone(ctx, &peerpb.Tombstone{Tenant: "default", Namespace: planeNamespace, Version: version})
	_, list = client.ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
	return push, tomb, list
}

// expectNothingPlanted checks through a trusted client that no refused call stored anything.
func expectNothingPlanted(t *testing.T, trusted peerpb.ReplicationClient, names []string, node string) int {
	t.Helper()
	var keys []*peerpb.ObjectKey
	for _, n := range names {
		keys = append(keys, intrusionKey(n))
	}
	found, err := trusted.FindObjects(rpcContext(t), &peerpb.FindObjectsRequest{Keys: keys})
	if err != nil {
		t.Fatalf("FindObjects on %s with the cluster's credentials: %v", node, err)
	}
	tombs, err := trusted.ListTombstones(rpcContext(t), &peerpb.ListTombstonesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	planted := len(found.GetPresent())
	for _, tb := range tombs.GetTombstones() {
		if tb.GetNamespace() == planeNamespace {
			planted++
		}
	}
	if planted > 0 {
		t.Errorf("%s holds %d objects or tombstones pushed by refused callers", node, planted)
	}
	return planted
}

// TestReliabilityInternalPlaneMTLS runs two nodes with mutual TLS on the internal plane and
// tries it with no client certificate, one from another CA, an expired one, one without
// client-auth usage, and plaintext: every push, tombstone and listing is refused and nothing
// is stored. Then node A's certificate files are rewritten with a new certificate: new
// handshakes get it without a restart, and replication goes on.
func TestReliabilityInternalPlaneMTLS(t *testing.T) {
	ca := testsupport.NewCA(t, "kura reliability internal CA")
	dir := t.TempDir()
	caPath := testsupport.WriteFile(t, dir, "ca.pem", ca.PEM)
	certPaths := map[string][2]string{}
	nodes := harness.StartCluster(t, 2, func(i int, o *harness.NodeOptions) {
		name := fmt.Sprintf("node-%d", i)
		certPath, keyPath := ca.Issue(t, name).WriteFiles(t, dir, name)
		certPaths[name] = [2]string{certPath, keyPath}
		o.Env = map[string]string{
			"KURA_INTERNAL_TLS_CA_CERT_PATH": caPath,
			"KURA_INTERNAL_TLS_CERT_PATH":    certPath,
			"KURA_INTERNAL_TLS_KEY_PATH":     keyPath,
			"KURA_ANTI_ENTROPY_INTERVAL_MS":  "1000",
			"KURA_GOSSIP_REJOIN_INTERVAL_MS": "1000",
		}
	})
	a, b := nodes[0], nodes[1]
	trustedCert := ca.Issue(t, "reliability operator")
	trustedTLS := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool, Certificates: []tls.Certificate{trustedCert.TLS}}
	trusted := func(n *harness.Node) peerpb.ReplicationClient {
		return peerpb.NewReplicationClient(grpcConn(t, n.InternalAddr(), grpc.WithTransportCredentials(credentials.NewTLS(trustedTLS))))
	}

	stranger := testsupport.NewCA(t, "another CA").Issue(t, "intruder")
	expired := ca.IssueWith(t, "expired", testsupport.IssueSpec{NotAfter: time.Now().Add(-time.Minute)})
	serverOnly := ca.IssueWith(t, "server usage only", testsupport.IssueSpec{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	withCert := func(c *testsupport.Leaf) credentials.TransportCredentials {
		cfg := &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool}
		if c != nil {
			cfg.Certificates = []tls.Certificate{c.TLS}
		}
		return credentials.NewTLS(cfg)
	}
	attempts := []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"no client certificate", withCert(nil)},
		{"a certificate from another CA", withCert(&stranger)},
		{"an expired certificate of the cluster's CA", withCert(&expired)},
		{"a certificate without client-auth usage", withCert(&serverOnly)},
		{"plaintext", insecure.NewCredentials()},
	}
	refused, tries := 0, 0
	var names []string
	for i, at := range attempts {
		name := fmt.Sprintf("mtls-%d", i)
		names = append(names, name)
		// A fresh connection per attempt: a refused handshake is not retried on a pooled one.
		conn, err := grpc.NewClient(a.InternalAddr(), grpc.WithTransportCredentials(at.creds))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		push, tomb, list := plant(ctx, peerpb.NewReplicationClient(conn), name)
		cancel()
		_ = conn.Close()
		for call, err := range map[string]error{"push": push, "tombstone": tomb, "listing": list} {
			tries++
			if err != nil {
				refused++
			} else {
				t.Errorf("%s: the %s was served", at.name, call)
			}
		}
		t.Logf("%s: push %v; tombstone %v; listing %v", at.name, status.Code(push), status.Code(tomb), status.Code(list))
	}
	if _, err := trusted(a).ListTombstones(rpcContext(t), &peerpb.ListTombstonesRequest{}); err != nil {
		t.Fatalf("a certificate of the cluster's CA is refused: %v", err)
	}
	planted := expectNothingPlanted(t, trusted(a), names, a.Name) + expectNothingPlanted(t, trusted(b), names, b.Name)
	figures.Check(t, planeItem, "mTLS: calls refused (no cert, other CA, expired, wrong usage, plaintext)", fmt.Sprintf("%d/%d", refused, tries), fmt.Sprintf("%d/%d", tries, tries))
	figures.Check(t, planeItem, "mTLS: objects or tombstones stored by refused callers", planted, 0)

	// Rotation: rewrite A's files in place, as cert-manager does with a mounted Secret.
	rotated := ca.Issue(t, "node-0 rotated")
	paths := certPaths[a.Name]
	for i, data := range [][]byte{rotated.CertPEM, rotated.KeyPEM} {
		if err := os.WriteFile(paths[i], data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	harness.PollUntil(t, 45*time.Second, "A serves its rotated certificate on new handshakes", func() (bool, string) {
		conn, err := tls.Dial("tcp", a.InternalAddr(), &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: ca.Pool,
			Certificates: []tls.Certificate{trustedCert.TLS}, NextProtos: []string{"h2"}})
		if err != nil {
			return false, err.Error()
		}
		defer conn.Close()
		cn := conn.ConnectionState().PeerCertificates[0].Subject.CommonName
		return cn == "node-0 rotated", "serving " + cn
	})
	tookRotation := time.Since(start).Round(100 * time.Millisecond)
	figures.Report(t, planeItem, "mTLS: rotated certificate served without a restart after", tookRotation.String())
	// A's restart count is the harness's: still one start.
	if !a.Running() {
		t.Fatal("A is not running")
	}
	// Replication across the rotation: a push from A (dialling with its new certificate) lands on B.
	body := "written after the rotation " + uniqueID(t)
	key := uniqueID(t)
	req, _ := http.NewRequest(http.MethodPut, a.URL()+"/api/cache/gradle/default/rotation/"+key, strings.NewReader(body))
	resp, err := a.Client(30 * time.Second).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT on A after the rotation: %d", resp.StatusCode)
	}
	harness.PollUntil(t, 60*time.Second, "the write on A reaches B after the rotation", func() (bool, string) {
		found, err := trusted(b).FindObjects(rpcContext(t), &peerpb.FindObjectsRequest{Keys: []*peerpb.ObjectKey{
			{Tenant: "default", Namespace: "rotation", Kind: "gradle", Name: key}}})
		if err != nil {
			return false, err.Error()
		}
		return len(found.GetPresent()) == 1, "not on B yet"
	})

	t.Run("public ports never answer the internal plane", func(t *testing.T) {
		expectNoInternalPlaneOnPublicPorts(t, a)
	})
}

// planeCredential is the internal plane's credential (cluster/peer/auth.go documents it): v1,
// the signer's Unix milliseconds, and HMAC-SHA256 under HKDF(gossip key) of the full method and
// the milliseconds. The test computes it from the documented format so it can forge stale,
// replayed and wrongly keyed ones; the control call with a good one proves it is the format.
func planeCredential(t *testing.T, gossipKey []byte, method string, at time.Time) string {
	t.Helper()
	k, err := hkdf.Key(sha256.New, gossipKey, nil, "kura internal plane v1", sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	millis := strconv.FormatInt(at.UnixMilli(), 10)
	mac := hmac.New(sha256.New, k)
	mac.Write([]byte(method + "\n" + millis))
	return "v1:" + millis + ":" + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// withCredential adds the credential header to ctx.
func withCredential(ctx context.Context, cred string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-kura-internal-auth", cred)
}

// TestReliabilityInternalPlaneGossipKey runs two nodes with a gossip key and no mTLS and calls
// the internal plane with no credential, a malformed one, one derived from another key, a
// stale and a future timestamp, and a credential signed for another method (a listing's
// credential replayed on a push and a tombstone): each is UNAUTHENTICATED, nothing is stored,
// and the node counts each refusal under its reason.
func TestReliabilityInternalPlaneGossipKey(t *testing.T) {
	key := sha256.Sum256([]byte("reliability gossip key " + uniqueID(t)))
	nodes := harness.StartCluster(t, 2, func(_ int, o *harness.NodeOptions) {
		o.Env = map[string]string{"KURA_GOSSIP_KEY": base64.StdEncoding.EncodeToString(key[:])}
	})
	a, b := nodes[0], nodes[1]
	raw := peerpb.NewReplicationClient(grpcConn(t, a.InternalAddr()))
	other := sha256.Sum256([]byte("some other cluster's key"))
	const (
		pushMethod = "/kura.internal.v1.Replication/PushObject"
		tombMethod = "/kura.internal.v1.Replication/PushTombstone"
		listMethod = "/kura.internal.v1.Replication/ListTombstones"
	)
	// Each forger returns the credential to send with a call of method (or "" for none).
	forgers := []struct {
		name   string
		reason string // of kura_internal_auth_refusals_total
		cred   func(method string) string
	}{
		{"no credential", "missing", func(string) string { return "" }},
		{"a malformed credential", "malformed", func(string) string { return "v1:not-a-credential" }},
		{"a credential of another key", "bad_credential", func(m string) string { return planeCredential(t, other[:], m, time.Now()) }},
		{"a stale timestamp (10 min old)", "skew", func(m string) string { return planeCredential(t, key[:], m, time.Now().Add(-10*time.Minute)) }},
		{"a future timestamp (10 min ahead)", "skew", func(m string) string { return planeCredential(t, key[:], m, time.Now().Add(10*time.Minute)) }},
		{"a listing's credential replayed", "bad_credential", func(string) string { return planeCredential(t, key[:], listMethod, time.Now()) }},
	}
	refusalsBefore := map[string]float64{}
	m := harness.ScrapeMetrics(t, a)
	for _, r := range []string{"missing", "malformed", "bad_credential", "skew"} {
		refusalsBefore[r] = m.Sum("kura_internal_auth_refusals_total", map[string]string{"reason": r})
	}
	refused, tries := 0, 0
	wantRefusals := map[string]float64{}
	var names []string
	for i, f := range forgers {
		name := fmt.Sprintf("keyed-%d", i)
		names = append(names, name)
		ctxFor := func(method string) context.Context {
			ctx := rpcContext(t)
			if c := f.cred(method); c != "" {
				ctx = withCredential(ctx, c)
			}
			return ctx
		}
		calls := map[string]error{}
		// The push and the tombstone carry a credential computed for their own method (or the
		// replayed listing's); the listing too, except for the replay, which only replays.
		push, err := raw.PushObject(ctxFor(pushMethod))
		if err == nil {
			body := []byte("planted")
			sum := sha256.Sum256(body)
			_ = push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: &peerpb.ObjectHeader{Key: intrusionKey(name),
				Size: int64(len(body)), ContentType: "application/octet-stream", Sha256: sum[:], Version: uint64(time.Now().UnixMilli()) << 16}}})
			_ = push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: body}})
			_, err = push.CloseAndRecv()
		}
		calls["push"] = err
		_, calls["tombstone"] = raw.PushTombstone(ctxFor(tombMethod), &peerpb.Tombstone{Tenant: "default", Namespace: planeNamespace, Version: uint64(time.Now().UnixMilli()) << 16})
		if f.name != "a listing's credential replayed" {
			_, calls["listing"] = raw.ListTombstones(ctxFor(listMethod), &peerpb.ListTombstonesRequest{})
		}
		for call, err := range calls {
			tries++
			if status.Code(err) == codes.Unauthenticated {
				refused++
				wantRefusals[f.reason]++
			} else {
				t.Errorf("%s: %s = %v, want UNAUTHENTICATED", f.name, call, err)
			}
		}
	}
	// The control: a credential made the same way with the cluster's key and the call's own
	// method is served, so the forgeries above differ from it only in what they forge.
	if _, err := raw.ListTombstones(withCredential(rpcContext(t), planeCredential(t, key[:], listMethod, time.Now())), &peerpb.ListTombstonesRequest{}); err != nil {
		t.Fatalf("a good credential is refused (the test's credential format is wrong?): %v", err)
	}
	m = harness.ScrapeMetrics(t, a)
	for reason, want := range wantRefusals {
		if got := m.Sum("kura_internal_auth_refusals_total", map[string]string{"reason": reason}) - refusalsBefore[reason]; got != want {
			t.Errorf("refusals counted for %s: %v, want %v", reason, got, want)
		}
	}
	trustedClient := func(n *harness.Node) peerpb.ReplicationClient {
		return peerpb.NewReplicationClient(grpcConn(t, n.InternalAddr(), grpc.WithUnaryInterceptor(
			func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				return invoker(withCredential(ctx, planeCredential(t, key[:], method, time.Now())), method, req, reply, cc, opts...)
			})))
	}
	planted := expectNothingPlanted(t, trustedClient(a), names, a.Name) + expectNothingPlanted(t, trustedClient(b), names, b.Name)
	figures.Check(t, planeItem, "gossip key: calls refused (none, malformed, other key, stale, future, replayed)", fmt.Sprintf("%d/%d", refused, tries), fmt.Sprintf("%d/%d", tries, tries))
	figures.Check(t, planeItem, "gossip key: objects or tombstones stored by refused callers", planted, 0)

	t.Run("public ports never answer the internal plane", func(t *testing.T) {
		expectNoInternalPlaneOnPublicPorts(t, a)
	})
}

// expectNoInternalPlaneOnPublicPorts calls every method of the internal service on the public
// gRPC port (each must be UNIMPLEMENTED), speaks gRPC to the public HTTP port (it must fail),
// and POSTs every method's path to the public HTTP API (each must be 404).
func expectNoInternalPlaneOnPublicPorts(t *testing.T, n *harness.Node) {
	t.Helper()
	desc := peerpb.Replication_ServiceDesc
	var methods []string
	for _, m := range desc.Methods {
		methods = append(methods, "/"+desc.ServiceName+"/"+m.MethodName)
	}
	var streams []string
	for _, s := range desc.Streams {
		streams = append(streams, "/"+desc.ServiceName+"/"+s.StreamName)
	}
	public := grpcConn(t, n.GRPCAddr())
	overHTTP := grpcConn(t, n.HTTPAddr())
	unanswered, tries := 0, 0
	for _, m := range append(methods, streams...) {
		// A stream carrying one empty message covers unary and streaming methods alike.
		for port, conn := range map[string]*grpc.ClientConn{"gRPC": public, "HTTP": overHTTP} {
			tries++
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			s, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, m)
			if err == nil {
				_ = s.SendMsg(&peerpb.ListTombstonesRequest{})
				_ = s.CloseSend()
				err = s.RecvMsg(&peerpb.ListTombstonesResponse{})
			}
			cancel()
			want := err != nil
			if port == "gRPC" {
				want = status.Code(err) == codes.Unimplemented
			}
			if want {
				unanswered++
			} else {
				t.Errorf("%s on the public %s port: %v", m, port, err)
			}
		}
		tries++
		resp, err := n.Client(15*time.Second).Post(n.URL()+m, "application/grpc", strings.NewReader(""))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusNotFound {
			unanswered++
		} else {
			t.Errorf("POST %s on the public HTTP API: %d, want 404", m, resp.StatusCode)
		}
	}
	figures.Check(t, planeItem, "internal-plane calls on the public ports left unanswered", fmt.Sprintf("%d/%d", unanswered, tries), fmt.Sprintf("%d/%d", tries, tries))
}
