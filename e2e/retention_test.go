package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
)

// TestRetentionByAgeTwoNodes runs two kura processes with a 4 s maximum age for namespace
// "ret": an object nobody reads expires on both nodes, each by its own sweep; an object read
// on B only stays on B and expires on A, and neither anti-entropy rounds nor a read or a
// FindMissingBlobs on A bring it back from B; once B stops reading it, it expires there too,
// and further rounds leave it gone everywhere.
func TestRetentionByAgeTwoNodes(t *testing.T) {
	t.Parallel()
	const ns = "ret"
	nodes := startKuraCluster(t, 2, func(_ int, o *NodeOptions) {
		o.Env = map[string]string{"KURA_RETENTION_MAX_AGE_RET": "4s"}
	})
	a, b := nodes[0], nodes[1]
	kit := newClusterKit(t, nil)
	blob := func(name string) (url string, body []byte, sum [32]byte) {
		body = fmt.Appendf(nil, "retention e2e %s %d", name, time.Now().UnixNano())
		sum = sha256.Sum256(body)
		return "/" + ns + "/cas/" + hex.EncodeToString(sum[:]), body, sum
	}
	coldPath, coldBody, _ := blob("cold")
	hotPath, hotBody, hotSum := blob("hot")
	for _, o := range []struct {
		path string
		body []byte
	}{{coldPath, coldBody}, {hotPath, hotBody}} {
		if got := do(t, request{Method: "PUT", URL: a.URL() + o.path, Body: bytes.NewReader(o.body)}); got.Status != http.StatusOK && got.Status != http.StatusCreated && got.Status != http.StatusNoContent {
			t.Fatalf("PUT %s: %d %s", o.path, got.Status, got.Body)
		}
	}
	waitOutboxEmpty(t, 30*time.Second, a)
	// HEAD answers from metadata and is no use of the object; GET is.
	head := func(n *Node, path string) int {
		return do(t, request{Method: "HEAD", URL: n.URL() + path}).Status
	}
	for _, n := range nodes {
		for _, p := range []string{coldPath, hotPath} {
			if s := head(n, p); s != http.StatusOK {
				t.Fatalf("%s: HEAD %s = %d after replication", n.Name, p, s)
			}
		}
	}

	// B reads hot every 500 ms; nobody reads cold, and nobody reads anything on A.
	ctx, stopReading := context.WithCancel(context.Background())
	var readers sync.WaitGroup
	readers.Go(func() {
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				// tryDo, not do: a goroutine may not call t.Fatal.
				if got, err := tryDo(request{Method: "GET", URL: b.URL() + hotPath}); err != nil || got.Status != http.StatusOK {
					t.Errorf("B: GET hot while it is read every 500 ms = %d, %v", got.Status, err)
				}
			}
		}
	})
	defer func() { stopReading(); readers.Wait() }()

	PollUntil(t, 30*time.Second, "cold expired on both nodes and hot on A", func() (bool, string) {
		states := fmt.Sprintf("cold A %d B %d, hot A %d", head(a, coldPath), head(b, coldPath), head(a, hotPath))
		return head(a, coldPath) == http.StatusNotFound && head(b, coldPath) == http.StatusNotFound &&
			head(a, hotPath) == http.StatusNotFound, states
	})
	if s := head(b, hotPath); s != http.StatusOK {
		t.Fatalf("B: hot, read every 500 ms, expired anyway (HEAD %d)", s)
	}
	waitSweeps(t, 3, a, b)
	// A's misses never go to B: no read-through, no peer vouching in FindMissingBlobs.
	if got := do(t, request{Method: "GET", URL: a.URL() + hotPath}); got.Status != http.StatusNotFound {
		t.Fatalf("A: GET of the object it expired = %d, want 404 (read through from B?)", got.Status)
	}
	cas := repb.NewContentAddressableStorageClient(kit.reapiConn(a))
	resp, err := cas.FindMissingBlobs(context.Background(), &repb.FindMissingBlobsRequest{InstanceName: ns,
		BlobDigests: []*repb.Digest{{Hash: hex.EncodeToString(hotSum[:]), SizeBytes: int64(len(hotBody))}}})
	if err != nil || len(resp.GetMissingBlobDigests()) != 1 {
		t.Fatalf("A: FindMissingBlobs of the object it expired = %v, %v; want it missing", resp, err)
	}
	if head(a, hotPath) != http.StatusNotFound || head(a, coldPath) != http.StatusNotFound || head(b, coldPath) != http.StatusNotFound {
		t.Fatal("an expired object came back after anti-entropy rounds")
	}
	if s := head(b, hotPath); s != http.StatusOK {
		t.Fatalf("B: hot expired while still read (HEAD %d)", s)
	}

	stopReading()
	readers.Wait()
	PollUntil(t, 30*time.Second, "hot expired on B once nobody reads it", func() (bool, string) {
		s := head(b, hotPath)
		return s == http.StatusNotFound, fmt.Sprint("HEAD ", s)
	})
	waitSweeps(t, 3, a, b)
	for _, n := range nodes {
		for _, p := range []string{coldPath, hotPath} {
			if s := head(n, p); s != http.StatusNotFound {
				t.Errorf("%s: %s back after anti-entropy rounds (HEAD %d)", n.Name, p, s)
			}
		}
	}
	ea := metric(t, a, "kura_storage_retention_expired_total", nil)
	eb := metric(t, b, "kura_storage_retention_expired_total", nil)
	if ea < 2 || eb < 2 {
		t.Errorf("kura_storage_retention_expired_total: A %v, B %v; want at least 2 each", ea, eb)
	}
	figure(t, "retention e2e: 4 s max age, objects expired A %v B %v, none came back after 6 anti-entropy rounds", ea, eb)
}
