package storagetest

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/google/uuid"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// MultipartStore is what RunMultipartSuite exercises. It is an alias so that a plain
// func(*testing.T) interface{ storage.Store; storage.Multipart } is accepted too.
type MultipartStore = interface {
	storage.Store
	storage.Multipart
}

// RunMultipartSuite checks the storage.Multipart contract (module cache uploads). open is
// called once per subtest and must return an empty store that it cleans up itself. The 2 GiB
// running-total limit is not exercised here (it would write 2 GiB); stores test it with a
// lowered limit of their own.
func RunMultipartSuite(t *testing.T, open func(t *testing.T) MultipartStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s MultipartStore)
	}{
		{"Assemble", testMultipartAssemble},
		{"ReplacePart", testMultipartReplacePart},
		{"PartsMismatch", testMultipartPartsMismatch},
		{"InvalidPart", testMultipartInvalidPart},
		{"UnknownUpload", testMultipartUnknownUpload},
		{"PartTooLarge", testMultipartPartTooLarge},
		{"InvalidKey", testMultipartInvalidKey},
		{"ExistingKey", testMultipartExistingKey},
		{"ConcurrentParts", testMultipartConcurrentParts},
		{"UploadKey", testMultipartUploadKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func moduleKey(name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "builds/abc123/" + name}
}

func start(t *testing.T, s MultipartStore, key storage.Key) string {
	t.Helper()
	id, err := s.StartUpload(ctxT(t), key, "application/zip")
	if err != nil {
		t.Fatalf("StartUpload(%v): %v", key, err)
	}
	if id == "" {
		t.Fatal("StartUpload returned an empty id")
	}
	return id
}

func putPart(t *testing.T, s MultipartStore, id string, n int, body []byte) {
	t.Helper()
	if err := s.PutPart(ctxT(t), id, n, bytes.NewReader(body)); err != nil {
		t.Fatalf("PutPart(%s, %d, %d bytes): %v", id, n, len(body), err)
	}
}

// assertUploadKey checks that UploadKey reports the key the upload was started with.
func assertUploadKey(t *testing.T, s MultipartStore, id string, want storage.Key) {
	t.Helper()
	got, err := s.UploadKey(ctxT(t), id)
	if err != nil {
		t.Fatalf("UploadKey(%s): %v", id, err)
	}
	if got != want {
		t.Fatalf("UploadKey(%s) = %v, want %v", id, got, want)
	}
}

// assertUploadGone checks that a finished upload accepts nothing more and has no key.
func assertUploadGone(t *testing.T, s MultipartStore, id string) {
	t.Helper()
	if key, err := s.UploadKey(ctxT(t), id); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("UploadKey after completion = %v, %v; want ErrUploadNotFound", key, err)
	}
	if err := s.PutPart(ctxT(t), id, 1, strings.NewReader("x")); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("PutPart after completion: %v, want ErrUploadNotFound", err)
	}
	if _, err := s.CompleteUpload(ctxT(t), id, []int{1}); !errors.Is(err, storage.ErrUploadNotFound) {
		t.Fatalf("CompleteUpload after completion: %v, want ErrUploadNotFound", err)
	}
}

func testMultipartAssemble(t *testing.T, s MultipartStore) {
	key := moduleKey("Framework.zip")
	id := start(t, s, key)
	if id2 := start(t, s, key); id2 == id {
		t.Fatal("two uploads got the same id")
	}
	parts := [][]byte{Bytes(1, 3<<20), Bytes(2, 1), Bytes(3, 70<<10)}
	// Upload out of order: assembly follows part numbers, not arrival.
	putPart(t, s, id, 3, parts[2])
	putPart(t, s, id, 1, parts[0])
	putPart(t, s, id, 2, parts[1])
	assertAbsent(t, s, key)
	res, err := s.CompleteUpload(ctxT(t), id, []int{1, 2, 3})
	if err != nil {
		t.Fatalf("CompleteUpload: %v", err)
	}
	want := bytes.Join(parts, nil)
	if !res.Created || res.Info.Size != int64(len(want)) || res.Info.ContentType != "application/zip" {
		t.Fatalf("CompleteUpload = %+v", res)
	}
	assertStored(t, s, key, want)
	assertUploadGone(t, s, id)
}

