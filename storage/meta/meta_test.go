package meta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"

	"github.com/cockroachdb/pebble/v2"

	"github.com/kuracache/kura/storage"
)

func openTestDB(t *testing.T, dir string) *DB {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	db, err := Open(Options{Dir: dir, BlockCacheBytes: 1 << 20, MemTableBytes: 1 << 20, MemTableStopWritesThreshold: 4, MaxOpenFiles: 64, CompactionConcurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !db.closed.Load() {
			if err := db.Close(); err != nil {
				t.Error(err)
			}
		}
	})
	return db
}

func key(ns string, kind storage.Kind, name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: name}
}

func segManifest(seg uint64, off int64, body string, v storage.Version) Manifest {
	return Manifest{
		Location: Location{Segment: seg, Offset: off, BodySize: int64(len(body)), RecordSize: int64(len(body)) + 100},
		Size:     int64(len(body)), ContentType: "application/octet-stream", SHA256: sha256.Sum256([]byte(body)), Version: v,
	}
}

func commit(t *testing.T, db *DB, fn func(b *Batch) error) {
	t.Helper()
	b := db.NewBatch()
	defer b.Close()
	if err := fn(b); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestManifestKeyRoundTrip(t *testing.T) {
	for _, k := range []storage.Key{
		key("ns", storage.KindCAS, "abc"),
		{Tenant: "t", Namespace: "n", Kind: storage.KindKeyValue, Name: "ünïcode/with/slashes"},
	} {
		got, err := DecodeManifestKey(ManifestKey(k))
		if err != nil || got != k {
			t.Fatalf("round trip %v: got %v, %v", k, got, err)
		}
	}
	for _, bad := range [][]byte{nil, []byte("x"), []byte("mtenant\x00ns"), []byte("mt\x00n\x00nokind\x00x"), []byte("mt\x00n\x00cas\x00")} {
		if _, err := DecodeManifestKey(bad); !errors.Is(err, storage.ErrCorrupt) {
			t.Errorf("DecodeManifestKey(%q) = %v, want ErrCorrupt", bad, err)
		}
	}
}

func TestManifestCodec(t *testing.T) {
	cases := []Manifest{
		segManifest(7, 4096, "hello", storage.MakeVersion(1700000000000, 3)),
		{Inline: true, Body: []byte(`{"a":1}`), Size: 7, ContentType: "application/json", Version: 9},
		{Inline: true, Body: []byte{}, Size: 0, Version: 1},
	}
	for i, m := range cases {
		v, err := EncodeManifest(m)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		got, err := DecodeManifest(v)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		if got.Inline != m.Inline || got.Location != m.Location || !bytes.Equal(got.Body, m.Body) || got.Size != m.Size ||
			got.ContentType != m.ContentType || got.SHA256 != m.SHA256 || got.Version != m.Version {
			t.Fatalf("case %d: got %+v want %+v", i, got, m)
		}
		// Every single-bit flip is caught by the CRC (or the framing) and reported as corrupt.
		for pos := range v {
			bad := bytes.Clone(v)
			bad[pos] ^= 0x10
			if _, err := DecodeManifest(bad); !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("case %d: flipping byte %d gave %v, want ErrCorrupt", i, pos, err)
			}
		}
		if _, err := DecodeManifest(v[:len(v)-1]); !errors.Is(err, storage.ErrCorrupt) {
			t.Fatalf("case %d: truncated value decoded: %v", i, err)
		}
	}
	if _, err := EncodeManifest(Manifest{Size: 3, Location: Location{BodySize: 2, RecordSize: 9}}); err == nil {
		t.Fatal("inconsistent location encoded without error")
	}
	if _, err := EncodeManifest(Manifest{Inline: true, Size: 3, Body: []byte("ab")}); err == nil {
		t.Fatal("inconsistent inline body encoded without error")
	}
}

func TestOpenRejectsNegativeOptions(t *testing.T) {
	if _, err := Open(Options{Dir: t.TempDir(), BlockCacheBytes: -1}); err == nil {
		t.Fatal("negative cache size accepted")
	}
	if _, err := Open(Options{}); err == nil {
		t.Fatal("empty dir accepted")
	}
}

