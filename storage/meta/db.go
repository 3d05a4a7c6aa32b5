package meta

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/kuracache/kura/storage"
)

// Options configure the Pebble instance. Zero values take Pebble's defaults. They map onto the
// KURA_METADATA_STORE_* variables.
type Options struct {
	// Dir holds the Pebble files (created if missing).
	Dir string
	// BlockCacheBytes sizes the block cache (KURA_METADATA_STORE_READ_CACHE_BYTES).
	BlockCacheBytes int64
	// MemTableBytes is the steady-state memtable size (KURA_METADATA_STORE_WRITE_BUFFER_BYTES).
	MemTableBytes int64
	// MemTableStopWritesThreshold caps queued memtables before writes stall
	// (KURA_METADATA_STORE_MAX_WRITE_BUFFERS).
	MemTableStopWritesThreshold int
	// MaxOpenFiles is Pebble's soft limit on open files (KURA_METADATA_STORE_MAX_OPEN_FILES).
	MaxOpenFiles int
	// CompactionConcurrency is the upper bound of concurrent compactions
	// (KURA_METADATA_STORE_MAX_BACKGROUND_JOBS).
	CompactionConcurrency int
	// Logger receives Pebble's own log lines (at debug level for info, error for errors).
	Logger *slog.Logger
}

// DB is the metadata store. It is safe for concurrent use.
type DB struct {
	pdb        *pebble.DB
	opts       pebble.Options
	closed     atomic.Bool
	tombstones tombstoneMirror
}

// Metrics is the subset of Pebble's metrics that Kura exports as gauges.
type Metrics struct {
	BlockCacheUsageBytes    int64
	BlockCacheCapacityBytes int64
	BlockCacheHits          int64
	BlockCacheMisses        int64
	MemTableUsageBytes      int64
	MemTableCapacityBytes   int64
	MemTableCount           int64
	// DiskUsageBytes is the size of all Pebble files (WAL, sstables, manifests).
	DiskUsageBytes int64
}

