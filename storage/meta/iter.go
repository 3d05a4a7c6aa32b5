package meta

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2"

	"github.com/kuracache/kura/storage"
)

// ManifestIterator walks manifests in key order over the point-in-time view fixed when it was
// created: writes committed later are not seen, so a caller that serialises its creation with
// commits knows exactly which commits the walk includes. It holds Pebble resources until
// Close and is not safe for concurrent use.
type ManifestIterator struct{ walk }

// walk is the stepping both iterators share: a Pebble iterator moved one record at a time,
// checking the context every 256 records, and remembering the error that ended it.
type walk struct {
	ctx     context.Context
	it      *pebble.Iterator
	what    string // what is walked, for errors ("manifests", "last use")
	started bool
	n       int
	err     error
}

// Next moves to the next record and reports whether there is one. After false, Err says
// whether the walk ended or failed.
func (w *walk) Next() bool {
	if w.err != nil {
		return false
	}
	var valid bool
	if !w.started {
		w.started, valid = true, w.it.First()
	} else {
		valid = w.it.Next()
	}
	if !valid {
		if err := w.it.Error(); err != nil {
			w.err = fmt.Errorf("iterate %s: %w", w.what, err)
		}
		return false
	}
	w.n++
	if w.n%256 == 0 {
		if err := w.ctx.Err(); err != nil {
			w.err = fmt.Errorf("iterate %s: %w", w.what, err)
			return false
		}
	}
	return true
}

// Err is the error that ended the walk, if any.
func (w *walk) Err() error { return w.err }

// NewManifestIterator starts a walk at the first manifest whose encoded key is >= start (nil:
// the first manifest). A start outside the manifest key space is reported as an error
// wrapping storage.ErrInvalidKey.
func (db *DB) NewManifestIterator(ctx context.Context, start []byte) (*ManifestIterator, error) {
	lower, upper := []byte{prefixManifest}, []byte{prefixManifest + 1}
	if start != nil {
		if len(start) == 0 || start[0] != prefixManifest {
			return nil, fmt.Errorf("iterate manifests: %w: start %q is not a manifest key", storage.ErrInvalidKey, start)
		}
		lower = start
	}
	it, err := db.pdb.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: bytes.Clone(lower), UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("iterate manifests: %w", err)
	}
	return &ManifestIterator{walk{ctx: ctx, it: it, what: "manifests"}}, nil
}

// EncodedKey is the current manifest's key (ManifestKey), valid until Next.
func (i *ManifestIterator) EncodedKey() []byte { return i.it.Key() }

// Entry decodes the current manifest. An inline body aliases the iterator and is valid only
// until Next. A damaged key or value gives an error wrapping storage.ErrCorrupt.
func (i *ManifestIterator) Entry() (storage.Key, Manifest, error) {
	k, err := DecodeManifestKey(i.it.Key())
	if err != nil {
		return storage.Key{}, Manifest{}, err
	}
	v, err := i.it.ValueAndErr()
	if err != nil {
		return storage.Key{}, Manifest{}, fmt.Errorf("read manifest of %s: %w", k, err)
	}
	m, err := decodeManifest(v, false)
	if err != nil {
		return storage.Key{}, Manifest{}, fmt.Errorf("read manifest of %s: %w", k, err)
	}
	return k, m, nil
}

// RawValue is the current manifest's stored value, valid until Next: for walks that decode
// elsewhere (DecodeManifestView), such as the digest rebuild spreading decoding over cores.
func (i *ManifestIterator) RawValue() ([]byte, error) { return i.it.ValueAndErr() }

// DecodeManifestView decodes a stored manifest value like DecodeManifest, except that an
// inline body aliases v instead of being copied: for callers that only need the identity.
func DecodeManifestView(v []byte) (Manifest, error) { return decodeManifest(v, false) }

// Close releases the view.
func (i *ManifestIterator) Close() error {
	if err := i.it.Close(); err != nil {
		return fmt.Errorf("close manifest iterator: %w", err)
	}
	return nil
}

// ScanTombstones calls fn for every namespace tombstone, in key order. A value that fails to
// decode is passed with its error (wrapping storage.ErrCorrupt) so the caller can report it.
// The scan pages through Pebble, so fn may write.
func (db *DB) ScanTombstones(ctx context.Context, fn func(t storage.Tombstone, err error) error) error {
	prefix := []byte{prefixTombstone}
	from := prefix
	for {
		type item struct {
			t   storage.Tombstone
			err error
		}
		var page []item
		last, err := db.scan(ctx, from, prefixEnd(prefix), 256, func(k, v []byte) error {
			var it item
			tenant, namespace, ok := bytes.Cut(k[1:], []byte{0})
			if !ok {
				it.err = fmt.Errorf("decode tombstone key %q: %w: no separator", k, storage.ErrCorrupt)
			} else {
				it.t.Tenant, it.t.Namespace = string(tenant), string(namespace)
				it.t.Version, it.err = decodeVersion("tombstone", v)
				if it.err != nil {
					it.err = fmt.Errorf("tombstone of %s/%s: %w", tenant, namespace, it.err)
				}
			}
			page = append(page, it)
			return nil
		})
		if err != nil {
			return fmt.Errorf("scan tombstones: %w", err)
		}
		for _, it := range page {
			if err := fn(it.t, it.err); err != nil {
				return err
			}
		}
		if last == nil {
			return nil
		}
		from = after(last)
	}
}
