// Command reapi is a load generator for a Kura REAPI endpoint (or any REAPI v2 cache). It runs
// each scenario for a fixed time at each concurrency level and prints, per scenario, the
// request rate, the throughput and the p50/p99 request latency; given the server's PID it also
// reports the server's peak resident memory (VmHWM).
//
//	go run ./bench/reapi -addr 127.0.0.1:50051 -duration 10s -concurrency 16,64 [-pid N]
//
// See bench/README.md.
package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "reapi bench:", err)
		os.Exit(1)
	}
}

type options struct {
	addr        string
	instance    string
	duration    time.Duration
	concurrency []int
	scenarios   []string
	batch       int
	conns       int
	chunk       int
	pid         int
}

func run() error {
	var o options
	var conc, scen string
	flag.StringVar(&o.addr, "addr", "127.0.0.1:50051", "REAPI gRPC address (host:port)")
	flag.StringVar(&o.instance, "instance", "bench", "instance_name to use (its own namespace)")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "how long each run starts new requests (requests in flight then finish)")
	flag.StringVar(&conc, "concurrency", "16,64", "comma-separated numbers of concurrent workers")
	flag.StringVar(&scen, "scenarios", strings.Join(scenarioNames(), ","), "comma-separated scenarios to run")
	flag.IntVar(&o.batch, "batch", 100, "blobs per BatchUpdateBlobs/BatchReadBlobs request")
	flag.IntVar(&o.conns, "conns", 4, "gRPC connections the workers share (round robin)")
	flag.IntVar(&o.chunk, "chunk", 1<<20, "ByteStream.Write chunk size in bytes")
	flag.IntVar(&o.pid, "pid", 0, "server PID: report its peak RSS (VmHWM) from /proc/<pid>/status")
	flag.Parse()
	for _, f := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-concurrency: %q is not a positive number", f)
		}
		o.concurrency = append(o.concurrency, n)
	}
	for _, s := range strings.Split(scen, ",") {
		s = strings.TrimSpace(s)
		if _, ok := scenarios[s]; !ok {
			return fmt.Errorf("-scenarios: unknown scenario %q (known: %s)", s, strings.Join(scenarioNames(), ", "))
		}
		o.scenarios = append(o.scenarios, s)
	}
	if o.batch < 1 || o.conns < 1 || o.chunk < 1 || o.duration <= 0 {
		return errors.New("-batch, -conns, -chunk and -duration must be positive")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	b, err := newBench(o)
	if err != nil {
		return err
	}
	defer b.close()
	if _, err := repb.NewCapabilitiesClient(b.conns[0]).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: o.instance}); err != nil {
		return fmt.Errorf("GetCapabilities on %s: %w", o.addr, err)
	}
	if o.pid > 0 {
		if _, _, err := peakRSS(o.pid); err != nil {
			return err
		}
	}

	fmt.Printf("REAPI bench against %s, instance %q, %s per run, %d connection(s)\n\n", o.addr, o.instance, o.duration, o.conns)
	const row = "%-18s %5s %9s %9s %10s %9s %10s %10s %7s\n"
	fmt.Printf(row, "scenario", "conc", "requests", "req/s", "items/s", "MiB/s", "p50", "p99", "errors")
	for _, name := range o.scenarios {
		for _, c := range o.concurrency {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r, err := b.runScenario(ctx, name, c)
			if err != nil {
				return fmt.Errorf("%s at concurrency %d: %w", name, c, err)
			}
			fmt.Printf(row, name, strconv.Itoa(c), strconv.FormatInt(r.requests, 10),
				fmt.Sprintf("%.0f", r.perSecond(r.requests)), fmt.Sprintf("%.0f", r.perSecond(r.items)),
				fmt.Sprintf("%.1f", r.perSecond(r.bytes)/(1<<20)),
				fmtDur(r.percentile(0.50)), fmtDur(r.percentile(0.99)), strconv.FormatInt(r.errors, 10))
			if r.firstErr != nil {
				fmt.Printf("  first error: %v\n", r.firstErr)
			}
		}
	}
	if o.pid > 0 {
		hwm, rss, err := peakRSS(o.pid)
		if err != nil {
			return err
		}
		fmt.Printf("\nserver PID %d: peak RSS (VmHWM) %s, current RSS %s\n", o.pid, hwm, rss)
	}
	return nil
}

