package local

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// With every descriptor of a small pool held by streaming readers, reads of other segments,
// large writes and multipart parts fail with ErrBusy — nothing is dropped, stored or left
// behind — and all of them succeed once the readers are done.
func TestSmallPoolBusyThenRecovers(t *testing.T) {
	opts := testOpts(t)
	opts.FileDescriptorPoolSize = 6
	opts.FileDescriptorAcquireTimeout = 50 * time.Millisecond
	opts.SegmentHandleCacheSize = 2
	opts.SpillThreshold = 64 << 10 // 256 KiB bodies become segments of their own
	s := openStore(t, opts)
	const n = 10
	keys := make([]storage.Key, n)
	for i := range keys {
		keys[i] = cas(fmt.Sprintf("big-%d", i))
		put(t, s, keys[i], storagetest.Bytes(uint64(i), 256<<10))
	}
	upload, err := s.StartUpload(ctx(t), cas("assembled"), "")
	if err != nil {
		t.Fatal(err)
	}

	var held []storage.Reader
	busyAt := -1
	for i, k := range keys {
		r, err := s.Open(ctx(t), k, 0, -1)
		if errors.Is(err, storage.ErrBusy) {
			busyAt = i
			break
		}
		if err != nil {
			t.Fatalf("open %s: %v", k, err)
		}
		if _, err := r.Read(make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
		held = append(held, r)
	}
	if busyAt < 0 {
		t.Fatalf("%d concurrent readers never exhausted a pool of %d", len(held), opts.FileDescriptorPoolSize)
	}
	t.Logf("pool of %d exhausted after %d held readers; in use %d, timeouts %d",
		opts.FileDescriptorPoolSize, len(held), s.FDPool().InUse(), s.FDPool().Timeouts())
	// A large write needs a staging file: busy, nothing stored, nothing staged.
	big := cas("written-while-busy")
	_, err = s.Put(ctx(t), big, bytes.NewReader(storagetest.Bytes(77, 200<<10)), storage.PutOptions{Size: storage.UnknownSize})
	if !errors.Is(err, storage.ErrBusy) {
		t.Fatalf("large put with the pool exhausted = %v, want ErrBusy", err)
	}
	if err := statErr(t, s, big); !isNotFound(err) {
		t.Fatalf("a busy put stored something: %v", err)
	}
	if err := s.PutPart(ctx(t), upload, 1, strings.NewReader("part one")); !errors.Is(err, storage.ErrBusy) {
		t.Fatalf("PutPart with the pool exhausted = %v, want ErrBusy", err)
	}
	if v := counterValue(s.metrics.corrupt); v != 0 {
		t.Fatalf("busy reads were treated as corruption (%v records dropped)", v)
	}

	for _, r := range held {
		_ = r.Close()
	}
	for i, k := range keys {
		if got, err := read(t, s, k); err != nil || !bytes.Equal(got, storagetest.Bytes(uint64(i), 256<<10)) {
			t.Fatalf("read %s after recovery: %v", k, err)
		}
	}
	if _, err := s.Put(ctx(t), big, bytes.NewReader(storagetest.Bytes(77, 200<<10)), storage.PutOptions{Size: storage.UnknownSize}); err != nil {
		t.Fatalf("put after recovery: %v", err)
	}
	if err := s.PutPart(ctx(t), upload, 1, strings.NewReader("part one")); err != nil {
		t.Fatalf("PutPart after recovery: %v", err)
	}
	if _, err := s.CompleteUpload(ctx(t), upload, []int{1}); err != nil {
		t.Fatalf("complete after recovery: %v", err)
	}
	assertNoStaging(t, s)
}

func assertNoStaging(t *testing.T, s *Store) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(s.opts.TmpDir, "staging", "*"))
	if len(left) != 0 {
		t.Fatalf("staging files left behind: %v", left)
	}
}

// mountTmpfs mounts a tmpfs of the given size for the test and unmounts it afterwards (after
// every store on it has been closed: cleanups run last-registered first).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	mnt := t.TempDir()
	if err := syscall.Mount("tmpfs", mnt, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(mnt, 0); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	return mnt
}

