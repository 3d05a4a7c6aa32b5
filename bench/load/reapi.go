package load

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"slices"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"github.com/google/uuid"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// REAPIOptions configures the REAPI scenarios.
type REAPIOptions struct {
	Addr     string // host:port
	Instance string // instance_name (Kura: the namespace)
	Batch    int    // blobs per BatchUpdateBlobs/BatchReadBlobs request
	Conns    int    // gRPC connections the workers share (round robin)
	Chunk    int    // ByteStream.Write chunk size
}

// REAPI drives one REAPI endpoint.
type REAPI struct {
	o     REAPIOptions
	conns []*grpc.ClientConn
	u     *Uniq
}

// REAPIScenarios lists the scenarios in the order they run by default.
func REAPIScenarios() []string {
	return []string{
		"batch-update-1k", "batch-read-1k", "batch-update-16k", "batch-read-16k",
		"bs-write-4m", "bs-read-4m", "bs-write-64m", "bs-read-64m",
		"find-missing-1000", "ac-update", "ac-get",
	}
}

// NewREAPI connects (lazily, as grpc.NewClient does) to o.Addr.
func NewREAPI(o REAPIOptions) (*REAPI, error) {
	if o.Batch < 1 || o.Conns < 1 || o.Chunk < 1 {
		return nil, errors.New("batch, conns and chunk must be positive")
	}
	b := &REAPI{o: o, u: &Uniq{}}
	if _, err := rand.Read(b.u.Nonce[:]); err != nil {
		return nil, fmt.Errorf("random nonce: %w", err)
	}
	for range o.Conns {
		conn, err := grpc.NewClient(o.Addr,
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
		if err != nil {
			b.Close()
			return nil, fmt.Errorf("connect to %s: %w", o.Addr, err)
		}
		b.conns = append(b.conns, conn)
	}
	return b, nil
}

// Close closes the connections.
func (b *REAPI) Close() {
	for _, c := range b.conns {
		_ = c.Close()
	}
}

// Conn is the i-th shared connection (round robin).
func (b *REAPI) Conn(i int) *grpc.ClientConn { return b.conns[i%len(b.conns)] }

// Uniq is the generator state the scenarios share.
func (b *REAPI) Uniq() *Uniq { return b.u }

// Ping calls GetCapabilities: the endpoint answers REAPI.
func (b *REAPI) Ping(ctx context.Context) error {
	if _, err := repb.NewCapabilitiesClient(b.conns[0]).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{InstanceName: b.o.Instance}); err != nil {
		return fmt.Errorf("GetCapabilities on %s: %w", b.o.Addr, err)
	}
	return nil
}

// Setup prepares a scenario's shared state (untimed: the read data sets are uploaded here)
// and returns the maker of each worker's Op.
func (b *REAPI) Setup(ctx context.Context, name string) (func(worker int) Op, error) {
	switch name {
	case "batch-update-1k":
		return b.batchUpdate(1 << 10), nil
	case "batch-update-16k":
		return b.batchUpdate(16 << 10), nil
	case "batch-read-1k":
		return b.batchRead(ctx, 1<<10)
	case "batch-read-16k":
		return b.batchRead(ctx, 16<<10)
	case "bs-write-4m":
		return b.bsWrite(4 << 20), nil
	case "bs-write-64m":
		return b.bsWrite(64 << 20), nil
	case "bs-read-4m":
		return b.bsRead(ctx, 4<<20, 16)
	case "bs-read-64m":
		return b.bsRead(ctx, 64<<20, 2)
	case "find-missing-1000":
		return b.findMissing(ctx)
	case "ac-update":
		return b.acUpdate(ctx)
	case "ac-get":
		return b.acGet(ctx)
	}
	return nil, fmt.Errorf("unknown scenario %q (known: %s)", name, strings.Join(REAPIScenarios(), ", "))
}

// Digest is the REAPI digest of a blob.
func Digest(sum [32]byte, size int) *repb.Digest {
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: int64(size)}
}