func TestManifestsPersistAndIndex(t *testing.T) {
	dir := t.TempDir()
	db := openTestDB(t, dir)
	k := key("ns", storage.KindAC, "a")
	if _, err := db.GetManifest(k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("missing manifest: %v", err)
	}
	m1 := segManifest(1, 0, "one", 10)
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, m1, nil) })
	m2 := segManifest(2, 64, "two!", 11)
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, m2, &m1) })

	ctx := context.Background()
	if has, err := db.SegmentHasRecords(ctx, 1); err != nil || has {
		t.Fatalf("segment 1 index still lists the replaced record: %v %v", has, err)
	}
	keys, _, err := db.SegmentRecords(ctx, 2, nil, 10)
	if err != nil || len(keys) != 1 || keys[0] != k {
		t.Fatalf("segment 2 index = %v, %v", keys, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openTestDB(t, dir)
	got, err := db.GetManifest(k)
	if err != nil || got.Location != m2.Location || got.Version != 11 {
		t.Fatalf("after reopen: %+v %v", got, err)
	}
	commit(t, db, func(b *Batch) error { return b.DeleteManifest(k, &got) })
	if _, err := db.GetManifest(k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("deleted manifest: %v", err)
	}
	if has, _ := db.SegmentHasRecords(ctx, 2); has {
		t.Fatal("index entry survived DeleteManifest")
	}
}

func TestCorruptValueIsReported(t *testing.T) {
	db := openTestDB(t, "")
	k := key("ns", storage.KindCAS, "x")
	v, _ := EncodeManifest(segManifest(1, 0, "abc", 5))
	v[3] ^= 0xff
	if err := db.pdb.Set(ManifestKey(k), v, pebble.Sync); err != nil {
		t.Fatal(err)
	}
	if _, err := db.GetManifest(k); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("GetManifest of damaged value = %v, want ErrCorrupt", err)
	}
	entries, _, err := db.ScanManifests(context.Background(), nil, nil, 10)
	if err != nil || len(entries) != 1 || !errors.Is(entries[0].Err, storage.ErrCorrupt) {
		t.Fatalf("scan of damaged value: %+v %v", entries, err)
	}
}