func testMultipartReplacePart(t *testing.T, s MultipartStore) {
	key := moduleKey("replaced.zip")
	id := start(t, s, key)
	putPart(t, s, id, 1, []byte("first attempt, longer"))
	putPart(t, s, id, 2, []byte("-tail"))
	putPart(t, s, id, 1, []byte("retry"))
	if _, err := s.CompleteUpload(ctxT(t), id, []int{1, 2}); err != nil {
		t.Fatal(err)
	}
	assertStored(t, s, key, []byte("retry-tail"))
}

func testMultipartPartsMismatch(t *testing.T, s MultipartStore) {
	key := moduleKey("mismatch.zip")
	id := start(t, s, key)
	putPart(t, s, id, 1, []byte("a"))
	putPart(t, s, id, 2, []byte("b"))
	putPart(t, s, id, 4, []byte("d"))
	for _, list := range [][]int{nil, {1, 2}, {1, 2, 3}, {1, 2, 4, 5}, {2, 1, 4}, {1, 1, 2, 4}, {1, 2, 4, 4}, {4, 2, 1}} {
		if _, err := s.CompleteUpload(ctxT(t), id, list); !errors.Is(err, storage.ErrPartsMismatch) {
			t.Fatalf("CompleteUpload(%v) with parts 1,2,4: %v, want ErrPartsMismatch", list, err)
		}
		assertAbsent(t, s, key)
	}
	// A failed completion leaves the upload usable.
	res, err := s.CompleteUpload(ctxT(t), id, []int{1, 2, 4})
	if err != nil || !res.Created {
		t.Fatalf("CompleteUpload after mismatches: %+v, %v", res, err)
	}
	assertStored(t, s, key, []byte("abd"))
}

func testMultipartInvalidPart(t *testing.T, s MultipartStore) {
	id := start(t, s, moduleKey("parts.zip"))
	for _, n := range []int{0, -1, storage.MaxPartNumber + 1, 1 << 40} {
		body := &testsupport.CountingReader{R: strings.NewReader("data")}
		if err := s.PutPart(ctxT(t), id, n, body); !errors.Is(err, storage.ErrInvalidPart) {
			t.Fatalf("PutPart(part %d): %v, want ErrInvalidPart", n, err)
		}
		if body.N() != 0 {
			t.Fatalf("PutPart(part %d) read the body", n)
		}
	}
	putPart(t, s, id, storage.MaxPartNumber, []byte("last"))
	putPart(t, s, id, 1, []byte("first-"))
	if _, err := s.CompleteUpload(ctxT(t), id, []int{1, storage.MaxPartNumber}); err != nil {
		t.Fatal(err)
	}
	assertStored(t, s, moduleKey("parts.zip"), []byte("first-last"))
}

func testMultipartUnknownUpload(t *testing.T, s MultipartStore) {
	for _, id := range []string{uuid.NewString(), "not-a-uuid", "", "../../etc/passwd", "a\x00b"} {
		if key, err := s.UploadKey(ctxT(t), id); !errors.Is(err, storage.ErrUploadNotFound) {
			t.Fatalf("UploadKey(%q) = %v, %v; want ErrUploadNotFound", id, key, err)
		}
		if err := s.PutPart(ctxT(t), id, 1, strings.NewReader("x")); !errors.Is(err, storage.ErrUploadNotFound) {
			t.Fatalf("PutPart(%q): %v, want ErrUploadNotFound", id, err)
		}
		if _, err := s.CompleteUpload(ctxT(t), id, []int{1}); !errors.Is(err, storage.ErrUploadNotFound) {
			t.Fatalf("CompleteUpload(%q): %v, want ErrUploadNotFound", id, err)
		}
	}
}