// scenario prepares shared state (untimed) and returns the per-worker operation. An op
// returns the items and bytes it moved.
type scenario struct {
	setup func(b *bench, ctx context.Context) (op, error)
}

type op func(ctx context.Context, w *worker) (items, bytes int64, err error)

var scenarios = map[string]scenario{
	"batch-update-1k":   {func(b *bench, ctx context.Context) (op, error) { return b.batchUpdate(1 << 10), nil }},
	"batch-read-1k":     {func(b *bench, ctx context.Context) (op, error) { return b.batchRead(ctx, 1<<10) }},
	"batch-update-16k":  {func(b *bench, ctx context.Context) (op, error) { return b.batchUpdate(16 << 10), nil }},
	"batch-read-16k":    {func(b *bench, ctx context.Context) (op, error) { return b.batchRead(ctx, 16<<10) }},
	"bs-write-4m":       {func(b *bench, ctx context.Context) (op, error) { return b.bsWrite(4 << 20), nil }},
	"bs-read-4m":        {func(b *bench, ctx context.Context) (op, error) { return b.bsRead(ctx, 4<<20, 16) }},
	"bs-write-64m":      {func(b *bench, ctx context.Context) (op, error) { return b.bsWrite(64 << 20), nil }},
	"bs-read-64m":       {func(b *bench, ctx context.Context) (op, error) { return b.bsRead(ctx, 64<<20, 2) }},
	"find-missing-1000": {func(b *bench, ctx context.Context) (op, error) { return b.findMissing(ctx) }},
	"ac-update":         {func(b *bench, ctx context.Context) (op, error) { return b.acUpdate(ctx) }},
	"ac-get":            {func(b *bench, ctx context.Context) (op, error) { return b.acGet(ctx) }},
}

// scenarioNames lists the scenarios in the order they run by default.
func scenarioNames() []string {
	return []string{
		"batch-update-1k", "batch-read-1k", "batch-update-16k", "batch-read-16k",
		"bs-write-4m", "bs-read-4m", "bs-write-64m", "bs-read-64m",
		"find-missing-1000", "ac-update", "ac-get",
	}
}

type bench struct {
	o     options
	conns []*grpc.ClientConn
	nonce [8]byte // makes this run's generated blobs unique across runs
	seq   atomic.Uint64
}

