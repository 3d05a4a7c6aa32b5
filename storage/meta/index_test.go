package meta

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestStubManifestCodec(t *testing.T) {
	stub := segManifest(3, 100, "body", 42).Stub()
	stub.ContentType = "application/x-test"
	v, err := EncodeManifest(stub)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeManifest(v)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Evicted || got.Inline || got.InSegment() || got.Location != (Location{}) || got.Body != nil ||
		got.Size != 4 || got.SHA256 != sha256.Sum256([]byte("body")) || got.Version != 42 || got.ContentType != "application/x-test" {
		t.Fatalf("decoded stub = %+v", got)
	}
	for name, bad := range map[string]Manifest{
		"inline and evicted":  {Inline: true, Evicted: true},
		"stub with location":  {Evicted: true, Size: 4, Location: Location{Segment: 1, BodySize: 4, RecordSize: 10}},
		"stub with body":      {Evicted: true, Size: 1, Body: []byte("x")},
		"stub, negative size": {Evicted: true, Size: -1},
	} {
		if _, err := EncodeManifest(bad); err == nil {
			t.Fatalf("%s: encoded without error", name)
		}
	}
	// A value whose flags claim both inline and evicted is corruption, not a guess.
	p, err := unseal("manifest", v)
	if err != nil {
		t.Fatal(err)
	}
	raw := append([]byte{formatV1}, p...)
	raw[1] = flagInline | flagEvicted
	if _, err := DecodeManifest(seal(raw)); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("decode with both flags = %v, want ErrCorrupt", err)
	}
}

func TestStubHasNoSegmentIndex(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	k := key("ns", storage.KindCAS, "a")
	m := segManifest(5, 0, "body", 1)
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, m, nil) })
	if keys, _, _ := db.SegmentRecords(ctx, 5, nil, 10); len(keys) != 1 {
		t.Fatalf("segment 5 indexes %v, want the record", keys)
	}
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, m.Stub(), &m) })
	if keys, _, _ := db.SegmentRecords(ctx, 5, nil, 10); len(keys) != 0 {
		t.Fatalf("segment 5 still indexes %v after the record became a stub", keys)
	}
	got, err := db.GetManifest(k)
	if err != nil || !got.Evicted {
		t.Fatalf("GetManifest = %+v, %v; want the stub", got, err)
	}
	// Filling the stub indexes the new record; replacing a stub removes no index entry.
	filled := segManifest(9, 50, "body", 2)
	stub := got
	commit(t, db, func(b *Batch) error { return b.PutManifest(k, filled, &stub) })
	if keys, _, _ := db.SegmentRecords(ctx, 9, nil, 10); len(keys) != 1 {
		t.Fatalf("segment 9 indexes %v, want the filled record", keys)
	}
}

func TestDeleteNamespaceFuncReportsDeletions(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	old := key("ns", storage.KindCAS, "old")
	stub := key("ns", storage.KindGradle, "stub")
	kv := key("ns", storage.KindKeyValue, "doc")
	newer := key("ns", storage.KindAC, "newer")
	other := key("other", storage.KindCAS, "x")
	commit(t, db, func(b *Batch) error {
		return errors.Join(
			b.PutManifest(old, segManifest(1, 0, "old", 10), nil),
			b.PutManifest(stub, segManifest(1, 0, "s", 11).Stub(), nil),
			b.PutManifest(kv, Manifest{Inline: true, Body: []byte("{}"), Size: 2, Version: 12}, nil),
			b.PutManifest(newer, segManifest(1, 0, "n", 30), nil),
			b.PutManifest(other, segManifest(1, 0, "x", 5), nil),
		)
	})
	var deleted []string
	commit(t, db, func(b *Batch) error {
		v, err := b.DeleteNamespaceFunc(ctx, "acme", "ns", 20, func(k storage.Key, m Manifest, err error) {
			if err != nil {
				t.Errorf("deleted entry %v: %v", k, err)
			}
			if m.Body != nil {
				t.Errorf("deleted entry %v hands out its inline body", k)
			}
			deleted = append(deleted, fmt.Sprintf("%s@%d evicted=%v", k.Name, m.Version, m.Evicted))
		})
		if v != 20 {
			t.Errorf("effective tombstone %v, want 20", v)
		}
		return err
	})
	slices.Sort(deleted)
	if want := []string{"doc@12 evicted=false", "old@10 evicted=false", "stub@11 evicted=true"}; !slices.Equal(deleted, want) {
		t.Fatalf("reported %v, want %v", deleted, want)
	}
	for _, k := range []storage.Key{newer, other} {
		if _, err := db.GetManifest(k); err != nil {
			t.Fatalf("%v was deleted: %v", k, err)
		}
	}
	for _, k := range []storage.Key{old, stub, kv} {
		if _, err := db.GetManifest(k); !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("%v survived: %v", k, err)
		}
	}
}

