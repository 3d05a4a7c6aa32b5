package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// PushBatch limits. Both ends enforce them, so changing one is a protocol change.
const (
	// MaxBatchItems bounds the items of one PushBatch: 512 small objects share one segment
	// append, one fdatasync and one Pebble commit on the receiver, and the answer stays small.
	MaxBatchItems = 512
	// MaxBatchBytes bounds the bodies of one PushBatch together: what a receiver holds in
	// memory per batch before it commits (times maxConcurrentBatches per node).
	MaxBatchBytes = 8 << 20
	// MaxBatchItemBytes bounds one item's body. Larger objects gain little from sharing a
	// commit and go through PushObject's stream, which never holds a body whole.
	MaxBatchItemBytes = 256 << 10
	// maxBatchPartBytes bounds one PushBatch message: items are packed into parts below the
	// receive limit (a part holds at least one item: a header and at most MaxBatchItemBytes).
	maxBatchPartBytes = MaxChunkBytes
	// maxConcurrentBatches bounds the batches a server receives and applies at once, and so
	// the memory they hold (8 × MaxBatchBytes); further batches wait for a slot.
	maxConcurrentBatches = 8
)

// PushBatch sends up to MaxBatchItems small objects to the peer at addr, which applies them
// in one durable commit and answers each. An object is a replicated write: Key, Body (exactly
// Opts.Size bytes, at most MaxBatchItemBytes, at most MaxBatchBytes for all of them), and in
// Opts the origin's Version, ExpectedSHA256 and ContentType.
//
// The results are in the order of objs. A result without Err is delivered, Created as
// PushObject's applied (false: the peer already had it, something newer or a newer
// tombstone); an Err is a *RemoteError for that object alone, which unwraps to the storage
// sentinel (storage.ErrDigestMismatch, ErrInsufficientStorage, …). An error means no object
// is known to be applied: the call failed as a whole (a peer that predates PushBatch answers
// UNIMPLEMENTED, an error wrapping errors.ErrUnsupported), or objs break the bounds (wrapping
// ErrMalformed or storage.ErrTooLarge, without a call).
func (c *Client) PushBatch(ctx context.Context, addr string, objs []storage.PutItem) ([]storage.PutItemResult, error) {
	start := time.Now()
	action := fmt.Sprintf("push batch of %d objects", len(objs))
	parts, err := batchParts(objs)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	rc, err := c.conn(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	resp, err := c.pushBatch(ctx, rc, parts)
	if err == nil && len(resp.GetResults()) != len(objs) {
		err = fmt.Errorf("%w: %d results for %d objects", ErrMalformed, len(resp.GetResults()), len(objs))
	}
	if err := c.done("PushBatch", action, addr, start, err); err != nil {
		return nil, err
	}
	out := make([]storage.PutItemResult, len(objs))
	for i, r := range resp.GetResults() {
		code := codes.Code(r.GetCode())
		if code == codes.OK {
			out[i].Created = r.GetApplied()
			continue
		}
		st := status.New(code, r.GetMessage())
		if reason := r.GetReason(); reason != "" {
			if d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: errorDomain}); derr == nil {
				st = d
			}
		}
		out[i].Err = fromStatus("push object "+objs[i].Key.String()+" (batched)", addr, st.Err())
	}
	return out, nil
}

func (c *Client) pushBatch(ctx context.Context, rc peerpb.ReplicationClient, parts []*peerpb.PushBatchPart) (*peerpb.PushBatchResponse, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if we return before the peer's answer
	stream, err := rc.PushBatch(ctx)
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		if err := stream.Send(p); err != nil {
			break // io.EOF: the peer failed the call; its status is in CloseAndRecv
		}
	}
	return stream.CloseAndRecv()
}

// batchParts checks objs against the bounds and packs them into messages below the receive
// limit.
func batchParts(objs []storage.PutItem) ([]*peerpb.PushBatchPart, error) {
	if len(objs) == 0 || len(objs) > MaxBatchItems {
		return nil, fmt.Errorf("%w: %d objects, 1 to %d", ErrMalformed, len(objs), MaxBatchItems)
	}
	var (
		parts []*peerpb.PushBatchPart
		cur   = &peerpb.PushBatchPart{}
		size  int
		total int64
	)
	for _, o := range objs {
		if err := o.Key.Validate(); err != nil {
			return nil, err
		}
		if o.Opts.ExpectedSHA256 == nil {
			return nil, fmt.Errorf("%w: %s: no digest", ErrMalformed, o.Key)
		}
		info := storage.Info{Key: o.Key, Size: o.Opts.Size, ContentType: o.Opts.ContentType, SHA256: *o.Opts.ExpectedSHA256, Version: o.Opts.Version,
			Attributes: o.Opts.Attributes}
		switch n := int64(len(o.Body)); {
		case info.Version == 0 || info.Size != n:
			return nil, fmt.Errorf("%w: %s: version %s, size %d, body %d bytes", ErrMalformed, info.Key, info.Version, info.Size, n)
		case n > MaxBatchItemBytes:
			return nil, fmt.Errorf("%w: %s: %d bytes, at most %d in a batch", storage.ErrTooLarge, info.Key, n, MaxBatchItemBytes)
		}
		if total += info.Size; total > MaxBatchBytes {
			return nil, fmt.Errorf("%w: bodies of more than %d bytes in one batch", storage.ErrTooLarge, MaxBatchBytes)
		}
		item := &peerpb.BatchItem{Header: infoToHeader(info, false), Body: o.Body}
		n := proto.Size(item) + 8 // the field's tag and length
		if size+n > maxBatchPartBytes && len(cur.Items) > 0 {
			parts = append(parts, cur)
			cur, size = &peerpb.PushBatchPart{}, 0
		}
		cur.Items = append(cur.Items, item)
		size += n
	}
	return append(parts, cur), nil
}

