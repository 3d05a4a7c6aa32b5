package storagetest

import (
	"context"
	"fmt"
	"io"

	"github.com/kuracache/kura/storage"
)

// BatchStore is a Store that also commits batches (storage.BatchPutter).
type BatchStore interface {
	storage.Store
	storage.BatchPutter
}

// PutThroughBatch is s whose Put reads the body into memory and writes it with a PutBatch of
// one item, so RunStoreSuite checks the batch path against the same contract as Put (limits,
// declared sizes, digests, first and last writer wins, tombstones). The body is read up to
// one byte past Limit or Size, as Put would, and a read error fails the write. Where Put must
// not read the body at all (an invalid key, an immutable object already stored) the batch
// gets an empty body, which it must answer without looking at; replicated and keyvalue
// writes, which a batch hands to Put, go to Put with the body as given.
func PutThroughBatch(s BatchStore) storage.Store { return batchAsPut{s} }

type batchAsPut struct{ BatchStore }

func (b batchAsPut) Put(ctx context.Context, key storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	if opts.Version != 0 || key.Kind == storage.KindKeyValue {
		return b.BatchStore.Put(ctx, key, body, opts)
	}
	unread := key.Validate() != nil
	if !unread && !key.Kind.LastWriterWins() {
		_, err := b.Stat(ctx, key)
		unread = err == nil
	}
	if unread {
		return b.one(ctx, storage.PutItem{Key: key, Opts: opts})
	}
	readCap := int64(1 << 40)
	if opts.Limit > 0 {
		readCap = opts.Limit + 1
	}
	if opts.Size >= 0 && opts.Size+1 < readCap {
		readCap = opts.Size + 1
	}
	data, err := io.ReadAll(io.LimitReader(body, readCap))
	if err != nil {
		return storage.PutResult{}, fmt.Errorf("put %s: read body: %w", key, err)
	}
	return b.one(ctx, storage.PutItem{Key: key, Body: data, Opts: opts})
}

func (b batchAsPut) one(ctx context.Context, item storage.PutItem) (storage.PutResult, error) {
	r := b.PutBatch(ctx, []storage.PutItem{item})
	if len(r) != 1 {
		return storage.PutResult{}, fmt.Errorf("PutBatch of one item returned %d results", len(r))
	}
	return r[0].PutResult, r[0].Err
}
