package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// TestCrashRecoveryByteStream SIGKILLs a node while concurrent clients upload large blobs
// over ByteStream Write (bodies held in memory up to the spill threshold, larger ones
// streamed with O_DIRECT into a staging file that becomes a segment), in chunks of several
// sizes, restarts it and checks that every blob whose WriteResponse arrived reads back
// byte-identical, and that uploads cut off by the crash are absent or whole.
func TestCrashRecoveryByteStream(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	bs := bspb.NewByteStreamClient(conn)
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)

	var (
		mu       sync.Mutex
		acked    []crashUpload
		inFlight = map[int]crashUpload{}
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
	sizes := []int{100 << 10, 1 << 20, 1<<20 + 1, 3<<20 + 4095}
	chunks := []int{16 << 10, 64<<10 + 3, 1 << 20}
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			for ctx.Err() == nil {
				id := int(nextID.Add(1))
				size := sizes[rng.IntN(len(sizes))]
				if rng.IntN(3) == 0 {
					size = 8<<20 + rng.IntN(32<<20)
				}
				body := make([]byte, size)
				var cs [32]byte
				binary.LittleEndian.PutUint64(cs[:], seed)
				binary.LittleEndian.PutUint64(cs[8:], uint64(id))
				_, _ = rand.NewChaCha8(cs).Read(body)
				sum := sha256.Sum256(body)
				h := hex.EncodeToString(sum[:])
				up := crashUpload{kind: "bazel", url: node.URL() + "/cas/" + h, sha256: sum, size: size}
				mu.Lock()
				inFlight[id] = up
				mu.Unlock()
				err := byteStreamUpload(ctx, bs, fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), h, size), body, chunks[rng.IntN(len(chunks))])
				mu.Lock()
				if err == nil {
					delete(inFlight, id)
					acked = append(acked, up)
				} else if !killed.Load() {
					delete(inFlight, id)
					failures = append(failures, fmt.Sprintf("upload %d (%d bytes): %v", id, size, err))
				}
				mu.Unlock()
				if err != nil {
					return
				}
				if ackCount.Add(1) >= 20 {
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
		t.Fatal("no ByteStream upload was acknowledged before the kill")
	}
	if inFlightAtKill == 0 {
		t.Fatal("no upload was in flight at SIGKILL; the crash did not interrupt any write")
	}
	node.Restart()
	for _, up := range acked {
		if found, problem := readCrashUpload(up); !found || problem != "" {
			t.Errorf("acknowledged ByteStream upload %s (%d bytes) lost or damaged: found=%v %s", up.url, up.size, found, problem)
		}
	}
	present, absent := 0, 0
	for _, up := range inFlight {
		found, problem := readCrashUpload(up)
		switch {
		case problem != "":
			t.Errorf("cut-off ByteStream upload is torn: %s", problem)
		case found:
			present++
		default:
			absent++
		}
	}
	figure(t, "ByteStream SIGKILL: %d uploads acknowledged and intact; %d in flight at the kill: %d complete, %d absent",
		len(acked), inFlightAtKill, present, absent)
}

// byteStreamUpload writes body under resource in chunks of chunk bytes and checks the
// committed size (the whole body: uncompressed uploads only).
func byteStreamUpload(ctx context.Context, bs bspb.ByteStreamClient, resource string, body []byte, chunk int) error {
	stream, err := bs.Write(ctx)
	if err != nil {
		return err
	}
	for off := 0; off < len(body); off += chunk {
		end := min(off+chunk, len(body))
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: body[off:end], FinishWrite: end == len(body)}
		if off == 0 {
			req.ResourceName = resource
		}
		if err := stream.Send(req); err != nil {
			break // the server answered early or failed: CloseAndRecv says which
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetCommittedSize() != int64(len(body)) {
		return fmt.Errorf("committed %d of %d bytes", resp.GetCommittedSize(), len(body))
	}
	return nil
}