type reapiWorker struct {
	cas repb.ContentAddressableStorageClient
	ac  repb.ActionCacheClient
	bs  bspb.ByteStreamClient
	rng *mrand.Rand
}

func (b *REAPI) worker(i int) *reapiWorker {
	conn := b.Conn(i)
	return &reapiWorker{
		cas: repb.NewContentAddressableStorageClient(conn), ac: repb.NewActionCacheClient(conn),
		bs: bspb.NewByteStreamClient(conn), rng: mrand.New(mrand.NewPCG(uint64(i), b.u.Next())),
	}
}

// batchUpdate uploads Batch new blobs of size per request.
func (b *REAPI) batchUpdate(size int) func(int) Op {
	return func(i int) Op {
		w := b.worker(i)
		g := NewBlobGen(b.u, size, uint64(i)+1)
		// One body buffer per blob of the batch, reused across requests: the request is
		// marshalled before BatchUpdateBlobs returns, so the next request may overwrite them.
		bodies := make([][]byte, b.o.Batch)
		for j := range bodies {
			bodies[j] = make([]byte, size)
		}
		return func(ctx context.Context) (int64, int64, error) {
			req := &repb.BatchUpdateBlobsRequest{InstanceName: b.o.Instance, Requests: make([]*repb.BatchUpdateBlobsRequest_Request, b.o.Batch)}
			for j := range b.o.Batch {
				data, sum := g.Next()
				copy(bodies[j], data)
				req.Requests[j] = &repb.BatchUpdateBlobsRequest_Request{Digest: Digest(sum, size), Data: bodies[j]}
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
			return int64(b.o.Batch), int64(b.o.Batch * size), nil
		}
	}
}

// Upload stores count fresh blobs of size (untimed setup) and returns their digests.
func (b *REAPI) Upload(ctx context.Context, size, count int) ([]*repb.Digest, error) {
	g := NewBlobGen(b.u, size, 1_000_000+uint64(size))
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
		data, sum := g.Next()
		d := Digest(sum, size)
		ds = append(ds, d)
		if size > 1<<20 {
			if err := WriteBlob(ctx, bs, b.o.Instance, data, d, b.o.Chunk); err != nil {
				return nil, fmt.Errorf("upload the data set: %w", err)
			}
			continue
		}
		if req == nil {
			req = &repb.BatchUpdateBlobsRequest{InstanceName: b.o.Instance}
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

// batchRead reads Batch random blobs of a pre-uploaded set per request.
func (b *REAPI) batchRead(ctx context.Context, size int) (func(int) Op, error) {
	ds, err := b.Upload(ctx, size, 1000)
	if err != nil {
		return nil, err
	}
	return func(i int) Op {
		w := b.worker(i)
		req := &repb.BatchReadBlobsRequest{InstanceName: b.o.Instance, Digests: make([]*repb.Digest, b.o.Batch)}
		return func(ctx context.Context) (int64, int64, error) {
			for j := range req.Digests {
				req.Digests[j] = ds[w.rng.IntN(len(ds))]
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
		}
	}, nil
}

// WriteBlob uploads one blob over ByteStream.Write in chunks of chunk bytes.
func WriteBlob(ctx context.Context, bs bspb.ByteStreamClient, instance string, data []byte, d *repb.Digest, chunk int) error {
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
func (b *REAPI) bsWrite(size int) func(int) Op {
	return func(i int) Op {
		w := b.worker(i)
		g := NewBlobGen(b.u, size, uint64(i)+1)
		return func(ctx context.Context) (int64, int64, error) {
			data, sum := g.Next()
			if err := WriteBlob(ctx, w.bs, b.o.Instance, data, Digest(sum, size), b.o.Chunk); err != nil {
				return 0, 0, err
			}
			return 1, int64(size), nil
		}
	}
}

// bsRead reads one of count pre-uploaded blobs of size per request.
func (b *REAPI) bsRead(ctx context.Context, size, count int) (func(int) Op, error) {
	ds, err := b.Upload(ctx, size, count)
	if err != nil {
		return nil, err
	}
	return func(i int) Op {
		w := b.worker(i)
		return func(ctx context.Context) (int64, int64, error) {
			d := ds[w.rng.IntN(len(ds))]
			stream, err := w.bs.Read(ctx, &bspb.ReadRequest{ResourceName: fmt.Sprintf("%sblobs/%s/%d", prefix(b.o.Instance), d.GetHash(), d.GetSizeBytes())})
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
		}
	}, nil
}

// findMissing asks about 1000 digests per request, half of them present.
func (b *REAPI) findMissing(ctx context.Context) (func(int) Op, error) {
	present, err := b.Upload(ctx, 1<<10, 500)
	if err != nil {
		return nil, err
	}
	digests := slices.Clone(present)
	for i := range 500 {
		sum := sha256.Sum256(fmt.Appendf(nil, "absent-%x-%d", b.u.Nonce, i))
		digests = append(digests, &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: 1024})
	}
	return func(i int) Op {
		w := b.worker(i)
		req := &repb.FindMissingBlobsRequest{InstanceName: b.o.Instance, BlobDigests: digests}
		return func(ctx context.Context) (int64, int64, error) {
			resp, err := w.cas.FindMissingBlobs(ctx, req)
			if err != nil {
				return 0, 0, err
			}
			if n := len(resp.GetMissingBlobDigests()); n != 500 {
				return 0, 0, fmt.Errorf("%d digests reported missing, want 500", n)
			}
			return int64(len(digests)), 0, nil
		}
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

func (b *REAPI) actionDigest(i uint64) *repb.Digest {
	sum := sha256.Sum256(fmt.Appendf(nil, "action-%x-%d", b.u.Nonce, i))
	return &repb.Digest{Hash: hex.EncodeToString(sum[:]), SizeBytes: 143}
}

// acUpdate stores a new action result per request.
func (b *REAPI) acUpdate(ctx context.Context) (func(int) Op, error) {
	outputs, err := b.Upload(ctx, 4<<10, 64)
	if err != nil {
		return nil, err
	}
	return func(i int) Op {
		w := b.worker(i)
		return func(ctx context.Context) (int64, int64, error) {
			n := b.u.Next()
			if _, err := w.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
				InstanceName: b.o.Instance, ActionDigest: b.actionDigest(n), ActionResult: actionResult(outputs, int(n%1000))}); err != nil {
				return 0, 0, err
			}
			return 1, 0, nil
		}
	}, nil
}

// acGet reads (with the server's completeness check) one of 1000 stored action results per
// request.
func (b *REAPI) acGet(ctx context.Context) (func(int) Op, error) {
	outputs, err := b.Upload(ctx, 4<<10, 64)
	if err != nil {
		return nil, err
	}
	ac := repb.NewActionCacheClient(b.conns[0])
	actions := make([]*repb.Digest, 1000)
	for i := range actions {
		actions[i] = b.actionDigest(b.u.Next())
		if _, err := ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{
			InstanceName: b.o.Instance, ActionDigest: actions[i], ActionResult: actionResult(outputs, i)}); err != nil {
			return nil, fmt.Errorf("store action results: %w", err)
		}
	}
	return func(i int) Op {
		w := b.worker(i)
		return func(ctx context.Context) (int64, int64, error) {
			if _, err := w.ac.GetActionResult(ctx, &repb.GetActionResultRequest{
				InstanceName: b.o.Instance, ActionDigest: actions[w.rng.IntN(len(actions))]}); err != nil {
				return 0, 0, fmt.Errorf("GetActionResult: %s", status.Convert(err).Message())
			}
			return 1, 0, nil
		}
	}, nil
}

// prefix is the instance part of a resource name ("" for the default instance).
func prefix(instance string) string {
	if instance == "" {
		return ""
	}
	return instance + "/"
}