func TestManifestIteratorIsAPointInTimeView(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	for i := range 5 {
		k := key("ns", storage.KindCAS, fmt.Sprint(i))
		commit(t, db, func(b *Batch) error { return b.PutManifest(k, segManifest(1, 0, "b", storage.Version(i+1)), nil) })
	}
	it, err := db.NewManifestIterator(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Written after the iterator was created: not part of its view.
	late := key("ns", storage.KindCAS, "late")
	commit(t, db, func(b *Batch) error { return b.PutManifest(late, segManifest(1, 0, "b", 9), nil) })
	var names []string
	for it.Next() {
		k, m, err := it.Entry()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(it.EncodedKey(), ManifestKey(k)) || m.Version == 0 {
			t.Fatalf("entry %v: encoded key %q, manifest %+v", k, it.EncodedKey(), m)
		}
		names = append(names, k.Name)
	}
	if err := errors.Join(it.Err(), it.Close()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"0", "1", "2", "3", "4"}; !slices.Equal(names, want) {
		t.Fatalf("walked %v, want %v", names, want)
	}
	// A start key is inclusive.
	it, err = db.NewManifestIterator(ctx, ManifestKey(key("ns", storage.KindCAS, "3")))
	if err != nil {
		t.Fatal(err)
	}
	names = nil
	for it.Next() {
		k, _, _ := it.Entry()
		names = append(names, k.Name)
	}
	_ = it.Close()
	if want := []string{"3", "4", "late"}; !slices.Equal(names, want) {
		t.Fatalf("walked from 3: %v, want %v", names, want)
	}
	if _, err := db.NewManifestIterator(ctx, []byte("o-not-a-manifest")); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("start outside the manifests = %v, want ErrInvalidKey", err)
	}
}

func TestScanTombstones(t *testing.T) {
	db := openTestDB(t, "")
	ctx := context.Background()
	want := []storage.Tombstone{
		{Tenant: "a", Namespace: "x", Version: 5},
		{Tenant: "ab", Namespace: "y", Version: 7},
		{Tenant: "b", Namespace: "ns with spaces", Version: 9},
	}
	for i := range 300 { // more than one page
		want = append(want, storage.Tombstone{Tenant: "c", Namespace: fmt.Sprintf("n%03d", i), Version: storage.Version(100 + i)})
	}
	for _, ts := range want {
		commit(t, db, func(b *Batch) error {
			_, err := b.DeleteNamespace(ctx, ts.Tenant, ts.Namespace, ts.Version)
			return err
		})
	}
	var got []storage.Tombstone
	err := db.ScanTombstones(ctx, func(ts storage.Tombstone, err error) error {
		if err != nil {
			return err
		}
		got = append(got, ts)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("scanned %d tombstones, want %d (first %v)", len(got), len(want), got[:min(3, len(got))])
	}
}

func TestDigestTable(t *testing.T) {
	var infos []storage.Info
	for i := range 200 {
		kind := storage.Kinds[i%len(storage.Kinds)]
		infos = append(infos, storage.Info{Key: key("ns", kind, fmt.Sprint(i)), SHA256: sha256.Sum256([]byte{byte(i)}), Version: storage.Version(i + 1)})
	}
	var a, b DigestTable
	for _, info := range infos {
		a.AddObject(info)
	}
	for i := len(infos) - 1; i >= 0; i-- {
		b.AddObject(infos[i])
	}
	da, _ := a.Digests(storage.DigestBucketBits)
	db, _ := b.Digests(storage.DigestBucketBits)
	if !bytes.Equal(da, db) || a.Objects() != 200 {
		t.Fatal("the table depends on the order of additions")
	}
	// Removing what was added restores the empty table.
	for _, info := range infos {
		b.RemoveObject(info)
	}
	if d, _ := b.Digests(storage.DigestBucketBits); b.Objects() != 0 || !bytes.Equal(d, make([]byte, len(d))) {
		t.Fatal("removing every object did not empty the table")
	}
	// Last-writer-wins kinds include the version; immutable kinds do not.
	cas := storage.Info{Key: key("ns", storage.KindCAS, "c"), SHA256: [32]byte{1}, Version: 1}
	ac := storage.Info{Key: key("ns", storage.KindAC, "c"), SHA256: [32]byte{1}, Version: 1}
	_, h1 := ObjectDigest(cas)
	cas.Version = 2
	if _, h2 := ObjectDigest(cas); h1 != h2 {
		t.Fatal("the version changed an immutable object's hash")
	}
	_, h1 = ObjectDigest(ac)
	ac.Version = 2
	if _, h2 := ObjectDigest(ac); h1 == h2 {
		t.Fatal("the version did not change a last-writer-wins object's hash")
	}
	// Merge adds a delta built elsewhere, negative counts included.
	var delta DigestTable
	delta.RemoveObject(infos[0])
	a.Merge(&delta)
	var want DigestTable
	for _, info := range infos[1:] {
		want.AddObject(info)
	}
	dm, _ := a.Digests(storage.DigestBucketBits)
	dw, _ := want.Digests(storage.DigestBucketBits)
	if !bytes.Equal(dm, dw) || a.Objects() != want.Objects() {
		t.Fatal("merging a removal delta differs from never adding the object")
	}
	// Coarser resolutions equal a table bucketed directly at that resolution.
	for _, bits := range []uint32{0, 1, 5, 9} {
		coarse, err := want.Digests(bits)
		if err != nil {
			t.Fatal(err)
		}
		direct := make([]byte, (1<<bits)*DigestSize)
		for _, info := range infos[1:] {
			ek := ManifestKey(info.Key)
			h := EntryHash(ek, info.Key.Kind, info.SHA256, info.Version)
			off := int(DigestBucket(ek, bits)) * DigestSize
			for i := range h {
				direct[off+i] ^= h[i]
			}
		}
		if !bytes.Equal(coarse, direct) {
			t.Fatalf("folding to %d bits differs from bucketing at %d bits", bits, bits)
		}
	}
	if _, err := want.Digests(storage.DigestBucketBits + 1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("Digests(%d) = %v, want ErrInvalidKey", storage.DigestBucketBits+1, err)
	}
}