func testMultipartPartTooLarge(t *testing.T, s MultipartStore) {
	key := moduleKey("big.zip")
	id := start(t, s, key)
	body := &testsupport.CountingReader{R: testsupport.NewPatternReader(7, storage.MaxPartBytes+100)}
	if err := s.PutPart(ctxT(t), id, 1, body); !errors.Is(err, storage.ErrTooLarge) {
		t.Fatalf("PutPart of %d bytes: %v, want ErrTooLarge", storage.MaxPartBytes+100, err)
	}
	if body.N() > storage.MaxPartBytes+1 {
		t.Fatalf("PutPart read %d bytes, at most %d allowed", body.N(), storage.MaxPartBytes+1)
	}
	// The rejected part was not recorded; a part of exactly the limit is accepted.
	if _, err := s.CompleteUpload(ctxT(t), id, []int{1}); !errors.Is(err, storage.ErrPartsMismatch) {
		t.Fatalf("CompleteUpload with a rejected part: %v, want ErrPartsMismatch", err)
	}
	if err := s.PutPart(ctxT(t), id, 1, testsupport.NewPatternReader(8, storage.MaxPartBytes)); err != nil {
		t.Fatalf("PutPart of exactly the limit: %v", err)
	}
	if _, err := s.CompleteUpload(ctxT(t), id, []int{1}); err != nil {
		t.Fatal(err)
	}
	assertStored(t, s, key, Bytes(8, storage.MaxPartBytes))
}

func testMultipartInvalidKey(t *testing.T, s MultipartStore) {
	bad := moduleKey("x")
	bad.Name = "a\x00b"
	if _, err := s.StartUpload(ctxT(t), bad, ""); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("StartUpload with a NUL in the key: %v, want ErrInvalidKey", err)
	}
}

func testMultipartExistingKey(t *testing.T, s MultipartStore) {
	key := moduleKey("exists.zip")
	first := mustPut(t, s, key, []byte("original"), storage.PutOptions{})
	id := start(t, s, key)
	putPart(t, s, id, 1, []byte("replacement"))
	res, err := s.CompleteUpload(ctxT(t), id, []int{1})
	if err != nil {
		t.Fatal(err)
	}
	if res.Created || res.Info != first.Info {
		t.Fatalf("completing onto an existing module = %+v; want Created=false and the original", res)
	}
	assertStored(t, s, key, []byte("original"))
	assertUploadGone(t, s, id)
}

func testMultipartConcurrentParts(t *testing.T, s MultipartStore) {
	const n = 16
	key := moduleKey("concurrent.zip")
	id := start(t, s, key)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := 1; i <= n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.PutPart(ctxT(t), id, i, bytes.NewReader(Bytes(uint64(i), 10_000+i))); err != nil {
				errs <- fmt.Errorf("part %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	list := make([]int, n)
	var want []byte
	for i := range list {
		list[i] = i + 1
		want = append(want, Bytes(uint64(i+1), 10_000+i+1)...)
	}
	if _, err := s.CompleteUpload(ctxT(t), id, list); err != nil {
		t.Fatal(err)
	}
	assertStored(t, s, key, want)
}

// testMultipartUploadKey: UploadKey names the key given to StartUpload (tenant, namespace, kind
// and name, so a front end can authorize parts against it) for as long as the upload accepts
// parts, including after a failed completion, and not once it is completed.
func testMultipartUploadKey(t *testing.T, s MultipartStore) {
	a := moduleKey("a.zip")
	b := storage.Key{Tenant: "other-tenant", Namespace: "android", Kind: storage.KindModule, Name: "tests/def456/b.zip"}
	idA, idB := start(t, s, a), start(t, s, b)
	assertUploadKey(t, s, idA, a)
	assertUploadKey(t, s, idB, b)
	putPart(t, s, idA, 1, []byte("part"))
	assertUploadKey(t, s, idA, a)
	if _, err := s.CompleteUpload(ctxT(t), idA, []int{1, 2}); !errors.Is(err, storage.ErrPartsMismatch) {
		t.Fatalf("CompleteUpload with a missing part: %v, want ErrPartsMismatch", err)
	}
	assertUploadKey(t, s, idA, a)
	if _, err := s.CompleteUpload(ctxT(t), idA, []int{1}); err != nil {
		t.Fatal(err)
	}
	assertUploadGone(t, s, idA)
	// Completing one upload leaves the others alone.
	assertUploadKey(t, s, idB, b)
	// Two uploads of the same key each report it.
	idA2 := start(t, s, a)
	assertUploadKey(t, s, idA2, a)
}
