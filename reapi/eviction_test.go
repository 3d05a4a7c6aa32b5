package reapi

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
)

// TestGetActionResultIsNoHitOnceEvicted runs the ActionCache over a disk store with a small
// budget: a hit refreshes its output, so the eviction pass right after moves it forward and
// the result stays a hit; once nothing uses the output and eviction drops it, the result is
// NOT_FOUND, never a hit Bazel could not download.
func TestGetActionResultIsNoHitOnceEvicted(t *testing.T) {
	var disk *local.Store
	h := newHarness(t, Config{}, func(storage.Store) storage.Store {
		s, err := local.Open(local.Options{
			DataDir:            t.TempDir(),
			Registerer:         prometheus.NewRegistry(),
			Metadata:           meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20},
			DiskBudgetBytes:    1 << 20,
			TargetSegmentBytes: 64 << 10,
			EvictInterval:      10 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		disk = s
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
	ctx := ctxT(t)
	out := bytes.Repeat([]byte("output "), 4<<10)
	outKey := storage.Key{Tenant: testTenant, Namespace: "ci", Kind: storage.KindCAS, Name: digestOf(out).Hash}
	action := digestOf([]byte("the action"))
	upload := func(blobs ...[]byte) {
		t.Helper()
		req := &repb.BatchUpdateBlobsRequest{InstanceName: "ci"}
		for _, b := range blobs {
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: digestOf(b), Data: b})
		}
		resp, err := h.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				t.Fatalf("upload: %v", r.GetStatus())
			}
		}
	}
	upload(out)
	result := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "out", Digest: digestOf(out)}}}
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "ci", ActionDigest: action, ActionResult: result}); err != nil {
		t.Fatal(err)
	}
	get := func() error {
		_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "ci", ActionDigest: action})
		return err
	}
	filler := 0
	fill := func(n int) {
		for range n {
			upload(fmt.Appendf(bytes.Repeat([]byte{byte(filler)}, 60<<10), "%d", filler))
			filler++
		}
	}
	// The hit refreshed the output: a pass over its segment moves it forward.
	if err := get(); err != nil {
		t.Fatalf("complete result: %v", err)
	}
	fill(18) // 1080 KiB more: past the high watermark, the output's segment is retired
	testsupport.WaitFor(t, "eviction within the budget", 10*time.Second, func() bool {
		return disk.DiskStats().EvictedSegments > 0 && disk.DiskStats().SegmentBytes <= 1<<20
	})
	if _, err := disk.Stat(ctx, outKey); err != nil {
		t.Fatalf("the hit's output was evicted right after the hit: %v", err)
	}
	if err := get(); err != nil {
		t.Fatalf("result after the eviction pass: %v", err)
	}
	// Nobody uses it any more (Stat is no use): eviction drops it, and the hit is gone.
	for i := 0; ; i++ {
		if _, err := disk.Stat(ctx, outKey); errors.Is(err, storage.ErrNotFound) {
			break
		}
		if i > 200 {
			t.Fatal("eviction never dropped the unused output")
		}
		fill(1)
	}
	wantCode(t, get(), codes.NotFound)
}
