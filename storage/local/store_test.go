package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/segment"
	"github.com/kuracache/kura/storage/storagetest"
)

func cas(name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: name}
}

func put(t testing.TB, s *Store, key storage.Key, body []byte) storage.PutResult {
	t.Helper()
	res, err := s.Put(ctx(t), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))})
	if err != nil {
		t.Fatalf("Put(%v): %v", key, err)
	}
	return res
}

func read(t testing.TB, s *Store, key storage.Key) ([]byte, error) {
	t.Helper()
	r, err := s.Open(ctx(t), key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func segmentPath(s *Store, seg uint64) string {
	return filepath.Join(s.opts.DataDir, "segments", segment.ID(seg).String()+".seg")
}

func TestDataDirLock(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	second := opts
	second.Registerer = nil
	_, err := Open(second)
	if !errors.Is(err, ErrDataDirLocked) {
		t.Fatalf("second Open = %v, want ErrDataDirLocked", err)
	}
	want := fmt.Sprintf("data directory %s is locked by another running kura process", opts.DataDir)
	if err.Error() != want {
		t.Fatalf("error text %q, want %q", err, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Released on Close: the directory opens again.
	openStore(t, second)
}

func TestReopenKeepsEverything(t *testing.T) {
	opts := testOpts(t)
	opts.SpillThreshold = 64 << 10
	s := openStore(t, opts)
	bodies := map[storage.Key][]byte{}
	for i, size := range []int{0, 10, 64 << 10, 200 << 10, 3 << 20} {
		key := cas(fmt.Sprintf("obj-%d", i))
		bodies[key] = storagetest.Bytes(uint64(i), size)
		put(t, s, key, bodies[key])
	}
	kv := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "doc"}
	bodies[kv] = []byte(`{"entries":[]}`)
	put(t, s, kv, bodies[kv])
	tombV := storage.MakeVersion(time.Now().Add(time.Hour).UnixMilli(), 0)
	if err := s.DeleteNamespace(ctx(t), "acme", "gone", tombV); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Stat(ctx(t), kv); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Stat after Close = %v, want ErrUnavailable", err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	for key, body := range bodies {
		got, err := read(t, s, key)
		if err != nil || !bytes.Equal(got, body) {
			t.Fatalf("%v after reopen: %d bytes, %v", key, len(got), err)
		}
	}
	_, err := s.Put(ctx(t), storage.Key{Tenant: "acme", Namespace: "gone", Kind: storage.KindCAS, Name: "x"},
		strings.NewReader("x"), storage.PutOptions{Size: 1, Version: tombV - 1})
	if !errors.Is(err, storage.ErrStale) {
		t.Fatalf("tombstone lost on reopen: %v", err)
	}
}

func TestCorruptBlockIsNeverServed(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	key := cas("victim")
	body := storagetest.Bytes(99, 200<<10)
	put(t, s, key, body)
	m, err := s.db.GetManifest(key)
	if err != nil {
		t.Fatal(err)
	}
	// Flip one byte in the second 64 KiB block of the body.
	flipByte(t, segmentPath(s, m.Location.Segment), m.Location.Offset+70000)

	r, err := s.Open(ctx(t), key, 0, -1)
	if err != nil {
		t.Fatalf("Open: %v (the footer is intact, so opening must work)", err)
	}
	got, err := io.ReadAll(r)
	_ = r.Close()
	if !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("reading a damaged record: %v, want ErrCorrupt", err)
	}
	if len(got) > 64<<10 || !bytes.Equal(got, body[:len(got)]) {
		t.Fatalf("served %d bytes before the error; at most the intact first block (65536) may be served", len(got))
	}
	for _, err := range []error{statErr(t, s, key), openErr(t, s, key)} {
		if !errors.Is(err, storage.ErrNotFound) {
			t.Fatalf("after corruption: %v, want ErrNotFound", err)
		}
	}
	if missing, _ := s.FindMissing(ctx(t), []storage.Key{key}); len(missing) != 1 {
		t.Fatal("FindMissing does not report the dropped record")
	}
	if v := counterValue(s.metrics.corrupt); v != 1 {
		t.Fatalf("kura_storage_corrupt_records_total = %v, want 1", v)
	}
	// The drop is reported synchronously, before the failing read returns.
	select {
	case got := <-s.Corrupted():
		if got != key {
			t.Fatalf("Corrupted delivered %v, want %v", got, key)
		}
	default:
		t.Fatal("the dropped record was not reported on Corrupted")
	}
	// The key can be written again (repair from a peer).
	if res := put(t, s, key, body); !res.Created {
		t.Fatal("re-put after corruption not created")
	}
	if got, err := read(t, s, key); err != nil || !bytes.Equal(got, body) {
		t.Fatalf("repaired record: %v", err)
	}
}

func TestCorruptFooterIsNotFound(t *testing.T) {
	s := openStore(t, testOpts(t))
	key := cas("footer")
	put(t, s, key, []byte("small body"))
	m, _ := s.db.GetManifest(key)
	flipByte(t, segmentPath(s, m.Location.Segment), m.Location.Offset+m.Location.RecordSize-10)
	_, err := s.Open(ctx(t), key, 0, -1)
	if !errors.Is(err, storage.ErrNotFound) || !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Open of a record with a damaged footer = %v, want ErrNotFound (caused by ErrCorrupt)", err)
	}
	if err := statErr(t, s, key); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Stat after the drop = %v", err)
	}
}