func fsFree(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// ballast is a file that takes the room other software would take on a shared disk.
type ballast struct {
	t    *testing.T
	f    *os.File
	size int64
}

// leave grows or shrinks the ballast until the filesystem has about free bytes free.
func (b *ballast) leave(free int64) {
	b.t.Helper()
	delta := fsFree(b.t, filepath.Dir(b.f.Name())) - free
	b.size = max(b.size+delta, 0)
	if delta > 0 {
		// tmpfs allocates on write; write real bytes so the space is really taken.
		if _, err := b.f.WriteAt(make([]byte, delta), b.size-delta); err != nil {
			b.t.Fatalf("grow ballast: %v", err)
		}
	} else if err := b.f.Truncate(b.size); err != nil {
		b.t.Fatalf("shrink ballast: %v", err)
	}
}

// A full disk on a real (tmpfs) filesystem: writes of every kind fail with
// ErrInsufficientStorage while the free space is below the reserve and eviction cannot help;
// reads, deletions and the metadata store keep working; nothing partial is stored or served;
// writes succeed again as soon as there is room (through eviction after a namespace clean, or
// after the ballast shrinks); and every acknowledged object survives a restart.
func TestDiskFullOnTmpfs(t *testing.T) {
	mnt := mountTmpfs(t, "32m")
	const reserve = 6 << 20
	opts := testOpts(t)
	opts.DataDir = filepath.Join(mnt, "data")
	opts.ReservedDiskBytes = reserve
	opts.TargetSegmentBytes = 128 << 10
	opts.SpillThreshold = 128 << 10
	opts.Metadata.MemTableBytes = 1 << 20 // Pebble preallocates 1.1× this for each WAL
	s := openStore(t, opts)

	acked := map[storage.Key][]byte{}
	putOK := func(k storage.Key, body []byte) {
		t.Helper()
		put(t, s, k, body)
		acked[k] = body
	}
	inNS := func(ns, name string) storage.Key {
		return storage.Key{Tenant: "acme", Namespace: ns, Kind: storage.KindCAS, Name: name}
	}
	// Old data first (older segments), then data to keep.
	for i := range 40 {
		putOK(inNS("old", fmt.Sprint("small-", i)), storagetest.Bytes(uint64(i), 8<<10))
	}
	putOK(inNS("old", "large"), storagetest.Bytes(1000, 300<<10))
	s.segs.Seal()
	for i := range 10 {
		putOK(inNS("keep", fmt.Sprint("small-", i)), storagetest.Bytes(uint64(100+i), 8<<10))
	}
	putOK(inNS("keep", "large"), storagetest.Bytes(1001, 300<<10))
	doc := storage.Key{Tenant: "acme", Namespace: "keep", Kind: storage.KindKeyValue, Name: "doc"}
	putOK(doc, []byte(`{"entries":[1]}`))
	pending, err := s.StartUpload(ctx(t), inNS("keep", "assembled"), "")
	if err != nil {
		t.Fatal(err)
	}
	part := storagetest.Bytes(2000, 100<<10)
	if err := s.PutPart(ctx(t), pending, 1, bytes.NewReader(part)); err != nil {
		t.Fatal(err)
	}
	verifyAll := func(phase string) {
		t.Helper()
		for k, want := range acked {
			got, err := read(t, s, k)
			if err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s: %s: %d bytes, %v (every acknowledged object must read back intact)", phase, k, len(got), err)
			}
		}
	}
	verifyAll("before the disk filled")

	f, err := os.Create(filepath.Join(mnt, "ballast"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	bl := &ballast{t: t, f: f}
	// Less free than the reserve, and more missing than all segments together: eviction
	// cannot help, so it must not even start.
	bl.leave(2 << 20)
	t.Logf("disk full: %d bytes free, reserve %d, %d segment bytes", fsFree(t, mnt), int64(reserve), s.segs.TotalBytes())

	insufficient := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, storage.ErrInsufficientStorage) {
			t.Fatalf("%s on a full disk = %v, want ErrInsufficientStorage", what, err)
		}
	}
	_, err = s.Put(ctx(t), inNS("keep", "new-small"), bytes.NewReader([]byte("x")), storage.PutOptions{Size: 1})
	insufficient("small put", err)
	_, err = s.Put(ctx(t), inNS("keep", "new-chunked"), bytes.NewReader(storagetest.Bytes(3, 3<<20)), storage.PutOptions{Size: storage.UnknownSize})
	insufficient("chunked 3 MiB put", err)
	_, err = s.Put(ctx(t), inNS("keep", "new-declared"), bytes.NewReader(storagetest.Bytes(4, 1<<20)), storage.PutOptions{Size: 1 << 20})
	insufficient("declared 1 MiB put", err)
	_, err = s.Put(ctx(t), storage.Key{Tenant: "acme", Namespace: "keep", Kind: storage.KindKeyValue, Name: "doc2"},
		strings.NewReader(`{"entries":[2]}`), storage.PutOptions{Size: storage.UnknownSize})
	insufficient("keyvalue put", err)
	_, err = s.StartUpload(ctx(t), inNS("keep", "other"), "")
	insufficient("start upload", err)
	insufficient("put part", s.PutPart(ctx(t), pending, 2, bytes.NewReader(part)))
	_, err = s.CompleteUpload(ctx(t), pending, []int{1})
	insufficient("complete upload", err)
	for _, k := range []storage.Key{inNS("keep", "new-small"), inNS("keep", "new-chunked"), inNS("keep", "new-declared"), inNS("keep", "assembled")} {
		if err := statErr(t, s, k); !isNotFound(err) {
			t.Fatalf("a refused write left %s behind: %v", k, err)
		}
	}
	assertNoStaging(t, s)
	if moved, dropped := counterValue(s.metrics.moved), counterValue(s.metrics.dropped); moved+dropped != 0 {
		t.Fatalf("eviction ran although it could not make enough room (moved %v, dropped %v)", moved, dropped)
	}
	verifyAll("disk full")

	// Deleting works on a full disk (it is how an operator makes room) and changes nothing
	// on disk by itself: the cleaned namespace's bytes are reclaimed by eviction.
	if err := s.DeleteNamespace(ctx(t), "acme", "old", 0); err != nil {
		t.Fatalf("namespace clean on a full disk: %v", err)
	}
	for k := range acked {
		if k.Namespace == "old" {
			delete(acked, k)
		}
	}
	verifyAll("after the clean")

	// The other tenant of the disk frees a little: still below the reserve, but now evicting
	// the cleaned namespace's segments is enough, so the write goes through.
	bl.leave(reserve - 256<<10)
	before := s.segs.TotalBytes()
	putOK(inNS("keep", "after-clean"), storagetest.Bytes(5, 8<<10))
	if counterValue(s.metrics.retired) == 0 || s.segs.TotalBytes() >= before {
		t.Fatalf("the write after the clean did not evict (retired %v, segment bytes %d → %d)",
			counterValue(s.metrics.retired), before, s.segs.TotalBytes())
	}
	if d := counterValue(s.metrics.dropped); d != 0 {
		t.Fatalf("eviction dropped %v live records; only the cleaned namespace had to go", d)
	}
	t.Logf("after the clean: a write evicted %d bytes of the cleaned namespace", before-s.segs.TotalBytes())
	verifyAll("after eviction")

	// Full again, then the ballast goes: every kind of write works at once.
	bl.leave(1 << 20)
	_, err = s.Put(ctx(t), inNS("keep", "new-small"), bytes.NewReader([]byte("x")), storage.PutOptions{Size: 1})
	insufficient("small put (full again)", err)
	bl.leave(fsFree(t, mnt) + bl.size) // all of it
	putOK(inNS("keep", "new-small"), []byte("x"))
	putOK(inNS("keep", "new-chunked"), storagetest.Bytes(3, 3<<20))
	putOK(storage.Key{Tenant: "acme", Namespace: "keep", Kind: storage.KindKeyValue, Name: "doc2"}, []byte(`{"entries":[2]}`))
	if err := s.PutPart(ctx(t), pending, 2, bytes.NewReader(part)); err != nil {
		t.Fatalf("put part after the disk emptied: %v", err)
	}
	if _, err := s.CompleteUpload(ctx(t), pending, []int{1, 2}); err != nil {
		t.Fatalf("retried completion: %v", err)
	}
	acked[inNS("keep", "assembled")] = append(append([]byte(nil), part...), part...)
	verifyAll("after the ballast went")

	// Nothing half-written survives a restart either.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	opts.Registerer = nil
	s = openStore(t, opts)
	verifyAll("after a restart")
	if r, err := s.Open(ctx(t), inNS("keep", "new-declared"), 0, -1); err == nil {
		_, _ = io.Copy(io.Discard, r)
		_ = r.Close()
		t.Fatal("a refused write is readable after a restart")
	}
}
