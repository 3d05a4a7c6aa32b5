package reliability

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// evictionSoak is the shared state of the soak's clients.
type evictionSoak struct {
	t      *testing.T
	node   *harness.Node
	client *http.Client
	cas    repb.ContentAddressableStorageClient
	ac     repb.ActionCacheClient
	seed   uint64
	nextID atomic.Uint64

	mu      sync.Mutex
	written map[string]blobSpec // every blob ever acknowledged, by digest
	actions []soakAction        // every action result ever acknowledged

	// The soak's figures and counters.
	badBodies      atomic.Int64 // 200 answers whose body was short, long or other bytes
	hotReads       atomic.Int64
	hotMisses      atomic.Int64 // 404: evicted, uploaded again as a build would
	acHits         atomic.Int64
	acMisses       atomic.Int64
	acIncomplete   atomic.Int64 // hits whose outputs FindMissingBlobs reported missing
	refused        atomic.Int64 // writes refused for lack of room (507) — allowed, reported
	writeFailures  atomic.Int64 // any other failed write
	bytesWritten   atomic.Int64
	crashing       atomic.Bool // the node is being killed: failed writes are expected
	usageSamples   []float64
	usageSamplesMu sync.Mutex
}

// soakAction is an action result the soak stored: its digest and its outputs' digests.
type soakAction struct {
	digest  *repb.Digest
	outputs []*repb.Digest
}

// TestReliabilityEvictionRace (item 5) keeps a node with a small disk budget at 100 % while
// writers fill it with new blobs, readers hammer a hot set (uploading again what eviction took,
// as a build does after a miss), and REAPI clients store action results with outputs in the CAS
// and look them up. Eviction retires segments all along; no reader may get a truncated or
// wrong body, a GetActionResult hit must never name an output FindMissingBlobs calls missing,
// and after the soak every blob the node vouches for must read whole. Short mode 20 s on a
// 16 MiB budget, long mode 5 min on 64 MiB.
func TestReliabilityEvictionRace(t *testing.T) {
	budget := figures.Pick[int64](16<<20, 64<<20)
	soakFor := figures.Pick(20*time.Second, 5*time.Minute)
	seed := itemSeed(t)
	node := harness.StartNode(t, harness.NodeOptions{Env: map[string]string{"KURA_DISK_BUDGET_BYTES": strconv.FormatInt(budget, 10)}})
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s := &evictionSoak{t: t, node: node, client: node.Client(time.Minute), cas: repb.NewContentAddressableStorageClient(conn),
		ac: repb.NewActionCacheClient(conn), seed: seed, written: map[string]blobSpec{}}
	defer s.client.CloseIdleConnections()

	rng := rand.New(rand.NewPCG(seed, 5))
	hot := make([]blobSpec, 48)
	hotDigests := make([]string, len(hot))
	for i := range hot {
		hot[i] = s.newSpec(rng, 4<<10, 256<<10)
		hotDigests[i] = hot[i].digest()
	}
	retiredBefore := scrapeSum(t, node, "kura_storage_eviction_segments_retired_total", nil)

	ctx, cancel := context.WithTimeout(context.Background(), soakFor)
	defer cancel()
	var wg sync.WaitGroup
	run := func(stream uint64, f func(ctx context.Context, rng *rand.Rand)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx, rand.New(rand.NewPCG(seed, stream)))
		}()
	}
	for w := range 2 {
		run(100+uint64(w), s.coldWriter)
	}
	for r := range 3 {
		run(200+uint64(r), func(ctx context.Context, rng *rand.Rand) { s.hotReader(ctx, rng, hot, hotDigests) })
	}
	run(300, s.actionWriter)
	for r := range 2 {
		run(400+uint64(r), s.actionReader)
	}
	run(500, s.sampleUsage(budget))
	wg.Wait()

	retired := scrapeSum(t, node, "kura_storage_eviction_segments_retired_total", nil) - retiredBefore
	// Let the background evictor finish its pass, so what the node vouches for next stays.
	settleEviction(t, node, budget)
	orphans := s.checkEveryBlob()
	incompleteAfter := s.checkEveryAction()

	// Eviction's commits must also hold across a crash: writers fill the budget again, the
	// node is killed in the middle (retiring segments as it goes), and after the restart
	// everything it vouches for must still read whole.
	rng2 := rand.New(rand.NewPCG(seed, 6))
	crashCtx, crashCancel := context.WithCancel(context.Background())
	var cwg sync.WaitGroup
	for w := range 2 {
		cwg.Add(1)
		go func() {
			defer cwg.Done()
			s.coldWriter(crashCtx, rand.New(rand.NewPCG(seed, 600+uint64(w))))
		}()
	}
	killAt := time.Duration(500+rng2.IntN(2500)) * time.Millisecond
	time.Sleep(killAt) // the crash moment is random by design; nothing is waited for
	s.crashing.Store(true)
	node.Kill()
	crashCancel()
	cwg.Wait()
	s.crashing.Store(false)
	ready := node.Restart()
	settleEviction(t, node, budget)
	orphansAfterCrash := s.checkEveryBlob()
	incompleteAfterCrash := s.checkEveryAction()

	figures.Check(t, 5, "truncated or mismatched bodies", s.badBodies.Load(), 0)
	figures.Check(t, 5, "metadata entries without bytes", orphans, 0)
	figures.Check(t, 5, "metadata entries without bytes after kill -9 mid-eviction", orphansAfterCrash, 0)
	figures.Check(t, 5, "action results whose outputs are missing", s.acIncomplete.Load()+incompleteAfter+incompleteAfterCrash, 0)
	t.Logf("killed %s after %s of refilling; ready again in %s", node.Name, killAt, ready)
	figures.Report(t, 5, "disk budget use during the soak", s.usageSummary(budget))
	figures.Report(t, 5, "soak traffic", fmt.Sprintf("%s: %d MiB written, %d segments retired, %d hot reads (%d misses), %d action lookups (%d hits), %d writes refused (507)",
		soakFor, s.bytesWritten.Load()>>20, int(retired), s.hotReads.Load(), s.hotMisses.Load(), s.acHits.Load()+s.acMisses.Load(), s.acHits.Load(), s.refused.Load()))
	if retired < 2 {
		t.Errorf("only %v segments were retired: the soak did not keep the budget full", retired)
	}
	if n := s.writeFailures.Load(); n > 0 {
		t.Errorf("%d writes failed with something other than 507", n)
	}
	if s.acHits.Load() == 0 {
		t.Errorf("no GetActionResult was a hit: the action cache was not exercised")
	}
}