func statErr(t testing.TB, s *Store, key storage.Key) error {
	_, err := s.Stat(ctx(t), key)
	return err
}

func openErr(t testing.TB, s *Store, key storage.Key) error {
	r, err := s.Open(ctx(t), key, 0, -1)
	if err == nil {
		_ = r.Close()
	}
	return err
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestEvictionKeepsHotDataWithinBudget(t *testing.T) {
	opts := testOpts(t)
	opts.DiskBudgetBytes = 512 << 10
	opts.TargetSegmentBytes = 64 << 10
	opts.EvictInterval = 10 * time.Millisecond
	s := openStore(t, opts)
	const n = 200
	body := func(i int) []byte { return storagetest.Bytes(uint64(i), 8<<10) }
	hot := []int{0, 1, 2, 3, 4}
	for i := range n {
		put(t, s, cas(fmt.Sprint(i)), body(i))
		for _, h := range hot[:min(i+1, len(hot))] {
			if got, err := read(t, s, cas(fmt.Sprint(h))); err != nil || !bytes.Equal(got, body(h)) {
				t.Fatalf("hot record %d after %d writes: %v", h, i, err)
			}
		}
	}
	testsupport.WaitFor(t, "eviction below the budget", 10*time.Second, func() bool { return s.segs.TotalBytes() <= opts.DiskBudgetBytes })
	present, gone := 0, 0
	for i := range n {
		got, err := read(t, s, cas(fmt.Sprint(i)))
		switch {
		case err == nil && bytes.Equal(got, body(i)):
			present++
		case isNotFound(err):
			gone++
		default:
			t.Fatalf("record %d: %d bytes, %v (must be intact or not found)", i, len(got), err)
		}
	}
	moved, dropped, retired := counterValue(s.metrics.moved), counterValue(s.metrics.dropped), counterValue(s.metrics.retired)
	t.Logf("present %d, evicted %d; moved %v, dropped %v, segments retired %v; %d bytes in %d segments",
		present, gone, moved, dropped, retired, s.segs.TotalBytes(), len(s.segs.Segments()))
	if gone == 0 || moved == 0 || dropped == 0 || retired == 0 {
		t.Fatal("eviction did not both move hot records and drop cold ones")
	}
	if v := counterValue(s.metrics.corrupt); v != 0 {
		t.Fatalf("eviction produced %v corrupt records", v)
	}
	// The status page's view agrees with the metrics and with what eviction did: every record
	// it dropped (none was corrupt) now misses.
	if st := s.DiskStats(); st.BudgetBytes != opts.DiskBudgetBytes || st.SegmentBytes != s.segs.TotalBytes() ||
		float64(st.EvictedRecords) != dropped || st.EvictedRecords != uint64(gone) || float64(st.EvictedSegments) != retired {
		t.Errorf("DiskStats = %+v; want budget %d, %d segment bytes, %v (= %d missing) records and %v segments evicted",
			st, opts.DiskBudgetBytes, s.segs.TotalBytes(), dropped, gone, retired)
	}
	// Metadata never points at missing bytes, also after a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	for i := range n {
		got, err := read(t, s, cas(fmt.Sprint(i)))
		if err != nil && !isNotFound(err) || err == nil && !bytes.Equal(got, body(i)) {
			t.Fatalf("record %d after reopen: %v", i, err)
		}
	}
	for _, h := range hot {
		if _, err := read(t, s, cas(fmt.Sprint(h))); err != nil {
			t.Fatalf("hot record %d was evicted: %v", h, err)
		}
	}
}