func newBench(o options) (*bench, error) {
	b := &bench{o: o}
	if _, err := rand.Read(b.nonce[:]); err != nil {
		return nil, fmt.Errorf("random nonce: %w", err)
	}
	for range o.conns {
		conn, err := grpc.NewClient(o.addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
		if err != nil {
			b.close()
			return nil, fmt.Errorf("connect to %s: %w", o.addr, err)
		}
		b.conns = append(b.conns, conn)
	}
	return b, nil
}

func (b *bench) close() {
	for _, c := range b.conns {
		_ = c.Close()
	}
}

// worker is one concurrent client loop with its own connection, buffers and latencies.
type worker struct {
	id        int
	cas       repb.ContentAddressableStorageClient
	ac        repb.ActionCacheClient
	bs        bspb.ByteStreamClient
	rng       *mrand.Rand
	gen       map[int]*blobGen // per blob size
	latencies []time.Duration
}

type result struct {
	requests, items, bytes, errors int64
	elapsed                        time.Duration
	latencies                      []time.Duration
	firstErr                       error
}

func (r *result) perSecond(n int64) float64 { return float64(n) / r.elapsed.Seconds() }

func (r *result) percentile(p float64) time.Duration {
	if len(r.latencies) == 0 {
		return 0
	}
	return r.latencies[min(len(r.latencies)-1, int(p*float64(len(r.latencies))))]
}

// runScenario starts concurrency workers; each starts requests until the duration is over and
// finishes the one in flight, so the slowest scenarios (64 MiB uploads) still yield samples.
// Throughput is measured over the wall time until the last worker is done.
func (b *bench) runScenario(ctx context.Context, name string, concurrency int) (*result, error) {
	do, err := scenarios[name].setup(b, ctx)
	if err != nil {
		return nil, fmt.Errorf("set up: %w", err)
	}
	var stopped atomic.Bool
	timer := time.AfterFunc(b.o.duration, func() { stopped.Store(true) })
	defer timer.Stop()
	res := &result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for i := range concurrency {
		conn := b.conns[i%len(b.conns)]
		w := &worker{
			id: i, cas: repb.NewContentAddressableStorageClient(conn), ac: repb.NewActionCacheClient(conn),
			bs: bspb.NewByteStreamClient(conn), rng: mrand.New(mrand.NewPCG(uint64(i), b.seq.Add(1))), gen: map[int]*blobGen{},
		}
		wg.Go(func() {
			var items, bytes, errs int64
			var firstErr error
			for !stopped.Load() && ctx.Err() == nil {
				t0 := time.Now()
				n, nb, err := do(ctx, w)
				if err != nil {
					errs++
					if firstErr == nil {
						firstErr = err
					}
					continue
				}
				w.latencies = append(w.latencies, time.Since(t0))
				items += n
				bytes += nb
			}
			mu.Lock()
			defer mu.Unlock()
			res.requests += int64(len(w.latencies))
			res.items += items
			res.bytes += bytes
			res.errors += errs
			res.latencies = append(res.latencies, w.latencies...)
			if res.firstErr == nil {
				res.firstErr = firstErr
			}
		})
	}
	wg.Wait()
	res.elapsed = time.Since(start)
	slices.Sort(res.latencies)
	return res, nil
}

// blobGen makes unique blobs of one size cheaply: the body is fixed random bytes except the
// last 32, which carry a unique tag, and the SHA-256 state after the fixed part is saved, so
// each new digest costs hashing 32 bytes instead of the whole blob.
type blobGen struct {
	buf    []byte
	prefix []byte // marshalled sha256 state after buf[:len(buf)-32]
}

func newBlobGen(size int, seed uint64) *blobGen {
	buf := make([]byte, size)
	r := mrand.New(mrand.NewPCG(seed, uint64(size)))
	for i := 0; i+8 <= size; i += 8 {
		binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
	}
	h := sha256.New()
	h.Write(buf[:size-32])
	state, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err)) // the standard library's sha256 always marshals
	}
	return &blobGen{buf: buf, prefix: state}
}

// next rewrites the tag and returns the blob (valid until the next call) and its digest.
func (g *blobGen) next(b *bench, worker int) ([]byte, *repb.Digest) {
	tag := g.buf[len(g.buf)-32:]
	copy(tag, b.nonce[:])
	binary.LittleEndian.PutUint64(tag[8:], uint64(worker))
	binary.LittleEndian.PutUint64(tag[16:], b.seq.Add(1))
	binary.LittleEndian.PutUint64(tag[24:], 0x6b757261) // "kura"
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(g.prefix); err != nil {
		panic(fmt.Sprintf("sha256 state: %v", err))
	}
	h.Write(tag)
	return g.buf, &repb.Digest{Hash: hex.EncodeToString(h.Sum(nil)), SizeBytes: int64(len(g.buf))}
}

func (w *worker) blobs(size int) *blobGen {
	g, ok := w.gen[size]
	if !ok {
		g = newBlobGen(size, uint64(w.id)+1)
		w.gen[size] = g
	}
	return g
}

// batchUpdate uploads b.o.batch new blobs of size per request.
func (b *bench) batchUpdate(size int) op {
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		req := &repb.BatchUpdateBlobsRequest{InstanceName: b.o.instance}
		g := w.blobs(size)
		for range b.o.batch {
			data, d := g.next(b, w.id)
			req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: d, Data: slices.Clone(data)})
		}
		resp, err := w.cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return 0, 0, err
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return 0, 0, fmt.Errorf("item %s: %s", r.GetDigest().GetHash(), r.GetStatus().GetMessage())
			}
		}
		return int64(b.o.batch), int64(b.o.batch * size), nil
	}
}