// Open opens (or creates) the store in opts.Dir.
func Open(opts Options) (*DB, error) {
	if opts.Dir == "" {
		return nil, errors.New("open metadata store: no directory given")
	}
	for name, v := range map[string]int64{
		"block cache bytes": opts.BlockCacheBytes, "memtable bytes": opts.MemTableBytes,
		"memtable stop-writes threshold": int64(opts.MemTableStopWritesThreshold),
		"max open files":                 int64(opts.MaxOpenFiles), "compaction concurrency": int64(opts.CompactionConcurrency),
	} {
		if v < 0 {
			return nil, fmt.Errorf("open metadata store: %s must not be negative (got %d)", name, v)
		}
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	po := pebble.Options{
		CacheSize:                   opts.BlockCacheBytes,
		MemTableSize:                uint64(opts.MemTableBytes),
		MemTableStopWritesThreshold: opts.MemTableStopWritesThreshold,
		MaxOpenFiles:                opts.MaxOpenFiles,
		// New stores use the newest on-disk format; existing ones are upgraded by Pebble.
		FormatMajorVersion: pebble.FormatNewest,
		Logger:             pebbleLogger{logger.With("component", "pebble")},
	}
	if c := opts.CompactionConcurrency; c > 0 {
		po.CompactionConcurrencyRange = func() (int, int) { return 1, c }
	}
	pdb, err := pebble.Open(opts.Dir, &po)
	if err != nil {
		return nil, fmt.Errorf("open metadata store %s: %w", opts.Dir, err)
	}
	// Pebble filled in its defaults; keep them to report capacities.
	db := &DB{pdb: pdb, opts: po}
	if err := db.tombstones.load(context.Background(), db); err != nil {
		_ = pdb.Close()
		return nil, fmt.Errorf("open metadata store %s: %w", opts.Dir, err)
	}
	return db, nil
}

// Close flushes nothing extra (every acknowledged write was synced) and closes Pebble. Further
// calls fail.
func (db *DB) Close() error {
	if !db.closed.CompareAndSwap(false, true) {
		return errors.New("close metadata store: already closed")
	}
	if err := db.pdb.Close(); err != nil {
		return fmt.Errorf("close metadata store: %w", err)
	}
	return nil
}

// Metrics samples Pebble's memory use for gauges.
func (db *DB) Metrics() Metrics {
	m := db.pdb.Metrics()
	capacity := db.opts.CacheSize
	if capacity == 0 {
		capacity = 8 << 20 // Pebble's default when CacheSize is unset
	}
	memtable := int64(db.opts.MemTableSize)
	if memtable == 0 {
		memtable = 4 << 20
	}
	stop := int64(db.opts.MemTableStopWritesThreshold)
	if stop == 0 {
		stop = 2
	}
	return Metrics{
		BlockCacheUsageBytes:    m.BlockCache.Size,
		BlockCacheCapacityBytes: capacity,
		BlockCacheHits:          m.BlockCache.Hits,
		BlockCacheMisses:        m.BlockCache.Misses,
		MemTableUsageBytes:      int64(m.MemTable.Size),
		MemTableCapacityBytes:   memtable * stop,
		MemTableCount:           m.MemTable.Count,
		DiskUsageBytes:          int64(m.DiskSpaceUsage()),
	}
}

// get returns a copy of the value at key, or (nil, false).
func (db *DB) get(key []byte) ([]byte, bool, error) {
	v, closer, err := db.pdb.Get(key)
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	out := bytes.Clone(v)
	if err := closer.Close(); err != nil {
		return nil, false, err
	}
	return out, true, nil
}

// GetManifest returns the manifest of k: an error wrapping storage.ErrNotFound when there is
// none, or storage.ErrCorrupt when the stored value fails its checks.
func (db *DB) GetManifest(k storage.Key) (Manifest, error) {
	v, ok, err := db.get(ManifestKey(k))
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest of %s: %w", k, err)
	}
	if !ok {
		return Manifest{}, &manifestNotFound{k}
	}
	m, err := DecodeManifest(v)
	if err != nil {
		return Manifest{}, fmt.Errorf("read manifest of %s: %w", k, err)
	}
	return m, nil
}

// manifestNotFound is GetManifest's miss. Every write of a new key asks for its manifest (the
// first-writer check, then the commit's), so the miss is formatted only when printed: a
// fmt.Errorf per miss was a tenth of the CPU of a small Put.
type manifestNotFound struct{ k storage.Key }

func (e *manifestNotFound) Error() string {
	return "read manifest of " + e.k.String() + ": " + storage.ErrNotFound.Error()
}

func (e *manifestNotFound) Unwrap() error { return storage.ErrNotFound }

// GetTombstone returns the namespace's tombstone version, or ok=false when it has none.
// It answers from memory (tombstoneMirror) unless the namespace's tombstone is in doubt.
func (db *DB) GetTombstone(tenant, namespace string) (v storage.Version, ok bool, err error) {
	if v, ok, fromPebble := db.tombstones.get(tenant, namespace); !fromPebble {
		return v, ok, nil
	}
	raw, ok, err := db.get(tombstoneKey(tenant, namespace))
	if err != nil || !ok {
		if err != nil {
			err = fmt.Errorf("read tombstone of %s/%s: %w", tenant, namespace, err)
		}
		return 0, false, err
	}
	v, err = decodeVersion("tombstone", raw)
	if err != nil {
		return 0, false, fmt.Errorf("read tombstone of %s/%s: %w", tenant, namespace, err)
	}
	return v, true, nil
}

