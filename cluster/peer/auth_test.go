package peer

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

var (
	clusterKey  = bytes.Repeat([]byte{0x5a}, 32) // a KURA_GOSSIP_KEY, decoded
	intruderKey = bytes.Repeat([]byte{0xa5}, 32)
)

// exerciseAll makes every kind of call through c: a client-streaming push, a server-streaming
// fetch and the unary ones. It returns the first error.
func exerciseAll(ctx context.Context, c *Client, addr, name string) error {
	body := []byte("signed " + name)
	k := key(storage.KindGradle, name)
	if _, err := c.PushObject(ctx, addr, infoFor(k, body, version(1)), bytes.NewReader(body)); err != nil {
		return err
	}
	r, err := c.FetchObject(ctx, addr, k)
	if err != nil {
		return err
	}
	var got bytes.Buffer
	_, err = got.ReadFrom(r)
	_ = r.Close()
	if err != nil {
		return err
	}
	if !bytes.Equal(got.Bytes(), body) {
		return errors.New("fetched another body")
	}
	if err := c.PushTombstone(ctx, addr, storage.Tombstone{Tenant: "acme", Namespace: "gone-" + name, Version: version(2)}); err != nil {
		return err
	}
	bk := key(storage.KindGradle, name+"-batch")
	sum := sha256.Sum256(body)
	res, err := c.PushBatch(ctx, addr, []storage.PutItem{{Key: bk, Body: body, Opts: storage.PutOptions{Size: int64(len(body)), ExpectedSHA256: &sum, Version: version(1)}}})
	if err != nil {
		return err
	}
	if res[0].Err != nil || !res[0].Created {
		return fmt.Errorf("PushBatch of one new object: %+v", res[0])
	}
	if _, _, err := c.BucketDigests(ctx, addr, 4); err != nil {
		return err
	}
	if _, _, err := c.ListObjects(ctx, addr, 4, nil, nil, 0); err != nil {
		return err
	}
	if found, err := c.FindObjects(ctx, addr, []storage.Key{k}); err != nil {
		return err
	} else if len(found) != 1 {
		return fmt.Errorf("FindObjects found %d of the pushed object", len(found))
	}
	_, err = c.ListTombstones(ctx, addr)
	return err
}

// nothingStored fails the test when store holds the object or a tombstone a refused call sent.
func nothingStored(t *testing.T, store Backend, name string) {
	t.Helper()
	ctx := testCtx(t)
	if _, err := store.Stat(ctx, key(storage.KindGradle, name)); !isNotFound(err) {
		t.Fatalf("Stat %s after a refused push = %v, want not found", name, err)
	}
	ts, err := store.Tombstones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tomb := range ts {
		if strings.HasSuffix(tomb.Namespace, name) {
			t.Fatalf("a refused tombstone was applied: %+v", tomb)
		}
	}
}

func refusals(t *testing.T, p *plane, reason string) float64 {
	t.Helper()
	return counterValue(t, p.serverReg, "kura_internal_auth_refusals_total", map[string]string{"reason": reason})
}

func TestCredentialWithTheClusterKeyIsServed(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{PlaneKey: clusterKey}, ClientConfig{PlaneKey: clusterKey})
	if err := exerciseAll(testCtx(t), p.client, p.addr, "keyed"); err != nil {
		t.Fatalf("calls with the cluster's key: %v", err)
	}
	for _, r := range refusalReasons {
		if got := refusals(t, p, r); got != 0 {
			t.Errorf("refusals{reason=%s} = %v, want 0", r, got)
		}
	}
}