// upload stores count fresh blobs of size (untimed setup) and returns their digests.
func (b *bench) upload(ctx context.Context, size, count int) ([]*repb.Digest, error) {
	g := newBlobGen(size, 1_000_000+uint64(size))
	cas := repb.NewContentAddressableStorageClient(b.conns[0])
	bs := bspb.NewByteStreamClient(b.conns[0])
	var ds []*repb.Digest
	var req *repb.BatchUpdateBlobsRequest
	flush := func() error {
		if req == nil {
			return nil
		}
		resp, err := cas.BatchUpdateBlobs(ctx, req)
		if err != nil {
			return fmt.Errorf("upload the data set: %w", err)
		}
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return fmt.Errorf("upload the data set: %s", r.GetStatus().GetMessage())
			}
		}
		req = nil
		return nil
	}
	for range count {
		data, d := g.next(b, -1)
		ds = append(ds, d)
		if size > 1<<20 {
			if err := writeBlob(ctx, bs, b.o.instance, data, d, b.o.chunk); err != nil {
				return nil, fmt.Errorf("upload the data set: %w", err)
			}
			continue
		}
		if req == nil {
			req = &repb.BatchUpdateBlobsRequest{InstanceName: b.o.instance}
		}
		req.Requests = append(req.Requests, &repb.BatchUpdateBlobsRequest_Request{Digest: d, Data: slices.Clone(data)})
		if len(req.Requests)*size >= 2<<20 {
			if err := flush(); err != nil {
				return nil, err
			}
		}
	}
	return ds, flush()
}

// batchRead reads b.o.batch random blobs of a pre-uploaded set per request.
func (b *bench) batchRead(ctx context.Context, size int) (op, error) {
	ds, err := b.upload(ctx, size, 1000)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		req := &repb.BatchReadBlobsRequest{InstanceName: b.o.instance}
		for range b.o.batch {
			req.Digests = append(req.Digests, ds[w.rng.IntN(len(ds))])
		}
		resp, err := w.cas.BatchReadBlobs(ctx, req)
		if err != nil {
			return 0, 0, err
		}
		var n int64
		for _, r := range resp.GetResponses() {
			if r.GetStatus().GetCode() != 0 {
				return 0, 0, fmt.Errorf("item %s: %s", r.GetDigest().GetHash(), r.GetStatus().GetMessage())
			}
			n += int64(len(r.GetData()))
		}
		return int64(len(req.Digests)), n, nil
	}, nil
}

func writeBlob(ctx context.Context, bs bspb.ByteStreamClient, instance string, data []byte, d *repb.Digest, chunk int) error {
	stream, err := bs.Write(ctx)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("%suploads/%s/blobs/%s/%d", prefix(instance), uuid.NewString(), d.GetHash(), d.GetSizeBytes())
	for off := 0; off < len(data); off += chunk {
		end := min(off+chunk, len(data))
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: data[off:end], FinishWrite: end == len(data)}
		if off == 0 {
			req.ResourceName = name
		}
		if err := stream.Send(req); err != nil {
			break // the server answered early (blob present) or failed: CloseAndRecv says which
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if resp.GetCommittedSize() != d.GetSizeBytes() {
		return fmt.Errorf("committed %d of %d bytes", resp.GetCommittedSize(), d.GetSizeBytes())
	}
	return nil
}

// bsWrite uploads one new blob of size per request.
func (b *bench) bsWrite(size int) op {
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		data, d := w.blobs(size).next(b, w.id)
		if err := writeBlob(ctx, w.bs, b.o.instance, data, d, b.o.chunk); err != nil {
			return 0, 0, err
		}
		return 1, int64(size), nil
	}
}

// bsRead reads one of count pre-uploaded blobs of size per request.
func (b *bench) bsRead(ctx context.Context, size, count int) (op, error) {
	ds, err := b.upload(ctx, size, count)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		d := ds[w.rng.IntN(len(ds))]
		stream, err := w.bs.Read(ctx, &bspb.ReadRequest{ResourceName: fmt.Sprintf("%sblobs/%s/%d", prefix(b.o.instance), d.GetHash(), d.GetSizeBytes())})
		if err != nil {
			return 0, 0, err
		}
		var n int64
		for {
			resp, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return 0, 0, err
			}
			n += int64(len(resp.GetData()))
		}
		if n != d.GetSizeBytes() {
			return 0, 0, fmt.Errorf("read %d of %d bytes", n, d.GetSizeBytes())
		}
		return 1, n, nil
	}, nil
}