// newSpec draws a blob of a size in [lo, hi).
func (s *evictionSoak) newSpec(rng *rand.Rand, lo, hi int64) blobSpec {
	return blobSpec{seed: s.seed, id: s.nextID.Add(1), size: lo + rng.Int64N(hi-lo)}
}

// remember records an acknowledged blob.
func (s *evictionSoak) remember(digest string, spec blobSpec) {
	s.mu.Lock()
	s.written[digest] = spec
	s.mu.Unlock()
	s.bytesWritten.Add(spec.size)
}

// put uploads spec over the Bazel HTTP cache; false when it was not stored.
func (s *evictionSoak) put(ctx context.Context, spec blobSpec, digest string) bool {
	code, err := putBazelCAS(ctx, s.client, s.node, spec, digest)
	switch {
	case ctx.Err() != nil, s.crashing.Load():
		return false
	case err == nil && code == http.StatusOK:
		s.remember(digest, spec)
		return true
	case err == nil && code == http.StatusInsufficientStorage:
		s.refused.Add(1)
	default:
		s.writeFailures.Add(1)
		s.t.Errorf("PUT %s (%d bytes): %d %v", digest, spec.size, code, err)
	}
	return false
}

// coldWriter uploads new blobs (16 KiB – 512 KiB, and now and then a 2–4 MiB one that goes
// to a segment of its own) as fast as the node takes them, keeping the budget full.
func (s *evictionSoak) coldWriter(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		spec := s.newSpec(rng, 16<<10, 512<<10)
		if rng.IntN(20) == 0 {
			spec = s.newSpec(rng, 2<<20, 4<<20)
		}
		s.put(ctx, spec, spec.digest())
	}
}

// hotReader reads the hot set; a 200 must carry exactly the bytes written, a 404 (evicted)
// is answered by uploading the blob again.
func (s *evictionSoak) hotReader(ctx context.Context, rng *rand.Rand, hot []blobSpec, digests []string) {
	for ctx.Err() == nil {
		i := rng.IntN(len(hot))
		got, err := getCompared(ctx, s.client, bazelCASURL(s.node, digests[i]), hot[i])
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.t.Errorf("GET hot blob %s: %v", digests[i], err)
			return
		}
		s.hotReads.Add(1)
		switch {
		case got.status == http.StatusNotFound:
			s.hotMisses.Add(1)
			s.put(ctx, hot[i], digests[i])
		case !got.whole(hot[i].size):
			s.badBodies.Add(1)
			s.t.Errorf("GET hot blob %s: status %d, %d of %d bytes, %d differ, stream error %v",
				digests[i], got.status, got.received, hot[i].size, got.badBytes, got.readErr)
		}
	}
}

