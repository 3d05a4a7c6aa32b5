package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// openPlaneWarning is what a node with neither mTLS nor a gossip key logs at startup.
const openPlaneWarning = "internal plane is open"

// TestClusterInternalPlaneCredential runs two nodes with KURA_GOSSIP_KEY: they replicate as
// usual, while a gRPC client that reaches the internal port without the credential derived
// from the key is refused (UNAUTHENTICATED) on a push and on a listing, and nothing it sent
// is stored. A node with neither key nor mTLS starts, and warns that its plane is open.
func TestClusterInternalPlaneCredential(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString(sha256Bytes("e2e internal plane key"))
	nodes := startKuraCluster(t, 2, func(i int, o *NodeOptions) { o.Env = map[string]string{"KURA_GOSSIP_KEY": key} })
	a, b := nodes[0], nodes[1]
	k := newClusterKit(t, nil) // its internal clients carry each node's credential

	t.Run("replicates with the credential", func(t *testing.T) {
		gen := newObjectGen(t.Name())
		var objs []*clusterObject
		for _, kind := range everyKind {
			objs = append(objs, gen.object(kind, "keyed-plane", 4<<10))
		}
		writeObjects(t, k, objs, 4, a)
		took := k.waitConverged(t, convergeTimeout(len(objs)), storedCount(objs), a, b)
		expectIntact(t, k, objs, b)
		for _, n := range nodes {
			if got := metric(t, n, "kura_internal_auth_refusals_total", nil); got != 0 {
				t.Errorf("%s refused %v calls of its keyed peer", n.Name, got)
			}
		}
		figure(t, "%d objects written on A identical on B %s later, every internal call keyed", len(objs), took)
	})

	t.Run("refuses a client without the credential", func(t *testing.T) {
		conn, err := grpc.NewClient(a.InternalAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		raw := peerpb.NewReplicationClient(conn)
		refusedBefore := metric(t, a, "kura_internal_auth_refusals_total", map[string]string{"reason": "missing"})

		body := []byte("pushed by a stranger")
		sum := sha256.Sum256(body)
		hdr := &peerpb.ObjectHeader{
			Key:  &peerpb.ObjectKey{Tenant: "default", Namespace: "intrusion", Kind: "gradle", Name: "planted"},
			Size: int64(len(body)), ContentType: "application/octet-stream", Sha256: sum[:],
			Version: uint64(time.Now().UnixMilli()) << 16, // a fresh hybrid-logical-clock version
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		push, err := raw.PushObject(ctx)
		if err == nil {
			if push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: hdr}}) == nil {
				_ = push.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: body}}) // io.EOF once refused
			}
			_, err = push.CloseAndRecv()
		}
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("PushObject without the credential = %v, want UNAUTHENTICATED", err)
		}
		t.Logf("push refused: %v", err)
		_, err = raw.ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: digestBits})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("ListObjects without the credential = %v, want UNAUTHENTICATED", err)
		}
		_, err = raw.PushTombstone(ctx, &peerpb.Tombstone{Tenant: "default", Namespace: "keyed-plane", Version: hdr.Version})
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("PushTombstone without the credential = %v, want UNAUTHENTICATED", err)
		}

		for _, n := range nodes {
			listed, err := k.listing(n)
			if err != nil {
				t.Fatal(err)
			}
			for name := range listed {
				if strings.HasPrefix(name, "default/intrusion/") {
					t.Fatalf("%s stores %s, pushed without the credential", n.Name, name)
				}
			}
			tombs, err := k.internal(n).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
			if err != nil {
				t.Fatal(err)
			}
			if len(tombs.GetTombstones()) != 0 {
				t.Fatalf("%s holds tombstones %v after a refused tombstone push", n.Name, tombs.GetTombstones())
			}
		}
		if got := metric(t, a, "kura_internal_auth_refusals_total", map[string]string{"reason": "missing"}) - refusedBefore; got != 3 {
			t.Errorf("A counted %v refusals for a missing credential, want 3", got)
		}
		for _, n := range nodes {
			if log := readLog(t, n); strings.Contains(log, openPlaneWarning) {
				t.Errorf("%s, started with a gossip key, warned that its plane is open", n.Name)
			}
		}
		if log := readLog(t, a); !strings.Contains(log, "refused a call without a valid credential") || !strings.Contains(log, "reason=missing") {
			t.Errorf("A logged no WARN for the refused calls")
		}
	})

	t.Run("an open node warns", func(t *testing.T) {
		open := StartNode(t, NodeOptions{Name: "open"})
		// The warning is logged while the node is built, before /up answers.
		var warning string
		for _, line := range strings.Split(readLog(t, open), "\n") {
			if strings.Contains(line, openPlaneWarning) {
				warning = line
			}
		}
		if !strings.Contains(warning, "level=WARN") || !strings.Contains(warning, "KURA_GOSSIP_KEY") || !strings.Contains(warning, "KURA_INTERNAL_TLS_") {
			t.Fatalf("no WARN naming KURA_GOSSIP_KEY and KURA_INTERNAL_TLS_* in %s (found %q)", open.LogPath(), warning)
		}
		// And it is open indeed: the raw client is served.
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		if _, err := k.internal(open).ListTombstones(ctx, &peerpb.ListTombstonesRequest{}); err != nil {
			t.Fatalf("ListTombstones on the open node: %v", err)
		}
	})
}

func readLog(t testing.TB, n *Node) string {
	t.Helper()
	data, err := os.ReadFile(n.LogPath())
	if err != nil {
		t.Fatalf("read the log of %s: %v", n.Name, err)
	}
	return string(data)
}