func TestBudgetTooSmall(t *testing.T) {
	opts := testOpts(t)
	opts.DiskBudgetBytes = 100 << 10
	s := openStore(t, opts)
	small := cas("small")
	put(t, s, small, []byte("fits"))
	big := storagetest.Bytes(1, 200<<10)
	for _, declared := range []int64{int64(len(big)), storage.UnknownSize} {
		_, err := s.Put(ctx(t), cas("big"), bytes.NewReader(big), storage.PutOptions{Size: declared})
		if !errors.Is(err, storage.ErrInsufficientStorage) {
			t.Fatalf("declared %d: Put of a body larger than the budget = %v, want ErrInsufficientStorage", declared, err)
		}
		if err := statErr(t, s, cas("big")); !isNotFound(err) {
			t.Fatalf("something was stored: %v", err)
		}
	}
	// Reads keep working and writes that fit still succeed.
	if got, err := read(t, s, small); err != nil || string(got) != "fits" {
		t.Fatalf("read after a refused write: %q %v", got, err)
	}
	put(t, s, cas("small2"), storagetest.Bytes(2, 50<<10))
	// A write that only fits after eviction evicts synchronously.
	put(t, s, cas("small3"), storagetest.Bytes(3, 80<<10))
	if s.segs.TotalBytes() > opts.DiskBudgetBytes {
		t.Fatalf("%d segment bytes exceed the budget %d", s.segs.TotalBytes(), opts.DiskBudgetBytes)
	}
}

func TestOnCommitJoinsTheBatch(t *testing.T) {
	opts := testOpts(t)
	var seq atomic.Uint64
	fail := atomic.Bool{}
	opts.Observer = commitFunc(func(b *meta.Batch, c storage.Change) error {
		if fail.Load() {
			return errors.New("outbox full")
		}
		var what string
		switch c.Op {
		case storage.ChangePut:
			what = fmt.Sprintf("put %s %v replaced=%v", c.Info.Key.Name, c.Version, c.Replaced)
		case storage.ChangeDeleteNamespace:
			what = fmt.Sprintf("clean %s/%s %v", c.Tenant, c.Namespace, c.Version)
		}
		return b.PutOutbox("peer-1", seq.Add(1), []byte(what))
	})
	s := openStore(t, opts)
	put(t, s, cas("a"), []byte("a"))
	put(t, s, cas("a"), []byte("a")) // first writer wins: no change, no outbox entry
	kv := storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindKeyValue, Name: "d"}
	put(t, s, kv, []byte("{}"))
	put(t, s, kv, []byte("{}"))
	if err := s.DeleteNamespace(ctx(t), "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	entries, err := s.db.ScanOutbox(ctx(t), "peer-1", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, strings.Fields(string(e.Value))[0]+" "+strings.Fields(string(e.Value))[1])
	}
	if strings.Join(got, ",") != "put a,put d,put d,clean acme/app" {
		t.Fatalf("outbox = %q", got)
	}
	if !strings.HasSuffix(string(entries[2].Value), "replaced=true") {
		t.Fatalf("second keyvalue write not marked replaced: %q", entries[2].Value)
	}
	fail.Store(true)
	if _, err := s.Put(ctx(t), cas("b"), strings.NewReader("b"), storage.PutOptions{Size: 1}); err == nil {
		t.Fatal("Put succeeded although the replication hook failed")
	}
	if err := statErr(t, s, cas("b")); !isNotFound(err) {
		t.Fatalf("write stored without its outbox entry: %v", err)
	}
}