// actionWriter stores action results: two output files and a stdout blob go to the CAS with
// BatchUpdateBlobs, then UpdateActionResult names them.
func (s *evictionSoak) actionWriter(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		req := &repb.BatchUpdateBlobsRequest{}
		var outputs []*repb.Digest
		specs := map[string]blobSpec{}
		for range 3 {
			spec := s.newSpec(rng, 1<<10, 64<<10)
			data := spec.bytes()
			sum := sha256.Sum256(data)
			d := &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: spec.size}
			specs[d.Hash] = spec
			outputs = append(outputs, d)
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: d, Data: data})
		}
		resp, err := rpc(ctx, func(c context.Context) (*repb.BatchUpdateBlobsResponse, error) { return s.cas.BatchUpdateBlobs(c, req) })
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.writeFailures.Add(1)
			s.t.Errorf("BatchUpdateBlobs: %v", err)
			return
		}
		stored := true
		for _, r := range resp.GetResponses() {
			switch codes.Code(r.GetStatus().GetCode()) {
			case codes.OK:
				s.remember(r.GetDigest().GetHash(), specs[r.GetDigest().GetHash()])
			case codes.ResourceExhausted:
				s.refused.Add(1)
				stored = false
			default:
				s.writeFailures.Add(1)
				s.t.Errorf("BatchUpdateBlobs item %s: %v", r.GetDigest().GetHash(), r.GetStatus())
				stored = false
			}
		}
		if !stored {
			continue
		}
		actionSum := sha256.Sum256(fmt.Appendf(nil, "action %d %d", s.seed, s.nextID.Add(1)))
		action := &repb.Digest{Hash: hex.EncodeToString(actionSum[:]), SizeBytes: 64}
		result := &repb.ActionResult{
			OutputFiles:  []*repb.OutputFile{{Path: "out/a", Digest: outputs[0]}, {Path: "out/b", Digest: outputs[1]}},
			StdoutDigest: outputs[2],
		}
		_, err = rpc(ctx, func(c context.Context) (*repb.ActionResult, error) {
			return s.ac.UpdateActionResult(c, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: result})
		})
		switch {
		case ctx.Err() != nil:
			return
		case status.Code(err) == codes.ResourceExhausted:
			s.refused.Add(1)
		case err != nil:
			s.writeFailures.Add(1)
			s.t.Errorf("UpdateActionResult: %v", err)
			return
		default:
			s.mu.Lock()
			s.actions = append(s.actions, soakAction{digest: action, outputs: outputs})
			s.mu.Unlock()
		}
	}
}

// actionReader looks up recent action results as a build does; on a hit it asks
// FindMissingBlobs about the outputs the result names, which must all be present.
func (s *evictionSoak) actionReader(ctx context.Context, rng *rand.Rand) {
	for ctx.Err() == nil {
		s.mu.Lock()
		n := len(s.actions)
		var a soakAction
		if n > 0 {
			a = s.actions[max(0, n-1-rng.IntN(min(n, 200)))]
		}
		s.mu.Unlock()
		if n == 0 {
			time.Sleep(10 * time.Millisecond) // wait for the writer's first result
			continue
		}
		var missing []string
		var hit bool
		_, err := rpc(ctx, func(c context.Context) (struct{}, error) {
			var err error
			missing, hit, err = s.lookUpAction(c, a)
			return struct{}{}, err
		})
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.t.Errorf("look up action %s: %v", a.digest.GetHash(), err)
			return
		}
		if !hit {
			s.acMisses.Add(1)
			continue
		}
		s.acHits.Add(1)
		if len(missing) > 0 {
			s.acIncomplete.Add(1)
			s.t.Errorf("GetActionResult %s was a hit, but FindMissingBlobs reports its outputs %v missing", a.digest.GetHash(), missing)
		}
	}
}

// rpc runs one REAPI call of the soak: the soak's end (ctx) stops the loops between calls,
// not a call in flight. (kura learns a call's deadline from the grpc-timeout header and may
// end it a moment before the client's context reports it done, which would read as a failure
// of the call.)
func rpc[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return call(c)
}

// lookUpAction is GetActionResult followed, on a hit, by FindMissingBlobs over the outputs the
// answer names.
func (s *evictionSoak) lookUpAction(ctx context.Context, a soakAction) (missing []string, hit bool, err error) {
	ar, err := s.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: a.digest})
	if status.Code(err) == codes.NotFound {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	ds := []*repb.Digest{ar.GetStdoutDigest()}
	for _, f := range ar.GetOutputFiles() {
		ds = append(ds, f.GetDigest())
	}
	fm, err := s.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{BlobDigests: ds})
	if err != nil {
		return nil, true, err
	}
	for _, d := range fm.GetMissingBlobDigests() {
		missing = append(missing, d.GetHash())
	}
	return missing, true, nil
}