// A client without the credential (an open node, a scanner) is refused on unary and
// streaming calls alike, before any handler runs.
func TestCredentialMissingIsRefused(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{PlaneKey: clusterKey}, ClientConfig{})
	ctx := testCtx(t)
	rc := rawClient(t, p.addr)
	body := []byte("unsigned")
	info := infoFor(key(storage.KindGradle, "raw"), body, version(1))

	push, err := rc.PushObject(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := push.Send(headerPart(infoToHeader(info, false))); err == nil {
		_ = push.Send(chunkPart(body)) // io.EOF once the refusal is in; the status follows
	}
	_, err = push.CloseAndRecv()
	expectRefused(t, "raw PushObject", err, "missing credential")

	fetch, err := rc.FetchObject(ctx, &peerpb.FetchObjectRequest{Key: keyToProto(info.Key)})
	if err == nil {
		_, err = fetch.Recv()
	}
	expectRefused(t, "raw FetchObject", err, "missing credential")

	batch, err := rc.PushBatch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = batch.Send(&peerpb.PushBatchPart{Items: []*peerpb.BatchItem{{Header: infoToHeader(info, false), Body: body}}})
	_, err = batch.CloseAndRecv()
	expectRefused(t, "raw PushBatch", err, "missing credential")

	_, err = rc.PushTombstone(ctx, tombstoneToProto(storage.Tombstone{Tenant: "acme", Namespace: "gone-raw", Version: version(2)}))
	expectRefused(t, "raw PushTombstone", err, "missing credential")
	_, err = rc.ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: 4})
	expectRefused(t, "raw ListObjects", err, "missing credential")

	// The package's own client without a key fails the same way, as a typed RemoteError.
	err = exerciseAll(ctx, p.client, p.addr, "unkeyed")
	var re *RemoteError
	if !errors.As(err, &re) {
		t.Fatalf("unkeyed Client: %v, want a *RemoteError", err)
	}
	expectRefused(t, "unkeyed Client", err, "missing credential")

	nothingStored(t, store, "raw")
	nothingStored(t, store, "unkeyed")
	if got := refusals(t, p, refusalMissing); got != 6 {
		t.Errorf("refusals{reason=missing} = %v, want 6", got)
	}
	if got := counterValue(t, p.serverReg, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushObject", "code": "Unauthenticated"}); got != 2 {
		t.Errorf("kura_peer_requests_total{method=PushObject,code=Unauthenticated} = %v, want 2", got)
	}
}

func expectRefused(t *testing.T, what string, err error, message string) {
	t.Helper()
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), message) {
		t.Fatalf("%s = %v, want UNAUTHENTICATED with %q", what, err, message)
	}
}

func TestCredentialWithAnotherKeyIsRefused(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{PlaneKey: clusterKey}, ClientConfig{PlaneKey: intruderKey})
	err := exerciseAll(testCtx(t), p.client, p.addr, "intruder")
	expectRefused(t, "push with another key", err, "bad credential")
	// Tombstones take the unary path.
	err = p.client.PushTombstone(testCtx(t), p.addr, storage.Tombstone{Tenant: "acme", Namespace: "gone-intruder", Version: version(2)})
	expectRefused(t, "tombstone with another key", err, "bad credential")
	nothingStored(t, store, "intruder")
	if got := refusals(t, p, refusalBad); got != 2 {
		t.Errorf("refusals{reason=bad_credential} = %v, want 2", got)
	}
}

// The timestamp must lie within CredentialSkew of the server's clock, either way; the
// boundary itself is accepted. Both clocks are fixed so no real time passes in between.
func TestCredentialTimestampSkew(t *testing.T) {
	serverNow := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{PlaneKey: clusterKey, Now: func() time.Time { return serverNow }}, ClientConfig{})
	ctx := testCtx(t)
	for _, tc := range []struct {
		name   string
		offset time.Duration // client clock minus server clock
		ok     bool
	}{
		{"in sync", 0, true},
		{"a minute behind", -time.Minute, true},
		{"at the window behind", -DefaultCredentialSkew, true},
		{"at the window ahead", DefaultCredentialSkew, true},
		{"just past the window behind", -DefaultCredentialSkew - time.Millisecond, false},
		{"stale by an hour", -time.Hour, false},
		{"in the future", DefaultCredentialSkew + time.Second, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestClient(t, ClientConfig{PlaneKey: clusterKey, Now: func() time.Time { return serverNow.Add(tc.offset) }})
			name := strings.ReplaceAll(tc.name, " ", "-")
			err := exerciseAll(ctx, c, p.addr, name)
			if tc.ok {
				if err != nil {
					t.Fatalf("calls %s: %v", tc.name, err)
				}
				return
			}
			expectRefused(t, "calls "+tc.name, err, "timestamp outside the allowed skew")
			nothingStored(t, store, name)
		})
	}
	if got := refusals(t, p, refusalSkew); got != 3 {
		t.Errorf("refusals{reason=skew} = %v, want 3", got)
	}

	// A narrower window is honoured.
	narrow := startPlane(t, diskStore(t), ServerConfig{PlaneKey: clusterKey, CredentialSkew: 10 * time.Second, Now: func() time.Time { return serverNow }},
		ClientConfig{PlaneKey: clusterKey, Now: func() time.Time { return serverNow.Add(-30 * time.Second) }})
	if _, err := narrow.client.ListTombstones(ctx, narrow.addr); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("30 s behind a 10 s window: %v, want UNAUTHENTICATED", err)
	}
}