// GetUpload returns the upload's state or an error wrapping storage.ErrUploadNotFound.
func (db *DB) GetUpload(id string) (Upload, error) {
	if err := validateUploadID(id); err != nil {
		return Upload{}, err
	}
	raw, ok, err := db.get(uploadKey(id))
	if err != nil {
		return Upload{}, fmt.Errorf("read upload %s: %w", id, err)
	}
	if !ok {
		return Upload{}, fmt.Errorf("read upload %s: %w", id, storage.ErrUploadNotFound)
	}
	u, err := DecodeUpload(raw)
	if err != nil {
		return Upload{}, fmt.Errorf("read upload %s: %w", id, err)
	}
	return u, nil
}

// scan visits up to limit entries with lower <= key < upper in key order (limit <= 0: all).
// fn gets views valid only during the call. It returns the key after which a following page
// starts, or nil when the range is exhausted.
func (db *DB) scan(ctx context.Context, lower, upper []byte, limit int, fn func(k, v []byte) error) (last []byte, err error) {
	it, err := db.pdb.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, err
	}
	defer func() {
		if cerr := it.Close(); err == nil && cerr != nil {
			err = cerr
		}
	}()
	n := 0
	for valid := it.First(); valid; valid = it.Next() {
		if limit > 0 && n == limit {
			return last, nil
		}
		if n%256 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, err
		}
		if err := fn(it.Key(), v); err != nil {
			return nil, err
		}
		last = append(last[:0], it.Key()...)
		n++
	}
	return nil, it.Error()
}

// after returns the smallest key greater than k.
func after(k []byte) []byte {
	return append(bytes.Clone(k), 0)
}

// ManifestEntry is one manifest met by ScanManifests. Err is set (wrapping storage.ErrCorrupt)
// when the key or value could not be decoded; Key and Manifest are then unreliable.
type ManifestEntry struct {
	EncodedKey []byte
	Key        storage.Key
	Manifest   Manifest
	Err        error
}

