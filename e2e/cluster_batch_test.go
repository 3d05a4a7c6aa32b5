package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// batchInstance is the REAPI instance (and so the namespace) of the batched-lane tests.
const batchInstance = "batchlane"

// batchNodes starts two clustered nodes whose sweeps wait an hour, so what reaches B after
// the start-up sweep is what A's outbox delivered.
func batchNodes(t *testing.T) (a, b *Node) {
	nodes := startKuraCluster(t, 2, func(_ int, o *NodeOptions) {
		o.Env = map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": "3600000"}
	})
	return nodes[0], nodes[1]
}

// smallWriters writes fresh 1 KiB blobs to n, one per BatchUpdateBlobs request (as a build's
// small uploads arrive), from writers goroutines until stop is closed, and reports each blob
// whose OK status arrived to acked. They stop at the first error (a killed node).
type smallWriters struct {
	mu    sync.Mutex
	acked []string // blob hashes, in acknowledgement order
	count atomic.Int64
	wg    sync.WaitGroup
}

func startSmallWriters(ctx context.Context, k *clusterKit, n *Node, writers int, seed uint64) *smallWriters {
	w := &smallWriters{}
	cas := repb.NewContentAddressableStorageClient(k.reapiConn(n))
	var next atomic.Uint64
	for range writers {
		w.wg.Go(func() {
			for ctx.Err() == nil {
				body := make([]byte, 1<<10)
				var cs [32]byte
				binary.LittleEndian.PutUint64(cs[:], seed)
				binary.LittleEndian.PutUint64(cs[8:], next.Add(1))
				_, _ = rand.NewChaCha8(cs).Read(body)
				d := digestOf(body)
				rctx, cancel := context.WithTimeout(ctx, rpcTimeout)
				resp, err := cas.BatchUpdateBlobs(rctx, &repb.BatchUpdateBlobsRequest{InstanceName: batchInstance,
					Requests: []*repb.BatchUpdateBlobsRequest_Request{{Digest: d, Data: body}}})
				cancel()
				if err != nil || codes.Code(resp.GetResponses()[0].GetStatus().GetCode()) != codes.OK {
					return
				}
				w.mu.Lock()
				w.acked = append(w.acked, d.GetHash())
				w.mu.Unlock()
				w.count.Add(1)
			}
		})
	}
	return w
}

func (w *smallWriters) wait() []string {
	w.wg.Wait()
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.acked...)
}

func casKey(hash string) *peerpb.ObjectKey {
	return &peerpb.ObjectKey{Tenant: "default", Namespace: batchInstance, Kind: "cas", Name: hash}
}

// waitHeldLocally polls n's internal plane (FindObjects answers from n's own store, never
// through to a peer) until it holds every blob of hashes.
func waitHeldLocally(t testing.TB, k *clusterKit, n *Node, hashes []string, timeout time.Duration) {
	t.Helper()
	plane := k.internal(n)
	PollUntil(t, timeout, fmt.Sprintf("%s holds all %d acknowledged blobs", n.Name, len(hashes)), func() (bool, string) {
		missing := 0
		for start := 0; start < len(hashes); start += 2000 {
			var keys []*peerpb.ObjectKey
			for _, h := range hashes[start:min(start+2000, len(hashes))] {
				keys = append(keys, casKey(h))
			}
			ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
			resp, err := plane.FindObjects(ctx, &peerpb.FindObjectsRequest{Keys: keys})
			cancel()
			if err != nil {
				return false, err.Error()
			}
			missing += len(keys) - len(resp.GetPresent())
		}
		return missing == 0, fmt.Sprintf("%d missing", missing)
	})
}

// verifyHeldLocally fetches every blob from n's own store over its internal plane and checks
// its bytes against its digest: nothing torn or corrupt is served.
func verifyHeldLocally(t testing.TB, k *clusterKit, n *Node, hashes []string) {
	t.Helper()
	plane := k.internal(n)
	var errs errorList
	forEach(len(hashes), 8, func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		stream, err := plane.FetchObject(ctx, &peerpb.FetchObjectRequest{Key: casKey(hashes[i])})
		if err != nil {
			errs.add(fmt.Errorf("fetch %s: %w", hashes[i], err))
			return
		}
		h := sha256.New()
		for {
			part, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				errs.add(fmt.Errorf("fetch %s: %w", hashes[i], err))
				return
			}
			_, _ = h.Write(part.GetChunk())
		}
		if got := hex.EncodeToString(h.Sum(nil)); got != hashes[i] {
			errs.add(fmt.Errorf("%s on %s reads back with SHA-256 %s", hashes[i], n.Name, got))
		}
	})
	errs.failIfAny(t, "verify blobs on "+n.Name)
}

// histogramTotals sums the sample counts and sums of a histogram family's series on n.
func histogramTotals(t testing.TB, n *Node, name string) (count, sum float64) {
	t.Helper()
	for _, m := range ScrapeMetrics(t, n)[name].GetMetric() {
		count += float64(m.GetHistogram().GetSampleCount())
		sum += m.GetHistogram().GetSampleSum()
	}
	return count, sum
}

