package reapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync/atomic"
	"testing"
	"time"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
)

// resumableConfig makes every upload of 64 KiB or more resumable.
var resumableConfig = Config{ResumableMinBytes: 64 << 10}

// stagingStore is the disk store counting the bytes staged for resumable uploads, so a test
// cuts a stream only once the server holds what it sent (a client's cancel otherwise races
// the data still in its buffers).
type stagingStore struct {
	*local.Store
	staged atomic.Int64
}

func (s *stagingStore) ResumeWrite(ctx context.Context, key storage.Key, id string, size int64) (storage.ResumableWrite, error) {
	w, err := s.Store.ResumeWrite(ctx, key, id, size)
	if err != nil {
		return nil, err
	}
	return countingWrite{ResumableWrite: w, n: &s.staged}, nil
}

type countingWrite struct {
	storage.ResumableWrite
	n *atomic.Int64
}

func (w countingWrite) Write(p []byte) (int, error) {
	n, err := w.ResumableWrite.Write(p)
	w.n.Add(int64(n))
	return n, err
}

// newResumableHarness is a disk harness whose resumable uploads are counted.
func newResumableHarness(t *testing.T) (*harness, *stagingStore) {
	var st *stagingStore
	h := newDiskHarnessWith(t, resumableConfig, func(s *local.Store) storage.Store {
		st = &stagingStore{Store: s}
		return st
	})
	h.staging = st
	return h, st
}

// sendPart opens a Write stream at offset off and sends payload[off:end] in chunks; with
// finish it sends finish_write and returns the response, otherwise it cancels the stream the
// way a client whose connection broke does, and returns nil.
func sendPart(t *testing.T, h *harness, name string, payload []byte, off, end int, finish bool) (*bspb.WriteResponse, error) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	stream, err := h.bs.Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const chunk = 16 << 10
	first, start := true, off
	var stagedBefore int64
	if h.staging != nil {
		stagedBefore = h.staging.staged.Load()
	}
	for off < end || first {
		next := min(off+chunk, end)
		req := &bspb.WriteRequest{WriteOffset: int64(off), Data: payload[off:next], FinishWrite: finish && next == end}
		if first {
			req.ResourceName, first = name, false
		}
		if err := stream.Send(req); err != nil {
			break // the server answered early
		}
		off = next
	}
	if !finish {
		if h.staging != nil {
			testsupport.WaitFor(t, "the server to stage what was sent", 10*time.Second, func() bool {
				return h.staging.staged.Load() >= stagedBefore+int64(end-start)
			})
		}
		cancel()
		_, err := stream.CloseAndRecv()
		return nil, err
	}
	return stream.CloseAndRecv()
}

// committed polls QueryWriteStatus until the server reports want committed bytes: a
// cancelled stream's handler keeps its bytes a moment after the client gave up.
func committed(t *testing.T, h *harness, name string, want int64) {
	t.Helper()
	testsupport.WaitForNil(t, "the committed size of the broken upload", 10*time.Second, func() error {
		resp, err := h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: name})
		switch {
		case err != nil:
			return err
		case resp.GetComplete() || resp.GetCommittedSize() != want:
			return errors.New(resp.String())
		}
		return nil
	})
}

func TestByteStreamWriteResumesABrokenUpload(t *testing.T) {
	h, _ := newResumableHarness(t)
	payload := randomBlob(1<<20, 7)
	d := digestOf(payload)
	name := uploadName("main", false, d)

	if _, err := h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: name}); status.Code(err) != codes.NotFound {
		t.Fatalf("status before any byte: %v, want NOT_FOUND", err)
	}
	_, err := sendPart(t, h, name, payload, 0, 400<<10, false)
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled stream: %v", err)
	}
	committed(t, h, name, 400<<10)
	if h.casStoredIn("main", payload) {
		t.Fatal("a partial upload is served as a blob")
	}

	// A Write that does not continue at the committed size is refused, and changes nothing.
	_, err = sendPart(t, h, name, payload, 100, 200, true)
	wantCode(t, err, codes.InvalidArgument)
	committed(t, h, name, 400<<10)

	// A second cut, then the rest.
	if _, err := sendPart(t, h, name, payload, 400<<10, 700<<10, false); status.Code(err) != codes.Canceled {
		t.Fatalf("second cancelled stream: %v", err)
	}
	committed(t, h, name, 700<<10)
	resp, err := sendPart(t, h, name, payload, 700<<10, len(payload), true)
	if err != nil || resp.GetCommittedSize() != int64(len(payload)) {
		t.Fatalf("resumed write: %v, %v", resp, err)
	}
	got, _, err := h.read(ctxT(t), &bspb.ReadRequest{ResourceName: readName("main", false, d)})
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	st, err := h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: name})
	if err != nil || !st.GetComplete() || st.GetCommittedSize() != int64(len(payload)) {
		t.Fatalf("status of the stored blob: %v, %v", st, err)
	}
}