// A namespace deletion racing with writes never lets a write older than the tombstone
// survive it.
func TestDeleteNamespaceRacingWrites(t *testing.T) {
	s := openStore(t, testOpts(t))
	var wg sync.WaitGroup
	var written atomic.Int64
	stop := make(chan struct{})
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				key := cas(fmt.Sprintf("w%d-%d", w, i))
				if _, err := s.Put(ctx(t), key, strings.NewReader("x"), storage.PutOptions{Size: 1}); err != nil {
					t.Errorf("put: %v", err)
					return
				}
				written.Add(1)
			}
		}()
	}
	// Delete while writes are in full flow, so some are in flight across the deletion.
	testsupport.WaitFor(t, "writes to be under way", 10*time.Second, func() bool { return written.Load() >= 50 })
	if err := s.DeleteNamespace(ctx(t), "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	tomb, ok, err := s.db.GetTombstone("acme", "app")
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	var start []byte
	survivors := 0
	for {
		entries, next, err := s.db.ScanManifests(ctx(t), start, nil, 500)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Manifest.Version <= tomb {
				t.Fatalf("%v (version %v) survived the tombstone %v", e.Key, e.Manifest.Version, tomb)
			}
			survivors++
		}
		if next == nil {
			break
		}
		start = next
	}
	t.Logf("%d writes landed after the tombstone", survivors)
}

