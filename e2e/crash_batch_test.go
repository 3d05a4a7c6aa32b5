package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

// TestCrashRecoveryBatchUpdate SIGKILLs a node while concurrent clients send BatchUpdateBlobs
// requests (which the node commits as one segment append and one metadata commit per
// request), restarts it and checks that every item whose OK status arrived reads back
// byte-identical, and that items of requests cut off by the crash are absent or whole.
func TestCrashRecoveryBatchUpdate(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	cas := repb.NewContentAddressableStorageClient(conn)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	var (
		mu       sync.Mutex
		acked    []crashUpload
		inFlight = map[int][]crashUpload{}
		nextID   atomic.Int64
		ackCount atomic.Int64
		killed   atomic.Bool
		failures []string
		wg       sync.WaitGroup
	)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	enough := make(chan struct{})
	var enoughOnce sync.Once
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for ctx.Err() == nil {
				id := int(nextID.Add(1))
				req := &repb.BatchUpdateBlobsRequest{}
				var ups []crashUpload
				for j := range 50 {
					body := make([]byte, 100+rng.IntN(8<<10))
					var cs [32]byte
					binary.LittleEndian.PutUint64(cs[:], seed)
					binary.LittleEndian.PutUint64(cs[8:], uint64(id))
					binary.LittleEndian.PutUint64(cs[16:], uint64(j))
					_, _ = rand.NewChaCha8(cs).Read(body)
					sum := sha256.Sum256(body)
					h := hex.EncodeToString(sum[:])
					req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: &repb.Digest{Hash: h, SizeBytes: int64(len(body))}, Data: body})
					ups = append(ups, crashUpload{kind: "bazel", url: node.URL() + "/cas/" + h, sha256: sum, size: len(body)})
				}
				mu.Lock()
				inFlight[id] = ups
				mu.Unlock()
				resp, err := cas.BatchUpdateBlobs(ctx, req)
				mu.Lock()
				if err == nil {
					delete(inFlight, id)
					for j, r := range resp.GetResponses() {
						if r.GetStatus().GetCode() == int32(codes.OK) {
							acked = append(acked, ups[j])
						} else if !killed.Load() {
							failures = append(failures, r.GetStatus().String())
						}
					}
				} else if !killed.Load() {
					delete(inFlight, id)
					failures = append(failures, err.Error())
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if ackCount.Add(1) >= 100 {
					enoughOnce.Do(func() { close(enough) })
				}
			}
		}()
	}
	select {
	case <-enough:
	case <-time.After(20 * time.Second):
	}
	mu.Lock()
	killed.Store(true)
	inFlightAtKill := len(inFlight)
	mu.Unlock()
	node.Kill()
	cancel()
	wg.Wait()

	mu.Lock()
	defer mu.Unlock()
	for i, f := range failures {
		if i == 10 {
			break
		}
		t.Errorf("before the kill: %s", f)
	}
	if len(acked) == 0 {
		t.Fatal("no batch item was acknowledged before the kill")
	}
	node.Restart()
	for _, up := range acked {
		if found, problem := readCrashUpload(up); !found || problem != "" {
			t.Fatalf("acknowledged batch item %s lost or damaged: found=%v %s", up.url, found, problem)
		}
	}
	present, absent := 0, 0
	for _, ups := range inFlight {
		for _, up := range ups {
			found, problem := readCrashUpload(up)
			switch {
			case problem != "":
				t.Errorf("cut-off batch item is torn: %s", problem)
			case found:
				present++
			default:
				absent++
			}
		}
	}
	figure(t, "BatchUpdateBlobs SIGKILL: %d items acknowledged and intact; %d requests in flight at the kill: %d items complete, %d absent",
		len(acked), inFlightAtKill, present, absent)
}