// ScanManifests returns up to limit manifests with start <= encoded key < end in key order
// (start nil: from the first manifest; end nil: to the last; limit <= 0: 1000). next is the
// start of the following page, nil when the range is exhausted. Used for anti-entropy range
// digests and bootstrap paging; memory stays bounded by limit.
func (db *DB) ScanManifests(ctx context.Context, start, end []byte, limit int) (entries []ManifestEntry, next []byte, err error) {
	lower, upper := []byte{prefixManifest}, []byte{prefixManifest + 1}
	if start != nil && bytes.Compare(start, lower) > 0 {
		lower = start
	}
	if end != nil && bytes.Compare(end, upper) < 0 {
		upper = end
	}
	if bytes.Compare(lower, upper) >= 0 {
		return nil, nil, nil
	}
	if limit <= 0 {
		limit = 1000
	}
	last, err := db.scan(ctx, lower, upper, limit, func(k, v []byte) error {
		e := ManifestEntry{EncodedKey: bytes.Clone(k)}
		if e.Key, e.Err = DecodeManifestKey(k); e.Err == nil {
			e.Manifest, e.Err = DecodeManifest(v)
		}
		entries = append(entries, e)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("scan manifests: %w", err)
	}
	if last != nil {
		next = after(last)
	}
	return entries, next, nil
}

// SegmentRecords lists up to limit manifest keys recorded in segment seg's index, starting
// after the encoded manifest key afterKey (nil: from the start). An empty result means the
// index is exhausted. The index may name keys whose manifests moved or were deleted: callers
// check the manifest before acting.
func (db *DB) SegmentRecords(ctx context.Context, seg uint64, afterKey []byte, limit int) ([]storage.Key, []byte, error) {
	prefix := segIndexPrefix(seg)
	lower := prefix
	if afterKey != nil {
		lower = after(append(bytes.Clone(prefix), afterKey...))
	}
	var keys []storage.Key
	var last []byte
	_, err := db.scan(ctx, lower, prefixEnd(prefix), limit, func(k, _ []byte) error {
		last = bytes.Clone(k[len(prefix):])
		key, err := DecodeManifestKey(last)
		if err != nil {
			return err
		}
		keys = append(keys, key)
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("list records of segment %d: %w", seg, err)
	}
	return keys, last, nil
}

// SegmentHasRecords reports whether seg's index has any entry.
func (db *DB) SegmentHasRecords(ctx context.Context, seg uint64) (bool, error) {
	keys, _, err := db.SegmentRecords(ctx, seg, nil, 1)
	return len(keys) > 0, err
}

// ScanUploads calls fn for every multipart upload. A value that fails to decode is passed with
// its error (wrapping storage.ErrCorrupt) so the caller can discard it. The iteration holds no
// lock; fn may write.
func (db *DB) ScanUploads(ctx context.Context, fn func(id string, u Upload, err error) error) error {
	prefix := []byte{prefixUpload}
	var from []byte = prefix
	for {
		type item struct {
			id  string
			u   Upload
			err error
		}
		var page []item
		last, err := db.scan(ctx, from, prefixEnd(prefix), 256, func(k, v []byte) error {
			u, err := DecodeUpload(v)
			page = append(page, item{id: string(k[1:]), u: u, err: err})
			return nil
		})
		if err != nil {
			return fmt.Errorf("scan uploads: %w", err)
		}
		for _, it := range page {
			if err := fn(it.id, it.u, it.err); err != nil {
				return err
			}
		}
		if last == nil {
			return nil
		}
		from = after(last)
	}
}

// OutboxEntry is one queued replication item.
type OutboxEntry struct {
	Seq   uint64
	Value []byte
}

// ScanOutbox returns up to limit entries (limit <= 0: 1000) of peer's queue with a sequence
// number greater than afterSeq, in order. A damaged value is returned as an error wrapping
// storage.ErrCorrupt together with the entries before it.
func (db *DB) ScanOutbox(ctx context.Context, peer string, afterSeq uint64, limit int) ([]OutboxEntry, error) {
	if err := validatePeer(peer); err != nil {
		return nil, err
	}
	if limit <= 0 {
		limit = 1000
	}
	if afterSeq == ^uint64(0) {
		return nil, nil
	}
	prefix := outboxPrefix(peer)
	lower := outboxKey(peer, afterSeq+1)
	var out []OutboxEntry
	_, err := db.scan(ctx, lower, prefixEnd(prefix), limit, func(k, v []byte) error {
		if len(k) != len(prefix)+8 {
			return fmt.Errorf("%w: outbox key %q has a bad length", storage.ErrCorrupt, k)
		}
		seq := binary.BigEndian.Uint64(k[len(prefix):])
		p, err := unseal("outbox entry", v)
		if err != nil {
			return fmt.Errorf("peer %s seq %d: %w", peer, seq, err)
		}
		out = append(out, OutboxEntry{Seq: seq, Value: bytes.Clone(p)})
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("scan outbox: %w", err)
	}
	return out, nil
}

// OutboxPeers lists the peers that have queued entries, seeking from peer to peer so a deep
// queue costs one step.
func (db *DB) OutboxPeers(ctx context.Context) ([]string, error) {
	lower, upper := []byte{prefixOutbox}, []byte{prefixOutbox + 1}
	it, err := db.pdb.NewIterWithContext(ctx, &pebble.IterOptions{LowerBound: lower, UpperBound: upper})
	if err != nil {
		return nil, fmt.Errorf("list outbox peers: %w", err)
	}
	var peers []string
	for valid := it.First(); valid; {
		k := it.Key()
		i := bytes.IndexByte(k[1:], 0)
		if i < 0 {
			_ = it.Close()
			return nil, fmt.Errorf("list outbox peers: %w: key %q", storage.ErrCorrupt, k)
		}
		peer := string(k[1 : 1+i])
		peers = append(peers, peer)
		valid = it.SeekGE(prefixEnd(outboxPrefix(peer)))
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("list outbox peers: %w", err)
	}
	return peers, nil
}

// pebbleLogger routes Pebble's log lines into slog.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble on unrecoverable invariant violations; it must not return.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.l.Error(msg)
	panic("pebble: " + msg)
}