func TestSegmentRecordsPaging(t *testing.T) {
	db := openTestDB(t, "")
	const n = 25
	commit(t, db, func(b *Batch) error {
		for i := range n {
			if err := b.PutManifest(key("ns", storage.KindCAS, fmt.Sprintf("k%03d", i)), segManifest(3, int64(i)*100, "x", 1), nil); err != nil {
				return err
			}
		}
		// A neighbour segment must not leak into segment 3's listing.
		return b.PutManifest(key("ns", storage.KindCAS, "other"), segManifest(4, 0, "y", 1), nil)
	})
	ctx := context.Background()
	var all []storage.Key
	var cursor []byte
	for {
		keys, last, err := db.SegmentRecords(ctx, 3, cursor, 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 {
			break
		}
		all = append(all, keys...)
		cursor = last
	}
	if len(all) != n {
		t.Fatalf("paged %d records, want %d", len(all), n)
	}
	for i, k := range all {
		if k.Name != fmt.Sprintf("k%03d", i) {
			t.Fatalf("record %d = %v (out of order or duplicated)", i, k)
		}
	}
	commit(t, db, func(b *Batch) error { return b.DropSegmentIndex(3) })
	if has, _ := db.SegmentHasRecords(ctx, 3); has {
		t.Fatal("DropSegmentIndex left entries")
	}
	if has, _ := db.SegmentHasRecords(ctx, 4); !has {
		t.Fatal("DropSegmentIndex removed a neighbour's entries")
	}
}

func TestDeleteNamespace(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	put := func(k storage.Key, v storage.Version) {
		commit(t, db, func(b *Batch) error { return b.PutManifest(k, segManifest(1, 0, "b", v), nil) })
	}
	// Interleave old and new versions across kinds so deletion needs several runs.
	put(key("app", storage.KindAC, "a"), 5)
	put(key("app", storage.KindCAS, "b"), 50) // newer than the tombstone: kept
	put(key("app", storage.KindCAS, "c"), 5)
	put(key("app", storage.KindGradle, "d"), 6)
	put(key("app", storage.KindXcode, "e"), 60) // kept
	put(key("app", storage.KindXcode, "f"), 7)
	put(key("app2", storage.KindCAS, "b"), 1) // other namespace with a shared prefix: untouched
	put(storage.Key{Tenant: "other", Namespace: "app", Kind: storage.KindCAS, Name: "b"}, 1)
	commit(t, db, func(b *Batch) error {
		v, err := b.DeleteNamespace(ctx, "acme", "app", 20)
		if v != 20 {
			t.Errorf("effective tombstone %d, want 20", v)
		}
		return err
	})
	for _, c := range []struct {
		k    storage.Key
		want bool
	}{
		{key("app", storage.KindAC, "a"), false}, {key("app", storage.KindCAS, "b"), true},
		{key("app", storage.KindCAS, "c"), false}, {key("app", storage.KindGradle, "d"), false},
		{key("app", storage.KindXcode, "e"), true}, {key("app", storage.KindXcode, "f"), false},
		{key("app2", storage.KindCAS, "b"), true},
		{storage.Key{Tenant: "other", Namespace: "app", Kind: storage.KindCAS, Name: "b"}, true},
	} {
		_, err := db.GetManifest(c.k)
		if got := err == nil; got != c.want {
			t.Errorf("%v present=%v want %v (%v)", c.k, got, c.want, err)
		}
	}
	if v, ok, err := db.GetTombstone("acme", "app"); err != nil || !ok || v != 20 {
		t.Fatalf("tombstone = %v %v %v", v, ok, err)
	}
	// An older tombstone never lowers the recorded one.
	commit(t, db, func(b *Batch) error {
		v, err := b.DeleteNamespace(ctx, "acme", "app", 3)
		if v != 20 {
			t.Errorf("effective tombstone %d, want 20", v)
		}
		return err
	})
	if _, err := db.GetManifest(key("app", storage.KindCAS, "b")); err != nil {
		t.Fatalf("an older tombstone deleted a newer object: %v", err)
	}
	b := db.NewBatch()
	defer b.Close()
	if _, err := b.DeleteNamespace(ctx, "", "app", 1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("empty tenant: %v", err)
	}
}

func TestUploads(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	u := Upload{Key: key("ns", storage.KindModule, "builds/h/n"), ContentType: "application/zip", CreatedMillis: 1234,
		Parts: map[int]Part{2: {Size: 10, File: "2.aa"}, 1: {Size: 5, File: "1.bb"}}}
	commit(t, db, func(b *Batch) error { return b.PutUpload("id-1", u) })
	commit(t, db, func(b *Batch) error { return b.PutUpload("id-2", Upload{Key: u.Key, Parts: map[int]Part{}}) })
	got, err := db.GetUpload("id-1")
	if err != nil || got.Key != u.Key || got.ContentType != u.ContentType || got.CreatedMillis != 1234 || len(got.Parts) != 2 || got.Parts[2] != u.Parts[2] {
		t.Fatalf("GetUpload = %+v, %v", got, err)
	}
	if got.Total() != 15 || fmt.Sprint(got.PartNumbers()) != "[1 2]" {
		t.Fatalf("total %d parts %v", got.Total(), got.PartNumbers())
	}
	if _, err := db.GetUpload("nope"); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("unknown upload: %v", err)
	}
	if _, err := db.GetUpload(""); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("empty upload id: %v", err)
	}
	var ids []string
	if err := db.ScanUploads(ctx, func(id string, _ Upload, err error) error {
		if err != nil {
			return err
		}
		ids = append(ids, id)
		return nil
	}); err != nil || fmt.Sprint(ids) != "[id-1 id-2]" {
		t.Fatalf("ScanUploads = %v, %v", ids, err)
	}
	commit(t, db, func(b *Batch) error { return b.DeleteUpload("id-1") })
	if _, err := db.GetUpload("id-1"); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("deleted upload: %v", err)
	}
	v, _ := EncodeUpload(u)
	for pos := range v {
		bad := bytes.Clone(v)
		bad[pos] ^= 1
		if _, err := DecodeUpload(bad); !errors.Is(err, storage.ErrCorrupt) {
			t.Fatalf("flipped byte %d: %v", pos, err)
		}
	}
}