// sampleUsage records the segment bytes against the budget every 250 ms.
func (s *evictionSoak) sampleUsage(budget int64) func(ctx context.Context, rng *rand.Rand) {
	return func(ctx context.Context, _ *rand.Rand) {
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			used := scrapeSum(s.t, s.node, "kura_storage_segment_bytes", nil)
			s.usageSamplesMu.Lock()
			s.usageSamples = append(s.usageSamples, used/float64(budget))
			s.usageSamplesMu.Unlock()
		}
	}
}

func (s *evictionSoak) usageSummary(budget int64) string {
	s.usageSamplesMu.Lock()
	defer s.usageSamplesMu.Unlock()
	if len(s.usageSamples) == 0 {
		return "no samples"
	}
	v := append([]float64(nil), s.usageSamples...)
	sort.Float64s(v)
	// The first samples are the fill-up; the median says where the soak held the disk.
	return fmt.Sprintf("p50 %.0f %%, max %.0f %% of %d MiB (%d samples)", v[len(v)/2]*100, v[len(v)-1]*100, budget>>20, len(v))
}

// settleEviction waits until the background evictor has stopped retiring segments and usage is
// within the budget.
func settleEviction(t *testing.T, node *harness.Node, budget int64) {
	t.Helper()
	last := -1.0
	harness.PollUntil(t, 60*time.Second, "eviction settled within the budget", func() (bool, string) {
		retired := scrapeSum(t, node, "kura_storage_eviction_segments_retired_total", nil)
		used := scrapeSum(t, node, "kura_storage_segment_bytes", nil)
		stable := retired == last
		last = retired
		if stable && used <= float64(budget) {
			return true, ""
		}
		time.Sleep(500 * time.Millisecond)
		return false, fmt.Sprintf("%v segment bytes, %v segments retired", used, retired)
	})
}

// checkEveryBlob asks FindMissingBlobs about every blob ever acknowledged and reads each one
// the node says it holds: each must come back whole. It returns how many did not.
func (s *evictionSoak) checkEveryBlob() int {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	digests := make([]string, 0, len(s.written))
	for d := range s.written {
		digests = append(digests, d)
	}
	sort.Strings(digests)
	present := map[string]blobSpec{}
	for i := 0; i < len(digests); i += 1000 {
		req := &repb.FindMissingBlobsRequest{}
		for _, d := range digests[i:min(i+1000, len(digests))] {
			req.BlobDigests = append(req.BlobDigests, &repb.Digest{Hash: d, SizeBytes: s.written[d].size})
		}
		resp, err := s.cas.FindMissingBlobs(ctx, req)
		if err != nil {
			s.t.Fatalf("FindMissingBlobs after the soak: %v", err)
		}
		gone := map[string]bool{}
		for _, d := range resp.GetMissingBlobDigests() {
			gone[d.GetHash()] = true
		}
		for _, d := range req.BlobDigests {
			if !gone[d.GetHash()] {
				present[d.GetHash()] = s.written[d.GetHash()]
			}
		}
	}
	orphans := 0
	var mu sync.Mutex
	forEachObject(ctx, s.t, present, func(digest string, spec blobSpec) {
		got, err := getCompared(ctx, s.client, bazelCASURL(s.node, digest), spec)
		if err == nil && got.whole(spec.size) {
			return
		}
		mu.Lock()
		orphans++
		mu.Unlock()
		s.t.Errorf("FindMissingBlobs vouches for %s, but GET gives status %d with %d of %d bytes (%v %v)", digest, got.status, got.received, spec.size, err, got.readErr)
	})
	s.t.Logf("after the soak: %d of %d blobs written are still stored, every one read back", len(present), len(digests))
	return orphans
}

// checkEveryAction looks up every action result stored: each hit's outputs must be present.
func (s *evictionSoak) checkEveryAction() int64 {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var incomplete, hits int64
	for _, a := range s.actions {
		missing, hit, err := s.lookUpAction(ctx, a)
		if err != nil {
			s.t.Fatalf("look up action %s after the soak: %v", a.digest.GetHash(), err)
		}
		if hit {
			hits++
		}
		if len(missing) > 0 {
			incomplete++
			s.t.Errorf("after the soak, GetActionResult %s is a hit but outputs %v are missing", a.digest.GetHash(), missing)
		}
	}
	s.t.Logf("after the soak: %d of %d action results are still hits", hits, len(s.actions))
	return incomplete
}