// Headers that are not one canonical v1 credential are refused as malformed.
func TestCredentialMalformedIsRefused(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{PlaneKey: clusterKey}, ClientConfig{})
	rc := rawClient(t, p.addr)
	good := newPlaneMAC(clusterKey).format(peerpb.Replication_ListTombstones_FullMethodName, time.Now().UnixMilli())
	for _, values := range [][]string{
		{"garbage"},
		{"v2" + strings.TrimPrefix(good, "v1")},
		{good + "="},
		{good, good},
	} {
		md := metadata.MD{}
		for _, v := range values {
			md.Append(credentialHeader, v)
		}
		_, err := rc.ListTombstones(metadata.NewOutgoingContext(testCtx(t), md), &peerpb.ListTombstonesRequest{})
		expectRefused(t, "credential "+strings.Join(values, ", "), err, "malformed credential")
	}
	// The same good credential alone is served: it is only the duplicates that were refused.
	ctx := metadata.AppendToOutgoingContext(testCtx(t), credentialHeader, good)
	if _, err := rc.ListTombstones(ctx, &peerpb.ListTombstonesRequest{}); err != nil {
		t.Fatalf("the good credential alone: %v", err)
	}
	// A credential is bound to its method: replayed on a push it is a bad one.
	push, err := rc.PushObject(ctx)
	if err == nil {
		_, err = push.CloseAndRecv()
	}
	expectRefused(t, "a listing's credential replayed on a push", err, "bad credential")
	if got := refusals(t, p, refusalMalformed); got != 4 {
		t.Errorf("refusals{reason=malformed} = %v, want 4", got)
	}
}

// mTLS and the credential are both checked when both are configured.
func TestCredentialWithMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "cluster")
	caPath := testsupport.WriteFile(t, dir, "cluster-ca.pem", ca.PEM)
	nodeCert, nodeKey := ca.Issue(t, "node-a").WriteFiles(t, dir, "node-a")
	serverTLS, clientTLS := mustLoadTLS(t, caPath, nodeCert, nodeKey)
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{TLS: serverTLS, PlaneKey: clusterKey}, ClientConfig{TLS: clientTLS, PlaneKey: clusterKey})
	ctx := testCtx(t)
	if err := exerciseAll(ctx, p.client, p.addr, "both"); err != nil {
		t.Fatalf("certificate and key: %v", err)
	}
	certOnly := newTestClient(t, ClientConfig{TLS: clientTLS})
	expectRefused(t, "certificate without the key", exerciseAll(ctx, certOnly, p.addr, "cert-only"), "missing credential")
	keyOnly := newTestClient(t, ClientConfig{PlaneKey: clusterKey})
	if err := exerciseAll(ctx, keyOnly, p.addr, "key-only"); err == nil {
		t.Fatal("the key without a certificate was served over mTLS")
	}
	nothingStored(t, store, "cert-only")
	nothingStored(t, store, "key-only")
}

// CredentialInterceptors give a connection of one's own the credential, which the same
// connection lacks without them.
func TestCredentialInterceptors(t *testing.T) {
	_, addr := startServer(t, ServerConfig{PlaneKey: clusterKey}, diskStore(t))
	dial := func(key []byte) peerpb.ReplicationClient {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if key != nil {
			unary, stream := CredentialInterceptors(key)
			opts = append(opts, grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream))
		}
		cc, err := grpc.NewClient("passthrough:///"+addr, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cc.Close() })
		return peerpb.NewReplicationClient(cc)
	}
	ctx := testCtx(t)
	keyed := dial(clusterKey)
	if _, err := keyed.ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: 4}); err != nil {
		t.Fatalf("unary with the interceptors: %v", err)
	}
	fetch, err := keyed.FetchObject(ctx, &peerpb.FetchObjectRequest{Key: keyToProto(key(storage.KindGradle, "absent"))})
	if err == nil {
		_, err = fetch.Recv()
	}
	if status.Code(err) != codes.NotFound {
		t.Fatalf("stream with the interceptors: %v, want NOT_FOUND (served, nothing there)", err)
	}
	_, err = dial(nil).ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: 4})
	expectRefused(t, "the connection without the interceptors", err, "missing credential")
}

