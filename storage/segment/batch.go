package segment

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
)

// Record is one in-memory body of an AppendBatch. Name is stored in the record's footer
// like Stage's name; SHA256 is the body's digest, which the caller has already computed (and
// checked against what its client declared), so the batch never hashes a body twice.
type Record struct {
	Name   []byte
	Body   []byte
	SHA256 [sha256.Size]byte
}

// MaxBatchBytes bounds the records of one AppendBatch: they are framed into one buffer and
// written with one pwrite, so the bound is the batch's memory cost.
const MaxBatchBytes = 16 << 20

// AppendBatch appends every record to the shared active segment with one pwrite and returns
// once one fdatasync (shared with concurrent commits) covers them all: a batch of small
// bodies costs one write and a share of one sync, not one of each per body. The result holds
// one Location per record, in order. It is all or nothing: after an error no Location may be
// used (a partly written tail is cut back or left as unreferenced garbage, like a failed
// Commit). Bodies must fit the spill threshold and the batch MaxBatchBytes; a larger body
// goes through Stage. ctx is honoured before anything is written and while waiting for the
// shared sync.
func (m *Manager) AppendBatch(ctx context.Context, recs []Record) ([]Location, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	if err := m.enter(); err != nil {
		return nil, fmt.Errorf("append batch: %w", err)
	}
	defer m.inflight.Done()
	total := 0
	for i := range recs {
		r := &recs[i]
		if len(r.Name) > MaxNameBytes {
			return nil, fmt.Errorf("append batch: record %d: name is %d bytes, longer than %d", i, len(r.Name), MaxNameBytes)
		}
		if int64(len(r.Body)) > m.opts.SpillThreshold {
			return nil, fmt.Errorf("append batch: record %d: %d bytes exceed the spill threshold %d", i, len(r.Body), m.opts.SpillThreshold)
		}
		total += int(RecordSize(int64(len(r.Body)), len(r.Name)))
	}
	if total > MaxBatchBytes {
		return nil, fmt.Errorf("append batch: %d bytes exceed MaxBatchBytes (%d)", total, MaxBatchBytes)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("append batch: %w", context.Cause(ctx))
	}
	buf := getBuf(bufCap(total, MaxBatchBytes))
	defer func() { putBuf(buf) }() // appendRecord's pwrite has completed when it returns
	locs := make([]Location, len(recs))
	var crcs crcTable
	for i := range recs {
		r := &recs[i]
		start := len(buf)
		buf = append(buf, r.Body...)
		crcs = crcTable{sums: crcs.sums[:0]}
		crcs.write(r.Body)
		buf = crcs.appendTo(buf)
		buf = appendFooter(buf, footer{name: r.Name, bodySize: int64(len(r.Body)), sha256: r.SHA256})
		locs[i] = Location{Offset: int64(start), BodySize: int64(len(r.Body)), RecordSize: int64(len(buf) - start)}
	}
	if len(buf) != total {
		return nil, errors.New("append batch: record framing disagrees with RecordSize") // a bug, never data
	}
	at, err := m.appendRecord(ctx, buf, int64(total))
	if err != nil {
		return nil, err
	}
	m.appends.Add(uint64(len(recs) - 1)) // appendRecord counted one
	for i := range locs {
		locs[i].Segment = at.Segment
		locs[i].Offset += at.Offset
	}
	return locs, nil
}
