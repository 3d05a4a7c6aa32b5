package meta

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// Last-use records keep, per object, the wall time (Unix ms, the node's own clock) it was
// last read or written here, for retention by age. They live beside the manifests rather
// than in them so that recording a read never rewrites a manifest (no key lock, no cache or
// digest update): storage/local writes them in batches from its retention sweep, and a
// record whose manifest is gone is an orphan the next sweep deletes.

func lastUseKey(encodedKey []byte) []byte {
	b := make([]byte, 0, 1+len(encodedKey))
	b = append(b, prefixLastUse)
	return append(b, encodedKey...)
}

func encodeLastUse(millis int64) []byte {
	b := make([]byte, 0, 16)
	b = append(b, formatV1)
	b = binary.AppendUvarint(b, uint64(max(millis, 0)))
	return seal(b)
}

func decodeLastUse(v []byte) (int64, error) {
	p, err := unseal("last use", v)
	if err != nil {
		return 0, err
	}
	d := decoder{b: p}
	ms := d.int64()
	if err := d.finish("last use"); err != nil {
		return 0, err
	}
	return ms, nil
}

// PutLastUse records that the object whose manifest key is encodedKey was last used at
// millis (Unix ms).
func (b *Batch) PutLastUse(encodedKey []byte, millis int64) error {
	if err := b.b.Set(lastUseKey(encodedKey), encodeLastUse(millis), nil); err != nil {
		return fmt.Errorf("put last use of %q: %w", encodedKey, err)
	}
	return nil
}

// DeleteLastUse removes the last-use record of encodedKey (absent: no-op).
func (b *Batch) DeleteLastUse(encodedKey []byte) error {
	if err := b.b.Delete(lastUseKey(encodedKey), nil); err != nil {
		return fmt.Errorf("delete last use of %q: %w", encodedKey, err)
	}
	return nil
}

// GetLastUse returns the recorded last use of encodedKey (ok false: none). A damaged record
// is an error wrapping storage.ErrCorrupt.
func (db *DB) GetLastUse(encodedKey []byte) (millis int64, ok bool, err error) {
	v, ok, err := db.get(lastUseKey(encodedKey))
	if err != nil || !ok {
		return 0, false, err
	}
	ms, err := decodeLastUse(v)
	if err != nil {
		return 0, false, fmt.Errorf("read last use of %q: %w", encodedKey, err)
	}
	return ms, true, nil
}

// LastUseIterator walks last-use records in the order of their manifest keys, so a walk of
// the manifests can merge it in step. Not safe for concurrent use; Close releases it.
type LastUseIterator struct{ walk }

// NewLastUseIterator starts a walk over every last-use record.
func (db *DB) NewLastUseIterator(ctx context.Context) (*LastUseIterator, error) {
	it, err := db.pdb.NewIterWithContext(ctx, &pebble.IterOptions{
		LowerBound: []byte{prefixLastUse}, UpperBound: []byte{prefixLastUse + 1}})
	if err != nil {
		return nil, fmt.Errorf("iterate last use: %w", err)
	}
	return &LastUseIterator{walk{ctx: ctx, it: it, what: "last use"}}, nil
}

// SeekGE moves to the first record whose manifest key is >= encodedKey and reports whether
// there is one.
func (i *LastUseIterator) SeekGE(encodedKey []byte) bool {
	if i.err != nil {
		return false
	}
	i.started = true
	if !i.it.SeekGE(lastUseKey(encodedKey)) {
		if err := i.it.Error(); err != nil {
			i.err = fmt.Errorf("iterate last use: %w", err)
		}
		return false
	}
	return true
}

// EncodedKey is the current record's manifest key, valid until the iterator moves.
func (i *LastUseIterator) EncodedKey() []byte { return i.it.Key()[1:] }

// Millis decodes the current record; a damaged one wraps storage.ErrCorrupt.
func (i *LastUseIterator) Millis() (int64, error) {
	v, err := i.it.ValueAndErr()
	if err != nil {
		return 0, fmt.Errorf("read last use: %w", err)
	}
	return decodeLastUse(v)
}

// Close releases the view.
func (i *LastUseIterator) Close() error {
	if err := i.it.Close(); err != nil {
		return fmt.Errorf("close last-use iterator: %w", err)
	}
	return nil
}