func TestUnreferencedSegmentRemovedOnOpen(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	put(t, s, cas("kept"), storagetest.Bytes(1, 2<<20))
	// Simulate a crash between a segment commit and its manifest commit.
	st, err := s.segs.Stage(context.Background(), meta.ManifestKey(cas("orphan")))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Write(storagetest.Bytes(2, 2<<20)); err != nil {
		t.Fatal(err)
	}
	loc, err := st.Commit(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	for _, si := range s.segs.Segments() {
		if si.ID == loc.Segment {
			t.Fatalf("unreferenced segment %s survived reopen", si.ID)
		}
	}
	if got, err := read(t, s, cas("kept")); err != nil || !bytes.Equal(got, storagetest.Bytes(1, 2<<20)) {
		t.Fatalf("referenced record lost: %v", err)
	}
}

func TestMultipartTotalLimit(t *testing.T) {
	opts := testOpts(t)
	opts.MaxUploadBytes = 25
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "m"}
	id, err := s.StartUpload(ctx(t), key, "")
	if err != nil {
		t.Fatal(err)
	}
	part := func(n int, body string) error { return s.PutPart(ctx(t), id, n, strings.NewReader(body)) }
	if err := part(1, strings.Repeat("a", 10)); err != nil {
		t.Fatal(err)
	}
	if err := part(2, strings.Repeat("b", 10)); err != nil {
		t.Fatal(err)
	}
	if err := part(3, strings.Repeat("c", 10)); !errors.Is(err, storage.ErrUploadTooLarge) {
		t.Fatalf("part pushing the total to 30 > 25: %v, want ErrUploadTooLarge", err)
	}
	// Replacing a part counts only the new size.
	if err := part(2, strings.Repeat("B", 15)); err != nil {
		t.Fatalf("replacing part 2 (total 25): %v", err)
	}
	if err := part(2, strings.Repeat("B", 16)); !errors.Is(err, storage.ErrUploadTooLarge) {
		t.Fatalf("replacing part 2 (total 26): %v", err)
	}
	if _, err := s.CompleteUpload(ctx(t), id, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	if got, err := read(t, s, key); err != nil || string(got) != strings.Repeat("a", 10)+strings.Repeat("B", 15) {
		t.Fatalf("assembled %q, %v", got, err)
	}
	if entries, _ := os.ReadDir(s.partDir); len(entries) != 0 {
		t.Fatalf("parts left behind: %v", entries)
	}
}

func TestMultipartSurvivesRestart(t *testing.T) {
	opts := testOpts(t)
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "restart"}
	id, err := s.StartUpload(ctx(t), key, "application/zip")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutPart(ctx(t), id, 1, strings.NewReader("before-")); err != nil {
		t.Fatal(err)
	}
	// Debris of a crash mid-PutPart, and of an upload that no longer exists.
	stray := filepath.Join(s.partDir, id, "2-123.part")
	if err := os.WriteFile(stray, []byte("torn"), 0o600); err != nil {
		t.Fatal(err)
	}
	orphanDir := filepath.Join(s.partDir, "8c4f4c56-3f5e-4a8e-9d4e-1c2b3a4d5e6f")
	if err := os.MkdirAll(orphanDir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	if _, err := os.Stat(stray); !os.IsNotExist(err) {
		t.Fatalf("unreferenced part file survived reopen: %v", err)
	}
	if _, err := os.Stat(orphanDir); !os.IsNotExist(err) {
		t.Fatalf("orphaned upload directory survived reopen: %v", err)
	}
	if err := s.PutPart(ctx(t), id, 2, strings.NewReader("after")); err != nil {
		t.Fatal(err)
	}
	res, err := s.CompleteUpload(ctx(t), id, []int{1, 2})
	if err != nil || res.Info.ContentType != "application/zip" {
		t.Fatalf("complete after restart: %+v, %v", res, err)
	}
	if got, err := read(t, s, key); err != nil || string(got) != "before-after" {
		t.Fatalf("assembled %q, %v", got, err)
	}
}

func TestJanitorExpiresUploads(t *testing.T) {
	opts := testOpts(t)
	var now atomic.Int64
	now.Store(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	opts.Now = func() time.Time { return time.Unix(0, now.Load()) }
	opts.JanitorInterval = 5 * time.Millisecond
	s := openStore(t, opts)
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "abandoned"}
	old, err := s.StartUpload(ctx(t), key, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutPart(ctx(t), old, 1, strings.NewReader("part")); err != nil {
		t.Fatal(err)
	}
	now.Add(int64(23 * time.Hour))
	fresh, err := s.StartUpload(ctx(t), key, "")
	if err != nil {
		t.Fatal(err)
	}
	now.Add(int64(2 * time.Hour)) // old is 25 h old, fresh 2 h
	testsupport.WaitFor(t, "the janitor to expire the old upload", 10*time.Second, func() bool {
		return counterValue(s.metrics.expired) == 1
	})
	if err := s.PutPart(ctx(t), old, 2, strings.NewReader("x")); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("PutPart on an expired upload: %v", err)
	}
	if _, err := os.Stat(filepath.Join(s.partDir, old)); !os.IsNotExist(err) {
		t.Fatalf("expired upload's parts remain: %v", err)
	}
	if err := s.PutPart(ctx(t), fresh, 1, strings.NewReader("ok")); err != nil {
		t.Fatalf("the fresh upload was expired too: %v", err)
	}
}

func TestPutHonoursCancellation(t *testing.T) {
	s := openStore(t, testOpts(t))
	c, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.Put(c, cas("cancelled"), testsupport.NewPatternReader(1, 1<<20), storage.PutOptions{Size: storage.UnknownSize})
	if err == nil {
		t.Fatal("Put with a cancelled context succeeded")
	}
	if err := statErr(t, s, cas("cancelled")); !isNotFound(err) {
		t.Fatalf("cancelled write stored: %v", err)
	}
}

func TestStagingCleanedAfterFailures(t *testing.T) {
	opts := testOpts(t)
	opts.SpillThreshold = 64 << 10
	s := openStore(t, opts)
	wrong := sha256.Sum256([]byte("no"))
	for range 5 {
		_, err := s.Put(ctx(t), cas("x"), testsupport.NewPatternReader(3, 1<<20), storage.PutOptions{Size: storage.UnknownSize, ExpectedSHA256: &wrong})
		if !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatal(err)
		}
		_, err = s.Put(ctx(t), cas("y"), testsupport.NewPatternReader(3, 1<<20), storage.PutOptions{Size: storage.UnknownSize, Limit: 500 << 10})
		if !errors.Is(err, storage.ErrTooLarge) {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(filepath.Join(opts.DataDir, "tmp", "staging"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Fatalf("staging files left after failed puts: %d", len(entries))
	}
	if s.segs.TotalBytes() != 0 {
		t.Fatalf("failed puts left %d segment bytes", s.segs.TotalBytes())
	}
}