// A scanner gets one WARN line per reason and interval, with the remote address and the
// number of refusals left out since the previous line; the metric counts every refusal.
func TestCredentialRefusalLogIsRateLimited(t *testing.T) {
	clock := testsupport.NewClock(time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC))
	var logs testsupport.LockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	p := startPlane(t, diskStore(t), ServerConfig{PlaneKey: clusterKey, Now: clock.Now, Logger: logger}, ClientConfig{})
	rc := rawClient(t, p.addr)
	ctx := testCtx(t)
	scan := func(n int) {
		for range n {
			_, err := rc.ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
			expectRefused(t, "scan", err, "missing credential")
		}
	}
	const refusedLine = "refused a call without a valid credential"
	scan(5)
	got := logs.Lines(refusedLine)
	if len(got) != 1 || !strings.Contains(got[0], "level=WARN") || !strings.Contains(got[0], "reason=missing") ||
		!strings.Contains(got[0], "remote=127.0.0.1:") || !strings.Contains(got[0], "method=ListTombstones") {
		t.Fatalf("after 5 refusals, log lines %q; want one WARN with reason, remote address and method", got)
	}
	// Another reason has its own budget.
	c := newTestClient(t, ClientConfig{PlaneKey: intruderKey})
	expectRefused(t, "wrong key", exerciseAll(ctx, c, p.addr, "logged"), "bad credential")
	if got := logs.Lines(refusedLine); len(got) != 2 || !strings.Contains(got[1], "reason=bad_credential") {
		t.Fatalf("log lines %q; want a second one for bad_credential", got)
	}
	clock.Advance(refusalLogInterval)
	scan(1)
	got = logs.Lines("reason=missing")
	if len(got) != 2 || !strings.Contains(got[1], "suppressed_since_last=4") {
		t.Fatalf("after the interval, lines %q; want a second missing line counting the 4 suppressed", got)
	}
	if got := refusals(t, p, refusalMissing); got != 6 {
		t.Errorf("refusals{reason=missing} = %v, want 6 (every refusal counted)", got)
	}
	// Refusals do not also come out through the generic failure line.
	if got := logs.Lines("internal-plane request failed"); len(got) != 0 {
		t.Fatalf("refusals logged as failures too: %q", got)
	}
}

// The pooled MAC states spell the credential exactly as the scheme above auth.go's
// constants defines it, also when many goroutines sign and check at once.
func TestCredentialIsTheSpecifiedHMAC(t *testing.T) {
	spec := func(method string, millis int64) string {
		m := hmac.New(sha256.New, derivePlaneKey(clusterKey))
		m.Write([]byte(method + "\n" + strconv.FormatInt(millis, 10)))
		return "v1:" + strconv.FormatInt(millis, 10) + ":" + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	p := newPlaneMAC(clusterKey)
	methods := []string{
		peerpb.Replication_PushObject_FullMethodName, peerpb.Replication_ListObjects_FullMethodName,
		"/" + strings.Repeat("long.", 100) + "Method", // longer than the pooled buffer
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				method, millis := methods[(g+i)%len(methods)], int64(1_760_000_000_000+g*1000+i)
				if got, want := p.format(method, millis), spec(method, millis); got != want {
					t.Errorf("credential for %s at %d = %q, want %q", method, millis, got, want)
					return
				}
			}
		})
	}
	wg.Wait()
	if p.format(methods[0], 0) == newPlaneMAC(intruderKey).format(methods[0], 0) {
		t.Fatal("two gossip keys sign alike")
	}
}

func TestParseCredential(t *testing.T) {
	k := newPlaneMAC(clusterKey)
	good := k.format("/kura.internal.v1.Replication/PushObject", 1_760_000_000_123)
	c, err := parseCredential(good)
	if err != nil || c.millis != 1_760_000_000_123 || c.mac != k.sum("/kura.internal.v1.Replication/PushObject", 1_760_000_000_123) {
		t.Fatalf("parseCredential(%q) = %+v, %v", good, c, err)
	}
	_, mac, _ := strings.Cut(strings.TrimPrefix(good, "v1:"), ":")
	for _, bad := range []string{
		"", "v1", "v1:", "v1::" + mac, "v1:1760000000123", "V1:1760000000123:" + mac,
		"v1:+1760000000123:" + mac, "v1:-5:" + mac, "v1:01760000000123:" + mac, "v1:17600000001 3:" + mac,
		"v1:99999999999999999999:" + mac, "v1:9223372036854775808:" + mac,
		"v1:1760000000123:" + mac + "=", "v1:1760000000123:" + mac[:42], "v1:1760000000123:" + mac + "A",
		"v1:1760000000123:/" + mac[1:], "v1:1760000000123:+" + mac[1:], "v1:1760000000123:" + mac + ":x",
		good + strings.Repeat("A", maxCredentialBytes),
	} {
		if c, err := parseCredential(bad); err == nil {
			t.Errorf("parseCredential(%q) accepted: %+v", bad, c)
		}
	}
	if c, err := parseCredential("v1:0:" + mac); err != nil || c.millis != 0 {
		t.Errorf("millisecond zero: %+v, %v", c, err)
	}
}

func TestDerivePlaneKey(t *testing.T) {
	k := derivePlaneKey(clusterKey)
	if len(k) != sha256.Size || bytes.Equal(k, clusterKey) || !bytes.Equal(k, derivePlaneKey(clusterKey)) || bytes.Equal(k, derivePlaneKey(intruderKey)) {
		t.Fatalf("derived key %x: want 32 bytes, deterministic, distinct from the gossip key and per key", k)
	}
}