// findMissing asks about 1000 digests per request, half of them present.
func (b *bench) findMissing(ctx context.Context) (op, error) {
	present, err := b.upload(ctx, 1<<10, 500)
	if err != nil {
		return nil, err
	}
	digests := slices.Clone(present)
	for i := range 500 {
		sum := sha256.Sum256(fmt.Appendf(nil, "absent-%x-%d", b.nonce, i))
		digests = append(digests, &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: 1024})
	}
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		resp, err := w.cas.FindMissingBlobs(ctx, &repb.FindMissingBlobsRequest{InstanceName: b.o.instance, BlobDigests: digests})
		if err != nil {
			return 0, 0, err
		}
		if n := len(resp.GetMissingBlobDigests()); n != 500 {
			return 0, 0, fmt.Errorf("%d digests reported missing, want 500", n)
		}
		return int64(len(digests)), 0, nil
	}, nil
}

// actionResult references two present output blobs and stdout, as Bazel's results do.
func actionResult(outputs []*repb.Digest, i int) *repb.ActionResult {
	return &repb.ActionResult{
		OutputFiles: []*repb.OutputFile{
			{Path: fmt.Sprintf("bazel-out/k8-fastbuild/bin/pkg/out%d.o", i), Digest: outputs[i%len(outputs)]},
			{Path: fmt.Sprintf("bazel-out/k8-fastbuild/bin/pkg/out%d.d", i), Digest: outputs[(i+1)%len(outputs)]},
		},
		StdoutDigest:      outputs[(i+2)%len(outputs)],
		ExecutionMetadata: &repb.ExecutedActionMetadata{Worker: "bench"},
	}
}

func (b *bench) actionDigest(i uint64) *repb.Digest {
	sum := sha256.Sum256(fmt.Appendf(nil, "action-%x-%d", b.nonce, i))
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: 143}
}

// acUpdate stores a new action result per request.
func (b *bench) acUpdate(ctx context.Context) (op, error) {
	outputs, err := b.upload(ctx, 4<<10, 64)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		i := b.seq.Add(1)
		ar := actionResult(outputs, int(i%1000))
		if _, err := w.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
			InstanceName: b.o.instance, ActionDigest: b.actionDigest(i), ActionResult: ar}); err != nil {
			return 0, 0, err
		}
		return 1, 0, nil
	}, nil
}

// acGet reads (with the completeness check) one of 1000 stored action results per request.
func (b *bench) acGet(ctx context.Context) (op, error) {
	outputs, err := b.upload(ctx, 4<<10, 64)
	if err != nil {
		return nil, err
	}
	ac := repb.NewActionCacheClient(b.conns[0])
	actions := make([]*repb.Digest, 1000)
	for i := range actions {
		actions[i] = b.actionDigest(b.seq.Add(1))
		if _, err := ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
			InstanceName: b.o.instance, ActionDigest: actions[i], ActionResult: actionResult(outputs, i)}); err != nil {
			return nil, fmt.Errorf("store action results: %w", err)
		}
	}
	return func(ctx context.Context, w *worker) (int64, int64, error) {
		if _, err := w.ac.GetActionResult(ctx, &repb.GetActionResultRequest{
			InstanceName: b.o.instance, ActionDigest: actions[w.rng.IntN(len(actions))]}); err != nil {
			return 0, 0, fmt.Errorf("GetActionResult: %s", status.Convert(err).Message())
		}
		return 1, 0, nil
	}, nil
}

// peakRSS reads VmHWM and VmRSS of a process.
func peakRSS(pid int) (hwm, rss string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", "", fmt.Errorf("read the server's memory use (-pid %d): %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
	}
	if hwm == "" {
		return "", "", fmt.Errorf("no VmHWM in /proc/%d/status", pid)
	}
	return hwm, rss, nil
}

// prefix is the instance part of a resource name ("" for the default instance).
func prefix(instance string) string {
	if instance == "" {
		return ""
	}
	return instance + "/"
}

func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.2fs", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%dµs", d.Microseconds())
}