// Many small writes on A become readable on B through the batched lane: A's outbox sends
// PushBatch calls (not one PushObject per blob), B serves them from its own store, and no
// sweep had to repair anything.
func TestClusterSmallWritesReplicateInBatches(t *testing.T) {
	t.Parallel()
	a, b := batchNodes(t)
	k := newClusterKit(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	w := startSmallWriters(ctx, k, a, 16, uint64(time.Now().UnixNano()))
	PollUntil(t, 60*time.Second, "3,000 small writes acknowledged on A", func() (bool, string) {
		return w.count.Load() >= 3000, fmt.Sprint(w.count.Load())
	})
	cancel()
	acked := w.wait()
	waitHeldLocally(t, k, b, acked, 60*time.Second)
	verifyHeldLocally(t, k, b, acked)
	waitOutboxEmpty(t, 30*time.Second, a)

	batches, items := histogramTotals(t, a, "kura_replication_batch_items")
	served := metric(t, b, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushBatch", "code": "OK"})
	single := metric(t, b, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushObject"})
	t.Logf("%d blobs: %v PushBatch calls carrying %v objects (%.1f per call), %v PushObject calls", len(acked), batches, items, items/max(batches, 1), single)
	if batches == 0 || served != batches || items < float64(len(acked)) {
		t.Errorf("A sent %v batches with %v objects and B served %v; want every blob batched", batches, items, served)
	}
	if single != 0 {
		t.Errorf("B served %v PushObject calls for small blobs", single)
	}
	if got := metric(t, b, "kura_antientropy_objects_repaired_total", nil); got != 0 {
		t.Errorf("B repaired %v objects by anti-entropy; the outbox must deliver them all", got)
	}
}

// batchesStreaming starts two nodes and 16 writers of small blobs on A, and returns once B
// has applied a few batches from A's outbox; cancel stops the writers.
func batchesStreaming(t *testing.T) (a, b *Node, k *clusterKit, w *smallWriters, cancel context.CancelFunc) {
	a, b = batchNodes(t)
	k = newClusterKit(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // the writers stop with the test whatever happens
	w = startSmallWriters(ctx, k, a, 16, uint64(time.Now().UnixNano()))
	PollUntil(t, 60*time.Second, "B applying batches", func() (bool, string) {
		got := metric(t, b, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushBatch", "code": "OK"})
		return got >= 5 && w.count.Load() >= 1000, fmt.Sprintf("%v batches, %d acknowledged", got, w.count.Load())
	})
	return a, b, k, w, cancel
}

// A receiver killed (SIGKILL) while batches stream to it loses nothing: after its restart A's
// outbox retries what was not acknowledged, B ends up with every blob A acknowledged, whole,
// and serves nothing torn.
func TestCrashReplicationBatchesReceiver(t *testing.T) {
	t.Parallel()
	a, b, k, w, cancel := batchesStreaming(t)
	defer cancel()
	b.Kill()
	// A keeps acknowledging writes while B is down: they wait in its outbox.
	atKill := w.count.Load()
	PollUntil(t, 60*time.Second, "more writes acknowledged on A while B is down", func() (bool, string) {
		return w.count.Load() >= atKill+500, fmt.Sprint(w.count.Load() - atKill)
	})
	b.Restart()
	PollUntil(t, 60*time.Second, "writes acknowledged after B is back", func() (bool, string) {
		return w.count.Load() >= atKill+1000, fmt.Sprint(w.count.Load() - atKill)
	})
	cancel()
	acked := w.wait()
	waitHeldLocally(t, k, b, acked, 120*time.Second)
	verifyHeldLocally(t, k, b, acked)
	waitOutboxEmpty(t, 60*time.Second, a)
	t.Logf("%d blobs acknowledged on A; A's failed pushes while B was down: %v; B's start-up sweep repaired %v",
		len(acked), metric(t, a, "kura_replication_pushes_total", map[string]string{"result": "error"}),
		metric(t, b, "kura_antientropy_objects_repaired_total", nil))
}

// A sender killed (SIGKILL) while its batches stream out loses nothing: its outbox entries
// committed with every acknowledged write, so after its restart it delivers the rest, and B
// (whose sweeps wait an hour and which is not restarted) ends up with every blob A
// acknowledged before the kill, by the outbox alone.
func TestCrashReplicationBatchesSender(t *testing.T) {
	t.Parallel()
	a, b, k, w, cancel := batchesStreaming(t)
	defer cancel()
	repairedBefore := metric(t, b, "kura_antientropy_objects_repaired_total", nil)
	a.Kill()
	cancel()
	acked := w.wait() // every writer has stopped: a write acknowledged was acknowledged before the kill
	a.Restart()
	waitHeldLocally(t, k, b, acked, 120*time.Second)
	verifyHeldLocally(t, k, b, acked)
	verifyHeldLocally(t, k, a, acked)
	waitOutboxEmpty(t, 60*time.Second, a)
	if got := metric(t, b, "kura_antientropy_objects_repaired_total", nil); got != repairedBefore {
		t.Errorf("B repaired %v objects by anti-entropy after A's crash; the outbox must deliver them", got-repairedBefore)
	}
	t.Logf("%d blobs acknowledged on A before the kill, all on B", len(acked))
}