func TestByteStreamWriteHalfClosedReportsCommitted(t *testing.T) {
	h, _ := newResumableHarness(t)
	payload := randomBlob(300<<10, 8)
	d := digestOf(payload)
	name := uploadName("", false, d)
	// Closing the stream without finish_write is the ByteStream's pause: the answer counts
	// what was committed and the upload stays.
	stream, err := h.bs.Write(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{ResourceName: name, Data: payload[:100<<10]}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.CloseAndRecv()
	if err != nil || resp.GetCommittedSize() != 100<<10 {
		t.Fatalf("half-closed write: %v, %v", resp, err)
	}
	committed(t, h, name, 100<<10)
	// Starting again at 0 is always allowed and drops the staged bytes.
	resp, err = sendPart(t, h, name, payload, 0, len(payload), true)
	if err != nil || resp.GetCommittedSize() != int64(len(payload)) {
		t.Fatalf("restarted write: %v, %v", resp, err)
	}
	if !h.casStoredIn("default", payload) {
		t.Fatal("blob not stored")
	}
}

func TestByteStreamWriteResumedBadDataIsDiscarded(t *testing.T) {
	h, _ := newResumableHarness(t)
	payload := randomBlob(200<<10, 9)
	d := digestOf(payload)
	name := uploadName("", false, d)
	if _, err := sendPart(t, h, name, payload, 0, 50<<10, false); status.Code(err) != codes.Canceled {
		t.Fatal(err)
	}
	committed(t, h, name, 50<<10)
	bad := bytes.Clone(payload)
	bad[len(bad)-1] ^= 1
	_, err := sendPart(t, h, name, bad, 50<<10, len(bad), true)
	wantCode(t, err, codes.InvalidArgument)
	if h.casStoredIn("default", payload) || h.casStoredIn("default", bad) {
		t.Fatal("bad data stored")
	}
	if _, err := h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: name}); status.Code(err) != codes.NotFound {
		t.Fatalf("a discarded upload has a status: %v", err)
	}
	// finish_write before the end fails the upload too.
	if _, err := sendPart(t, h, name, payload, 0, 1000, true); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("short finish_write: %v", err)
	}
}

func TestByteStreamWriteSmallAndCompressedUploadsAreNotResumable(t *testing.T) {
	h := newDiskHarnessWith(t, resumableConfig)
	small := randomBlob(1000, 10)
	if _, err := sendPart(t, h, uploadName("", false, digestOf(small)), small, 0, 500, false); status.Code(err) != codes.Canceled {
		t.Fatal(err)
	}
	_, err := h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", false, digestOf(small))})
	wantCode(t, err, codes.NotFound)
	_, err = sendPart(t, h, uploadName("", false, digestOf(small)), small, 500, 1000, true)
	wantCode(t, err, codes.InvalidArgument)
	big := randomBlob(200<<10, 11)
	_, err = h.bs.QueryWriteStatus(ctxT(t), &bspb.QueryWriteStatusRequest{ResourceName: uploadName("", true, digestOf(big))})
	wantCode(t, err, codes.NotFound)
}

// casStoredIn reports whether the harness's store (whatever it is) holds the SHA-256 blob.
func (h *harness) casStoredIn(namespace string, data []byte) bool {
	h.t.Helper()
	d, err := fnSHA256.parse(digestOf(data))
	if err != nil {
		h.t.Fatal(err)
	}
	r, err := h.store.Open(context.Background(), casKey(testTenant, namespace, d), 0, -1)
	if err != nil {
		return false
	}
	defer func() { _ = r.Close() }()
	got, err := io.ReadAll(r)
	return err == nil && bytes.Equal(got, data)
}