func TestOutbox(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	commit(t, db, func(b *Batch) error {
		for seq := uint64(1); seq <= 10; seq++ {
			for _, peer := range []string{"node-a", "node-b", "node-a2"} {
				if err := b.PutOutbox(peer, seq, []byte(fmt.Sprintf("%s-%d", peer, seq))); err != nil {
					return err
				}
			}
		}
		return nil
	})
	page, err := db.ScanOutbox(ctx, "node-a", 0, 4)
	if err != nil || len(page) != 4 || page[0].Seq != 1 || string(page[3].Value) != "node-a-4" {
		t.Fatalf("first page = %+v, %v", page, err)
	}
	page, err = db.ScanOutbox(ctx, "node-a", 8, 100)
	if err != nil || len(page) != 2 || page[0].Seq != 9 || page[1].Seq != 10 {
		t.Fatalf("tail page = %+v, %v", page, err)
	}
	commit(t, db, func(b *Batch) error {
		if err := b.DeleteOutboxThrough("node-a", 6); err != nil {
			return err
		}
		return b.DeleteOutbox("node-a", 8)
	})
	page, err = db.ScanOutbox(ctx, "node-a", 0, 100)
	var seqs []uint64
	for _, e := range page {
		seqs = append(seqs, e.Seq)
	}
	if err != nil || fmt.Sprint(seqs) != "[7 9 10]" {
		t.Fatalf("after deletes: %v, %v", seqs, err)
	}
	// node-a's deletions must not touch node-a2 (a peer name with node-a as prefix).
	if page, _ := db.ScanOutbox(ctx, "node-a2", 0, 100); len(page) != 10 {
		t.Fatalf("node-a2 has %d entries, want 10", len(page))
	}
	peers, err := db.OutboxPeers(ctx)
	if err != nil || fmt.Sprint(peers) != "[node-a node-a2 node-b]" {
		t.Fatalf("peers = %v, %v", peers, err)
	}
	commit(t, db, func(b *Batch) error { return b.DeleteOutboxPeer("node-b") })
	if page, _ := db.ScanOutbox(ctx, "node-b", 0, 100); len(page) != 0 {
		t.Fatalf("node-b still has %d entries", len(page))
	}
	if _, err := db.ScanOutbox(ctx, "bad\x00peer", 0, 1); err == nil {
		t.Fatal("peer with NUL accepted")
	}
	if page, err := db.ScanOutbox(ctx, "node-a", ^uint64(0), 1); err != nil || len(page) != 0 {
		t.Fatalf("scan after max seq: %v %v", page, err)
	}
}

func TestScanManifestsPaging(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	commit(t, db, func(b *Batch) error {
		for i := range 30 {
			if err := b.PutManifest(key("ns", storage.KindCAS, fmt.Sprintf("%02d", i)), segManifest(1, 0, "z", 1), nil); err != nil {
				return err
			}
		}
		return b.PutOutbox("peer", 1, []byte("not a manifest"))
	})
	var got []string
	var start []byte
	pages := 0
	for {
		entries, next, err := db.ScanManifests(ctx, start, nil, 8)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, e := range entries {
			if e.Err != nil {
				t.Fatal(e.Err)
			}
			got = append(got, e.Key.Name)
		}
		if next == nil {
			break
		}
		start = next
	}
	if len(got) != 30 || got[0] != "00" || got[29] != "29" || pages != 4 {
		t.Fatalf("scanned %d (%v) in %d pages", len(got), got, pages)
	}
	// A bounded range returns only its keys.
	entries, next, err := db.ScanManifests(ctx, ManifestKey(key("ns", storage.KindCAS, "10")), ManifestKey(key("ns", storage.KindCAS, "13")), 0)
	if err != nil || len(entries) != 3 || next != nil {
		t.Fatalf("range scan: %d entries, next %q, %v", len(entries), next, err)
	}
}

func TestMetrics(t *testing.T) {
	db := openTestDB(t, "")
	m := db.Metrics()
	if m.BlockCacheCapacityBytes != 1<<20 || m.MemTableCapacityBytes != 4<<20 {
		t.Fatalf("capacities = %+v", m)
	}
	if m.MemTableUsageBytes <= 0 {
		t.Fatalf("memtable usage = %d, want > 0", m.MemTableUsageBytes)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err == nil {
		t.Fatal("second Close succeeded")
	}
}

func FuzzDecodeManifest(f *testing.F) {
	v, _ := EncodeManifest(segManifest(1, 2, "abc", 3))
	f.Add(v)
	v, _ = EncodeManifest(Manifest{Inline: true, Body: []byte("{}"), Size: 2})
	f.Add(v)
	v, _ = EncodeManifest(segManifest(1, 2, "abc", 3).Stub())
	f.Add(v)
	withAttrs := segManifest(1, 2, "abc", 3)
	withAttrs.Attributes, _ = storage.NewAttributes(map[string]string{"turbo.tag": "t"})
	v, _ = EncodeManifest(withAttrs)
	f.Add(v)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := DecodeManifest(b)
		if err != nil {
			if !errors.Is(err, storage.ErrCorrupt) {
				t.Fatalf("error does not wrap ErrCorrupt: %v", err)
			}
			return
		}
		again, err := EncodeManifest(m)
		if err != nil {
			t.Fatalf("decoded manifest does not re-encode: %v", err)
		}
		if _, err := DecodeManifest(again); err != nil {
			t.Fatal(err)
		}
	})
}

func FuzzDecodeUpload(f *testing.F) {
	v, _ := EncodeUpload(Upload{Key: key("n", storage.KindModule, "k"), Parts: map[int]Part{1: {Size: 3, File: "f"}}})
	f.Add(v)
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := DecodeUpload(b); err != nil && !errors.Is(err, storage.ErrCorrupt) {
			t.Fatalf("error does not wrap ErrCorrupt: %v", err)
		}
	})
}
