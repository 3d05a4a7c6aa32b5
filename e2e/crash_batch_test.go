package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
)

// TestCrashRecoveryBatchUpdate SIGKILLs a node while concurrent clients send BatchUpdateBlobs
// requests (which the node commits as one segment append and one metadata commit per
// request), restarts it and checks that every item whose OK status arrived reads back
// byte-identical, and that items of requests cut off by the crash are absent or whole.
func TestCrashRecoveryBatchUpdate(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{})
	conn := plainGRPC(t, node)
	cas := repb.NewContentAddressableStorageClient(conn)
	runCrashKill(t, node, "BatchUpdateBlobs", 8, 100, func(rng *rand.Rand, id int) ([]crashUpload, func(context.Context) ([]bool, error)) {
		req := &repb.BatchUpdateBlobsRequest{}
		var ups []crashUpload
		seed := rng.Uint64()
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
		return ups, func(ctx context.Context) ([]bool, error) {
			resp, err := cas.BatchUpdateBlobs(ctx, req)
			if err != nil {
				return nil, err
			}
			ok := make([]bool, len(ups))
			for j, r := range resp.GetResponses() {
				ok[j] = r.GetStatus().GetCode() == int32(codes.OK)
			}
			return ok, nil
		}
	})
}