// receivedItem is one item of a PushBatch as the server read it: ready to apply, or refused
// on its own (err).
type receivedItem struct {
	info storage.Info
	body []byte
	err  error
}

// PushBatch applies a batch of small replicated writes: every item is read first, within the
// bounds (a batch beyond them is INVALID_ARGUMENT and nothing of it is stored), then the
// acceptable ones go to the store in one PutBatch, which judges each by storage.Replaces at
// its origin's version and commits the winners with one fdatasync and one Pebble commit. The
// answer has one result per item: an item with a bad header or body fails alone, like a
// BatchUpdateBlobs item.
func (h *handlers) PushBatch(stream peerpb.Replication_PushBatchServer) error {
	ctx := stream.Context()
	select {
	case h.batchSlots <- struct{}{}:
		defer func() { <-h.batchSlots }()
	case <-ctx.Done():
		return toStatus(fmt.Errorf("push batch: wait for a slot: %w", ctx.Err()))
	}
	items, err := h.receiveBatch(stream)
	if err != nil {
		return toStatus(fmt.Errorf("push batch: %w", err))
	}
	results := h.applyBatch(ctx, items)
	if err := stream.SendAndClose(&peerpb.PushBatchResponse{Results: results}); err != nil {
		return toStatus(fmt.Errorf("push batch of %d: send response: %w", len(items), err))
	}
	return nil
}

// receiveBatch reads a batch's parts until the stream ends, enforcing the bounds as it goes
// so that no more than MaxBatchBytes (and one message) is ever held.
func (h *handlers) receiveBatch(stream peerpb.Replication_PushBatchServer) ([]receivedItem, error) {
	var (
		items []receivedItem
		total int64
	)
	for {
		part, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		for _, it := range part.GetItems() {
			if len(items) == MaxBatchItems {
				return nil, fmt.Errorf("%w: more than %d items", ErrMalformed, MaxBatchItems)
			}
			body := it.GetBody()
			if len(body) > MaxBatchItemBytes {
				return nil, fmt.Errorf("%w: item %d has %d bytes, at most %d in a batch", storage.ErrTooLarge, len(items), len(body), MaxBatchItemBytes)
			}
			if total += int64(len(body)); total > MaxBatchBytes {
				return nil, fmt.Errorf("%w: bodies of more than %d bytes", storage.ErrTooLarge, MaxBatchBytes)
			}
			items = append(items, h.judgeItem(it.GetHeader(), body))
		}
	}
	if len(items) == 0 {
		return nil, fmt.Errorf("%w: no items", ErrMalformed)
	}
	return items, nil
}

// judgeItem applies PushObject's header checks to one item.
func (h *handlers) judgeItem(hdr *peerpb.ObjectHeader, body []byte) receivedItem {
	info, err := headerToInfo(hdr)
	switch {
	case err != nil:
	case int64(len(body)) != info.Size:
		err = fmt.Errorf("%w: body has %d bytes, declared %d", storage.ErrDigestMismatch, len(body), info.Size)
	case info.Key.Kind == storage.KindKeyValue && info.Size > h.maxKV:
		err = fmt.Errorf("%w: %d bytes, keyvalue limit %d", storage.ErrTooLarge, info.Size, h.maxKV)
	}
	if err != nil {
		return receivedItem{err: fmt.Errorf("push object %s (batched): %w", info.Key, err)}
	}
	return receivedItem{info: info, body: body}
}

// applyBatch stores the acceptable items in one PutBatch (or, for a backend without one, Put
// by Put) and answers every item.
func (h *handlers) applyBatch(ctx context.Context, items []receivedItem) []*peerpb.BatchItemResult {
	puts := make([]storage.PutItem, 0, len(items))
	for i := range items {
		it := &items[i]
		if it.err != nil {
			continue
		}
		puts = append(puts, storage.PutItem{Key: it.info.Key, Body: it.body, Opts: storage.PutOptions{
			ContentType:    it.info.ContentType,
			Attributes:     it.info.Attributes,
			Size:           it.info.Size,
			Limit:          it.info.Size,
			ExpectedSHA256: &it.info.SHA256,
			Version:        it.info.Version,
		}})
	}
	var stored []storage.PutItemResult
	if bp, ok := h.backend.(storage.BatchPutter); ok && len(puts) > 0 {
		stored = bp.PutBatch(ctx, puts)
	} else {
		stored = make([]storage.PutItemResult, len(puts))
		for i, p := range puts {
			res, err := h.backend.Put(ctx, p.Key, bytes.NewReader(p.Body), p.Opts)
			stored[i] = storage.PutItemResult{PutResult: res, Err: err}
		}
	}
	out := make([]*peerpb.BatchItemResult, len(items))
	next := 0
	for i := range items {
		err := items[i].err
		var applied bool
		if err == nil {
			r := stored[next]
			next++
			applied, err = r.Err == nil && r.Created, r.Err
			if errors.Is(err, storage.ErrStale) {
				err = nil // a newer tombstone: delivered, as PushObject answers it
			}
		}
		out[i] = itemResult(applied, err)
	}
	return out
}

// itemResult is one item's answer: the status its error maps to (errors.go), per item.
func itemResult(applied bool, err error) *peerpb.BatchItemResult {
	if err == nil {
		return &peerpb.BatchItemResult{Code: uint32(codes.OK), Applied: applied}
	}
	st := status.Convert(toStatus(err))
	r := &peerpb.BatchItemResult{Code: uint32(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == errorDomain {
			r.Reason = info.GetReason()
		}
	}
	return r
}
