package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
)

// TestCrashRecoveryByteStream SIGKILLs a node while concurrent clients upload large blobs
// over ByteStream Write (bodies held in memory up to the spill threshold, larger ones
// streamed with O_DIRECT into a staging file that becomes a segment), in chunks of several
// sizes, restarts it and checks that every blob whose WriteResponse arrived reads back
// byte-identical, and that uploads cut off by the crash are absent or whole.
func TestCrashRecoveryByteStream(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})
	conn := plainGRPC(t, node)
	bs := bspb.NewByteStreamClient(conn)
	sizes := []int{100 << 10, 1 << 20, 1<<20 + 1, 3<<20 + 4095}
	chunks := []int{16 << 10, 64<<10 + 3, 1 << 20}
	runCrashKill(t, node, "ByteStream", 4, 20, func(rng *rand.Rand, id int) ([]crashUpload, func(context.Context) ([]bool, error)) {
		size := sizes[rng.IntN(len(sizes))]
		if rng.IntN(3) == 0 {
			size = 8<<20 + rng.IntN(32<<20)
		}
		body := make([]byte, size)
		var cs [32]byte
		binary.LittleEndian.PutUint64(cs[:], rng.Uint64())
		binary.LittleEndian.PutUint64(cs[8:], uint64(id))
		_, _ = rand.NewChaCha8(cs).Read(body)
		sum := sha256.Sum256(body)
		h := hex.EncodeToString(sum[:])
		up := crashUpload{kind: "bazel", url: node.URL() + "/cas/" + h, sha256: sum, size: size}
		resource := fmt.Sprintf("uploads/%s/blobs/%s/%d", uuid.NewString(), h, size)
		chunk := chunks[rng.IntN(len(chunks))]
		return []crashUpload{up}, func(ctx context.Context) ([]bool, error) {
			if err := byteStreamUpload(ctx, bs, resource, body, chunk); err != nil {
				return nil, fmt.Errorf("upload of %d bytes: %w", size, err)
			}
			return []bool{true}, nil
		}
	})
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
