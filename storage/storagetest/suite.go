package storagetest

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// RunStoreSuite checks every clause of the storage.Store contract against the stores that open
// returns. open is called once per subtest and must return an empty store that it cleans up
// itself (t.Cleanup).
func RunStoreSuite(t *testing.T, open func(t *testing.T) storage.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"RoundTrip", testRoundTrip},
		{"Ranges", testRanges},
		{"Missing", testMissing},
		{"FindMissing", testFindMissing},
		{"FirstWriterWins", testFirstWriterWins},
		{"LastWriterWins", testLastWriterWins},
		{"ClusterFirstWriterWins", testClusterFirstWriterWins},
		{"Limit", testLimit},
		{"DeclaredSize", testDeclaredSize},
		{"SHA256", testSHA256},
		{"BodyReadError", testBodyReadError},
		{"TenantIsolation", testTenantIsolation},
		{"KindIsolation", testKindIsolation},
		{"InvalidKeys", testInvalidKeys},
		{"DeleteNamespace", testDeleteNamespace},
		{"DeleteNamespaceVersions", testDeleteNamespaceVersions},
		{"Concurrency", testConcurrency},
		{"Attributes", testAttributes},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

func k(kind storage.Kind, name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "app", Kind: kind, Name: name}
}

func testRoundTrip(t *testing.T, s storage.Store) {
	sizes := []int{0, 1, 1000, 64<<10 - 1, 64 << 10, 64<<10 + 1, 300 << 10, 5<<20 + 3}
	for _, kind := range storage.Kinds {
		for i, size := range sizes {
			if kind == storage.KindKeyValue && size > 1<<20 {
				continue // keyvalue documents are small by protocol
			}
			t.Run(fmt.Sprintf("%s/%d", kind, size), func(t *testing.T) {
				key := k(kind, fmt.Sprintf("obj-%d", i))
				body := Bytes(uint64(size)+7, size)
				sum := sha256.Sum256(body)
				declared := int64(size)
				if i%2 == 1 {
					declared = storage.UnknownSize // chunked uploads
				}
				before := time.Now().Add(-time.Second)
				res, err := s.Put(ctxT(t), key, bytes.NewReader(body), storage.PutOptions{
					ContentType: "application/x-test", Size: declared, ExpectedSHA256: &sum,
				})
				if err != nil {
					t.Fatalf("Put: %v", err)
				}
				if !res.Created || res.Info.Key != key || res.Info.Size != int64(size) || res.Info.SHA256 != sum ||
					res.Info.ContentType != "application/x-test" || res.Info.Version == 0 {
					t.Fatalf("PutResult = %+v", res)
				}
				if res.Info.CreatedAt().Before(before) || res.Info.CreatedAt().After(time.Now().Add(time.Second)) {
					t.Fatalf("CreatedAt %v is not the write time", res.Info.CreatedAt())
				}
				info := assertStored(t, s, key, body)
				if info != res.Info {
					t.Fatalf("Stat = %+v, Put returned %+v", info, res.Info)
				}
				r, err := s.Open(ctxT(t), key, 0, -1)
				if err != nil {
					t.Fatal(err)
				}
				if r.Info() != info {
					t.Fatalf("Reader.Info = %+v, want %+v", r.Info(), info)
				}
				if err := r.Close(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

func testRanges(t *testing.T, s storage.Store) {
	const size = 200<<10 + 17
	body := Bytes(42, size)
	for _, kind := range []storage.Kind{storage.KindCAS, storage.KindKeyValue} {
		key := k(kind, "ranged")
		mustPut(t, s, key, body, storage.PutOptions{Size: size})
		cases := []struct{ off, length, wantOff, wantLen int64 }{
			{0, -1, 0, size},
			{0, 0, 0, 0},
			{1, 10, 1, 10},
			{65535, 2, 65535, 2},             // straddles a 64 KiB boundary
			{65536, 65536, 65536, 65536},     // exactly one aligned block
			{131071, 65538, 131071, 65538},   // starts and ends mid-block
			{size - 1, -1, size - 1, 1},      // last byte
			{size - 5, 100, size - 5, 5},     // length runs past the end: clamped
			{size, -1, size, 0},              // at the end: empty
			{size + 1000, 10, size, 0},       // beyond the end: empty, no error
			{100, size * 2, 100, size - 100}, // huge length
			{64 << 10 * 3, -1, 64 << 10 * 3, size - 64<<10*3},
		}
		for _, c := range cases {
			got := readRange(t, s, key, c.off, c.length)
			want := body[c.wantOff : c.wantOff+c.wantLen]
			if !bytes.Equal(got, want) {
				t.Fatalf("%s range (%d,%d): got %d bytes, want %d (content equal=%v)", kind, c.off, c.length, len(got), len(want), bytes.Equal(got, want))
			}
		}
		r, err := s.Open(ctxT(t), key, 10, 5)
		if err != nil {
			t.Fatal(err)
		}
		if r.Info().Size != size {
			t.Fatalf("ranged Reader.Info().Size = %d, want the whole object's %d", r.Info().Size, size)
		}
		_ = r.Close()
	}
}

func testMissing(t *testing.T, s storage.Store) {
	for _, kind := range storage.Kinds {
		assertAbsent(t, s, k(kind, "never-written"))
	}
}

func testFindMissing(t *testing.T, s storage.Store) {
	a, b, c, d := k(storage.KindCAS, "a"), k(storage.KindCAS, "b"), k(storage.KindCAS, "c"), k(storage.KindGradle, "a")
	mustPut(t, s, a, []byte("A"), storage.PutOptions{Size: 1})
	mustPut(t, s, c, []byte("C"), storage.PutOptions{Size: 1})
	kv := k(storage.KindKeyValue, "doc")
	mustPut(t, s, kv, []byte(`{}`), storage.PutOptions{Size: 2})
	got, err := s.FindMissing(ctxT(t), []storage.Key{d, a, b, kv, c, b})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint([]storage.Key{d, b, b}) {
		t.Fatalf("FindMissing = %v, want [%v %v %v] in the order given", got, d, b, b)
	}
	if got, err := s.FindMissing(ctxT(t), nil); err != nil || len(got) != 0 {
		t.Fatalf("FindMissing(nil) = %v, %v", got, err)
	}
}

func testFirstWriterWins(t *testing.T, s storage.Store) {
	for _, kind := range storage.Kinds {
		if kind.LastWriterWins() {
			continue
		}
		t.Run(string(kind), func(t *testing.T) {
			key := k(kind, "immutable")
			first := mustPut(t, s, key, []byte("first body"), storage.PutOptions{ContentType: "a/b", Size: 10})
			body := &UnreadableBody{T: t}
			res, err := s.Put(ctxT(t), key, body, storage.PutOptions{
				ContentType: "c/d", Size: 11, Version: first.Info.Version + 1000,
			})
			if err != nil {
				t.Fatalf("second Put: %v", err)
			}
			if res.Created || res.Info != first.Info {
				t.Fatalf("second Put = %+v; want Created=false and the first write's Info %+v", res, first.Info)
			}
			if body.read.Load() {
				t.Fatal("the body of a write to an existing immutable key was read")
			}
			assertStored(t, s, key, []byte("first body"))
		})
	}
}

// testClusterFirstWriterWins checks storage.Replaces for immutable kinds: a replicated write
// (the origin's version) that is the cluster's first writer replaces the stored body, any
// other write leaves it, and whatever order the copies arrive in the store ends on the one
// with the lowest version (equal versions: the lowest SHA-256).
func testClusterFirstWriterWins(t *testing.T, s storage.Store) {
	for _, kind := range storage.Kinds {
		if kind.LastWriterWins() {
			continue
		}
		t.Run(string(kind), func(t *testing.T) {
			key := k(kind, "contested")
			put := func(body string, v storage.Version, expect bool) (storage.PutResult, error) {
				opts := storage.PutOptions{ContentType: "application/x-" + body, Size: int64(len(body)), Version: v}
				if expect {
					sum := sha256.Sum256([]byte(body))
					opts.ExpectedSHA256 = &sum
				}
				return s.Put(ctxT(t), key, strings.NewReader(body), opts)
			}
			local := mustPut(t, s, key, []byte("local"), storage.PutOptions{})
			v := local.Info.Version
			// A later replicated copy loses, unread.
			unread := &UnreadableBody{T: t}
			if r, err := s.Put(ctxT(t), key, unread, storage.PutOptions{Size: 5, Version: v + 1}); err != nil || r.Created {
				t.Fatalf("later replicated put = %+v, %v; want not created", r, err)
			}
			if unread.read.Load() {
				t.Fatal("the body of a later replicated copy was read")
			}
			// An earlier one, with another body, replaces the stored body.
			r, err := put("early", v-1000, true)
			if err != nil || !r.Created || r.Info.Version != v-1000 {
				t.Fatalf("earlier replicated put = %+v, %v; want Created at %v", r, err, v-1000)
			}
			info := assertStored(t, s, key, []byte("early"))
			if info.Version != v-1000 || info.ContentType != "application/x-early" || info != r.Info {
				t.Fatalf("after the replace Stat = %+v, Put returned %+v", info, r.Info)
			}
			// The same body at an even lower version is the same artifact: nothing changes and,
			// its digest declared, its body is not read.
			sum := sha256.Sum256([]byte("early"))
			unread = &UnreadableBody{T: t}
			if r, err := s.Put(ctxT(t), key, unread, storage.PutOptions{Size: 5, Version: v - 2000, ExpectedSHA256: &sum}); err != nil || r.Created || r.Info != info {
				t.Fatalf("same body, lower version = %+v, %v; want the stored %+v", r, err, info)
			}
			if unread.read.Load() {
				t.Fatal("the body of an identical replicated copy was read")
			}
			if r, err := put("early", v-2000, false); err != nil || r.Created || r.Info != info {
				t.Fatalf("same body, lower version, no digest = %+v, %v; want the stored %+v", r, err, info)
			}
			// Equal versions: the lower SHA-256 wins, whichever order the bodies arrive in.
			for _, body := range []string{"tie-1", "tie-2", "tie-3"} {
				cur, err := s.Stat(ctxT(t), key)
				if err != nil {
					t.Fatal(err)
				}
				in := storage.Copy{Version: v - 1000, SHA256: sha256.Sum256([]byte(body))}
				want := storage.Replaces(kind, in, storage.Copy{Version: cur.Version, SHA256: cur.SHA256})
				if r, err := put(body, v-1000, body != "tie-2"); err != nil || r.Created != want {
					t.Fatalf("equal-version put of %s = %+v, %v; want Created=%v", body, r, err, want)
				}
			}
			winner := "early"
			for _, body := range []string{"tie-1", "tie-2", "tie-3"} {
				a, b := sha256.Sum256([]byte(body)), sha256.Sum256([]byte(winner))
				if bytes.Compare(a[:], b[:]) < 0 {
					winner = body
				}
			}
			stored := assertStored(t, s, key, []byte(winner))
			// A local write never replaces the stored body, and its body is not read.
			unread = &UnreadableBody{T: t}
			if r, err := s.Put(ctxT(t), key, unread, storage.PutOptions{Size: 5}); err != nil || r.Created || r.Info != stored {
				t.Fatalf("local put over the winner = %+v, %v; want the stored %+v", r, err, stored)
			}
			if unread.read.Load() {
				t.Fatal("the body of a local write to an existing immutable key was read")
			}
			// A body that does not match its declared digest stores nothing.
			wrong := sha256.Sum256([]byte("other"))
			if _, err := s.Put(ctxT(t), key, strings.NewReader("tiny!"), storage.PutOptions{Size: 5, Version: v - 5000, ExpectedSHA256: &wrong}); !errors.Is(err, storage.ErrDigestMismatch) {
				t.Fatalf("mismatched replicated put = %v, want ErrDigestMismatch", err)
			}
			assertStored(t, s, key, []byte(winner))

			// Three copies in every order: the store ends on the lowest version's.
			copies := []struct {
				body string
				v    storage.Version
			}{{"third", v + 30}, {"first", v + 10}, {"second", v + 20}}
			for i, order := range [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}} {
				key := k(kind, fmt.Sprintf("order-%d", i))
				for _, j := range order {
					c := copies[j]
					if _, err := s.Put(ctxT(t), key, strings.NewReader(c.body), storage.PutOptions{Size: int64(len(c.body)), Version: c.v}); err != nil {
						t.Fatalf("order %v: put %s: %v", order, c.body, err)
					}
				}
				if info := assertStored(t, s, key, []byte("first")); info.Version != v+10 {
					t.Fatalf("order %v: ended at version %v, want %v", order, info.Version, v+10)
				}
			}
		})
	}
}

func testLastWriterWins(t *testing.T, s storage.Store) {
	for _, kind := range storage.Kinds {
		if !kind.LastWriterWins() {
			continue
		}
		t.Run(string(kind), func(t *testing.T) {
			key := k(kind, "mutable")
			base := storage.MakeVersion(time.Now().UnixMilli(), 0)
			r1 := mustPut(t, s, key, []byte(`{"v":1}`), storage.PutOptions{Version: base + 10})
			if !r1.Created || r1.Info.Version != base+10 {
				t.Fatalf("first put = %+v", r1)
			}
			// An older version is ignored: the stored state wins, no error.
			r0, err := s.Put(ctxT(t), key, strings.NewReader(`{"v":0}`), storage.PutOptions{Size: storage.UnknownSize, Version: base + 5})
			if err != nil {
				t.Fatalf("older put: %v", err)
			}
			if r0.Created || r0.Info.Version != base+10 {
				t.Fatalf("older put = %+v; want Created=false with the stored version", r0)
			}
			assertStored(t, s, key, []byte(`{"v":1}`))
			// The same version with the same body changes nothing; with another body the
			// higher SHA-256 wins (storage.Supersedes), whichever order the two arrive in, so
			// two nodes that wrote in the same millisecond settle on one value.
			if r, err := s.Put(ctxT(t), key, strings.NewReader(`{"v":1}`), storage.PutOptions{Size: storage.UnknownSize, Version: base + 10}); err != nil || r.Created {
				t.Fatalf("same-version, same-body put = %+v, %v", r, err)
			}
			for _, body := range []string{`{"v":8}`, `{"v":9}`} {
				cur, err := s.Stat(ctxT(t), key)
				if err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256([]byte(body))
				want := storage.Supersedes(base+10, sum, cur.Version, cur.SHA256)
				r, err := s.Put(ctxT(t), key, strings.NewReader(body), storage.PutOptions{Size: storage.UnknownSize, Version: base + 10})
				if err != nil || r.Created != want {
					t.Fatalf("same-version put of %s = %+v, %v; want Created=%v", body, r, err, want)
				}
			}
			if cur, err := s.Stat(ctxT(t), key); err != nil || cur.Version != base+10 {
				t.Fatalf("after the same-version puts: %+v, %v", cur, err)
			}
			r2 := mustPut(t, s, key, []byte(`{"v":2}`), storage.PutOptions{ContentType: "application/json", Version: base + 20})
			if !r2.Created || r2.Info.Version != base+20 {
				t.Fatalf("newer put = %+v", r2)
			}
			info := assertStored(t, s, key, []byte(`{"v":2}`))
			if info.ContentType != "application/json" || info.Version != base+20 {
				t.Fatalf("Stat after replace = %+v", info)
			}
			// A write stamped by the store's clock orders after everything it has seen.
			r3 := mustPut(t, s, key, []byte(`{"v":3}`), storage.PutOptions{})
			if !r3.Created || r3.Info.Version <= base+20 {
				t.Fatalf("clock-stamped put = %+v", r3)
			}
			assertStored(t, s, key, []byte(`{"v":3}`))
		})
	}
}

func testLimit(t *testing.T, s storage.Store) {
	for _, kind := range []storage.Kind{storage.KindGradle, storage.KindKeyValue, storage.KindAC} {
		t.Run(string(kind), func(t *testing.T) {
			const limit = 1000
			key := k(kind, "limited")
			for _, declared := range []int64{storage.UnknownSize, 5000} {
				body := &testsupport.CountingReader{R: testsupport.NewPatternReader(1, 1<<20)}
				_, err := s.Put(ctxT(t), key, body, storage.PutOptions{Limit: limit, Size: declared})
				if !errors.Is(err, storage.ErrTooLarge) {
					t.Fatalf("declared %d: Put of 1 MiB with limit %d = %v, want ErrTooLarge", declared, limit, err)
				}
				if body.N() > limit+1 {
					t.Fatalf("declared %d: the store read %d bytes of an over-limit body, at most %d allowed", declared, body.N(), limit+1)
				}
				assertAbsent(t, s, key)
			}
			// Exactly at the limit is accepted.
			body := Bytes(3, limit)
			mustPut(t, s, key, body, storage.PutOptions{Limit: limit, Size: limit})
			assertStored(t, s, key, body)
		})
	}
}

func testDeclaredSize(t *testing.T, s storage.Store) {
	for _, kind := range []storage.Kind{storage.KindCAS, storage.KindKeyValue, storage.KindNx} {
		key := k(kind, "sized")
		body := Bytes(5, 100<<10)
		for _, declared := range []int64{int64(len(body)) - 1, int64(len(body)) + 1, 0} {
			_, err := s.Put(ctxT(t), key, bytes.NewReader(body), storage.PutOptions{Size: declared})
			if !errors.Is(err, storage.ErrDigestMismatch) {
				t.Fatalf("%s: %d-byte body declared as %d: %v, want ErrDigestMismatch", kind, len(body), declared, err)
			}
			assertAbsent(t, s, key)
		}
		mustPut(t, s, key, body, storage.PutOptions{Size: int64(len(body))})
		assertStored(t, s, key, body)
	}
}

func testSHA256(t *testing.T, s storage.Store) {
	for _, kind := range []storage.Kind{storage.KindCAS, storage.KindKeyValue} {
		key := k(kind, "hashed")
		body := Bytes(9, 70<<10)
		wrong := sha256.Sum256([]byte("something else"))
		_, err := s.Put(ctxT(t), key, bytes.NewReader(body), storage.PutOptions{Size: storage.UnknownSize, ExpectedSHA256: &wrong})
		if !errors.Is(err, storage.ErrDigestMismatch) {
			t.Fatalf("%s: wrong SHA-256: %v, want ErrDigestMismatch", kind, err)
		}
		assertAbsent(t, s, key)
		right := sha256.Sum256(body)
		mustPut(t, s, key, body, storage.PutOptions{ExpectedSHA256: &right})
		assertStored(t, s, key, body)
	}
}

func testBodyReadError(t *testing.T, s storage.Store) {
	boom := errors.New("client went away")
	for _, kind := range []storage.Kind{storage.KindMetro, storage.KindKeyValue} {
		key := k(kind, "interrupted")
		body := &failingReader{data: Bytes(4, 3<<20), err: boom}
		if _, err := s.Put(ctxT(t), key, body, storage.PutOptions{Size: storage.UnknownSize}); !errors.Is(err, boom) {
			t.Fatalf("%s: Put with a failing body = %v, want it to wrap the read error", kind, err)
		}
		assertAbsent(t, s, key)
	}
}

func testTenantIsolation(t *testing.T, s storage.Store) {
	a := storage.Key{Tenant: "tenant-a", Namespace: "shared", Kind: storage.KindXcode, Name: "same-id"}
	b := a
	b.Tenant = "tenant-b"
	mustPut(t, s, a, []byte("A's artifact"), storage.PutOptions{})
	assertAbsent(t, s, b)
	mustPut(t, s, b, []byte("B's artifact"), storage.PutOptions{})
	assertStored(t, s, a, []byte("A's artifact"))
	assertStored(t, s, b, []byte("B's artifact"))
	if err := s.DeleteNamespace(ctxT(t), "tenant-a", "shared", 0); err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, s, a)
	assertStored(t, s, b, []byte("B's artifact"))
}

func testKindIsolation(t *testing.T, s storage.Store) {
	for i, kind := range storage.Kinds {
		mustPut(t, s, k(kind, "shared-name"), []byte(fmt.Sprintf("body of %s #%d", kind, i)), storage.PutOptions{})
	}
	for i, kind := range storage.Kinds {
		assertStored(t, s, k(kind, "shared-name"), []byte(fmt.Sprintf("body of %s #%d", kind, i)))
	}
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	valid := k(storage.KindCAS, "ok")
	cases := map[string]storage.Key{}
	mod := func(name string, f func(*storage.Key)) {
		key := valid
		f(&key)
		cases[name] = key
	}
	mod("empty tenant", func(k *storage.Key) { k.Tenant = "" })
	mod("empty namespace", func(k *storage.Key) { k.Namespace = "" })
	mod("empty name", func(k *storage.Key) { k.Name = "" })
	mod("unknown kind", func(k *storage.Key) { k.Kind = "bogus" })
	mod("empty kind", func(k *storage.Key) { k.Kind = "" })
	mod("name over 1024 bytes", func(k *storage.Key) { k.Name = strings.Repeat("x", storage.MaxIdentifierBytes+1) })
	mod("tenant over 1024 bytes", func(k *storage.Key) { k.Tenant = strings.Repeat("t", storage.MaxIdentifierBytes+1) })
	mod("NUL in name", func(k *storage.Key) { k.Name = "a\x00b" })
	mod("NUL in namespace", func(k *storage.Key) { k.Namespace = "a\x00" })
	mod("invalid UTF-8 name", func(k *storage.Key) { k.Name = "a\xff\xfe" })
	mod("invalid UTF-8 tenant", func(k *storage.Key) { k.Tenant = "\xc3\x28" })
	for name, key := range cases {
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t)
			body := &testsupport.CountingReader{R: strings.NewReader("payload")}
			if _, err := s.Put(ctx, key, body, storage.PutOptions{Size: storage.UnknownSize}); !errors.Is(err, storage.ErrInvalidKey) {
				t.Errorf("Put: %v, want ErrInvalidKey", err)
			}
			if body.N() != 0 {
				t.Errorf("Put read %d body bytes for an invalid key", body.N())
			}
			if _, err := s.Stat(ctx, key); !errors.Is(err, storage.ErrInvalidKey) {
				t.Errorf("Stat: %v, want ErrInvalidKey", err)
			}
			if r, err := s.Open(ctx, key, 0, -1); !errors.Is(err, storage.ErrInvalidKey) {
				if r != nil {
					_ = r.Close()
				}
				t.Errorf("Open: %v, want ErrInvalidKey", err)
			}
			if _, err := s.FindMissing(ctx, []storage.Key{valid, key}); !errors.Is(err, storage.ErrInvalidKey) {
				t.Errorf("FindMissing: %v, want ErrInvalidKey", err)
			}
		})
	}
	// A key of exactly the maximum length is valid.
	long := valid
	long.Name = strings.Repeat("é", storage.MaxIdentifierBytes/2)
	mustPut(t, s, long, []byte("x"), storage.PutOptions{})
	assertStored(t, s, long, []byte("x"))

	for _, ns := range [][2]string{{"", "app"}, {"acme", ""}, {"acme\x00", "app"}, {"acme", "\xff"}, {"acme", strings.Repeat("n", 1025)}} {
		if err := s.DeleteNamespace(ctxT(t), ns[0], ns[1], 0); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("DeleteNamespace(%q, %q) = %v, want ErrInvalidKey", ns[0], ns[1], err)
		}
	}
}

func testDeleteNamespace(t *testing.T, s storage.Store) {
	ctx := ctxT(t)
	var inApp []storage.Key
	for _, kind := range storage.Kinds {
		key := k(kind, "doomed")
		mustPut(t, s, key, []byte("x"), storage.PutOptions{})
		inApp = append(inApp, key)
	}
	// Namespaces sharing a prefix, and the same namespace of another tenant, are untouched.
	survivors := []storage.Key{
		{Tenant: "acme", Namespace: "app2", Kind: storage.KindCAS, Name: "doomed"},
		{Tenant: "acme", Namespace: "ap", Kind: storage.KindCAS, Name: "doomed"},
		{Tenant: "acme2", Namespace: "app", Kind: storage.KindCAS, Name: "doomed"},
		{Tenant: "other", Namespace: "app", Kind: storage.KindKeyValue, Name: "doomed"},
	}
	for _, key := range survivors {
		mustPut(t, s, key, []byte("keep"), storage.PutOptions{})
	}
	if err := s.DeleteNamespace(ctx, "acme", "app", 0); err != nil {
		t.Fatalf("DeleteNamespace: %v", err)
	}
	for _, key := range inApp {
		assertAbsent(t, s, key)
	}
	for _, key := range survivors {
		assertStored(t, s, key, []byte("keep"))
	}
	// Writes after the clean are stored again (immutable kinds start afresh).
	for _, key := range inApp {
		if res := mustPut(t, s, key, []byte("reborn"), storage.PutOptions{}); !res.Created {
			t.Fatalf("%v: write after clean not created: %+v", key, res)
		}
		assertStored(t, s, key, []byte("reborn"))
	}
	// Deleting an empty or unknown namespace is fine.
	if err := s.DeleteNamespace(ctx, "acme", "never-used", 0); err != nil {
		t.Fatal(err)
	}
}

func testDeleteNamespaceVersions(t *testing.T, s storage.Store) {
	ctx := ctxT(t)
	base := storage.MakeVersion(time.Now().Add(time.Hour).UnixMilli(), 0)
	older := k(storage.KindGradle, "older")
	newer := k(storage.KindAC, "newer")
	mustPut(t, s, older, []byte("old"), storage.PutOptions{Version: base + 100})
	mustPut(t, s, newer, []byte("new"), storage.PutOptions{Version: base + 300})
	tomb := base + 200
	if err := s.DeleteNamespace(ctx, "acme", "app", tomb); err != nil {
		t.Fatal(err)
	}
	assertAbsent(t, s, older)
	// A replicated write newer than the tombstone survives it (last writer wins).
	assertStored(t, s, newer, []byte("new"))

	for _, kind := range []storage.Kind{storage.KindCAS, storage.KindKeyValue} {
		key := k(kind, "late")
		for _, v := range []storage.Version{base + 150, tomb} {
			_, err := s.Put(ctx, key, strings.NewReader("stale"), storage.PutOptions{Size: storage.UnknownSize, Version: v})
			if !errors.Is(err, storage.ErrStale) {
				t.Fatalf("%s: write at version %v with tombstone %v: %v, want ErrStale", kind, v, tomb, err)
			}
			assertAbsent(t, s, key)
		}
		if res := mustPut(t, s, key, []byte("fresh"), storage.PutOptions{Version: tomb + 1}); !res.Created {
			t.Fatalf("%s: write newer than the tombstone not created: %+v", kind, res)
		}
		assertStored(t, s, key, []byte("fresh"))
	}
	// The store's clock observed the tombstone, so a clock-stamped write is newer than it.
	now := k(storage.KindNx, "stamped")
	res := mustPut(t, s, now, []byte("now"), storage.PutOptions{})
	if res.Info.Version <= tomb {
		t.Fatalf("clock-stamped write got version %v, not after the tombstone %v", res.Info.Version, tomb)
	}
	// An older tombstone does not lower the newer one: late writes stay stale.
	if err := s.DeleteNamespace(ctx, "acme", "app", base+1); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, k(storage.KindCAS, "later"), strings.NewReader("x"), storage.PutOptions{Size: 1, Version: base + 190}); !errors.Is(err, storage.ErrStale) {
		t.Fatalf("write below the higher tombstone: %v, want ErrStale", err)
	}
}

func testConcurrency(t *testing.T, s storage.Store) {
	const workers = 12
	const perWorker = 40
	ctx := ctxT(t)
	var wg sync.WaitGroup
	var mu sync.Mutex
	created := map[storage.Key]int{}
	errs := make(chan error, workers*perWorker)
	base := storage.MakeVersion(time.Now().UnixMilli(), 0)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				// Distinct keys, shared immutable keys and a shared mutable key, all at once.
				own := k(storage.KindCAS, fmt.Sprintf("w%d-%d", w, i))
				body := Bytes(uint64(w*1000+i), 512+i*37)
				if _, err := s.Put(ctx, own, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
					errs <- fmt.Errorf("put %v: %w", own, err)
					return
				}
				r, err := s.Open(ctx, own, 0, -1)
				if err != nil {
					errs <- fmt.Errorf("open %v: %w", own, err)
					return
				}
				got, err := io.ReadAll(r)
				_ = r.Close()
				if err != nil || !bytes.Equal(got, body) {
					errs <- fmt.Errorf("read back %v: %d bytes, %v", own, len(got), err)
					return
				}
				shared := k(storage.KindXcode, fmt.Sprintf("shared-%d", i%8))
				res, err := s.Put(ctx, shared, strings.NewReader(shared.Name), storage.PutOptions{Size: int64(len(shared.Name))})
				if err != nil {
					errs <- fmt.Errorf("put %v: %w", shared, err)
					return
				}
				if res.Created {
					mu.Lock()
					created[shared]++
					mu.Unlock()
				}
				v := base + storage.Version(w*perWorker+i+1)
				doc := fmt.Sprintf(`{"version":%d}`, v)
				if _, err := s.Put(ctx, k(storage.KindKeyValue, "hot"), strings.NewReader(doc), storage.PutOptions{Size: int64(len(doc)), Version: v}); err != nil {
					errs <- fmt.Errorf("put keyvalue: %w", err)
					return
				}
				if _, err := s.FindMissing(ctx, []storage.Key{own, shared}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range 8 {
		key := k(storage.KindXcode, fmt.Sprintf("shared-%d", i))
		if created[key] != 1 {
			t.Errorf("%v was created %d times, want exactly once (first writer wins)", key, created[key])
		}
		assertStored(t, s, key, []byte(key.Name))
	}
	maxV := base + storage.Version(workers*perWorker)
	assertStored(t, s, k(storage.KindKeyValue, "hot"), []byte(fmt.Sprintf(`{"version":%d}`, maxV)))
}

// testAttributes: attributes are stored with the body and answered by Stat and Open; an
// immutable object keeps its first writer's, and a replicated first writer brings its own.
func testAttributes(t *testing.T, s storage.Store) {
	attrs := func(tag string) storage.Attributes {
		a, err := storage.NewAttributes(map[string]string{"turbo.duration-ms": "12", "turbo.tag": tag})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, kind := range []storage.Kind{storage.KindTurbo, storage.KindKeyValue} {
		key := k(kind, "attrs")
		res := mustPut(t, s, key, []byte("body"), storage.PutOptions{Size: 4, Attributes: attrs("first")})
		if !res.Created || res.Info.Attributes != attrs("first") {
			t.Fatalf("%s: Put = %+v", kind, res)
		}
		info, err := s.Stat(ctxT(t), key)
		if err != nil || info.Attributes != attrs("first") {
			t.Fatalf("%s: Stat = %+v, %v", kind, info, err)
		}
		r, err := s.Open(ctxT(t), key, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		_ = r.Close()
		if r.Info().Attributes != attrs("first") {
			t.Fatalf("%s: Open's Info lost the attributes: %+v", kind, r.Info())
		}
		if kind.LastWriterWins() {
			// A newer document replaces the attributes too, including with none.
			res = mustPut(t, s, key, []byte("doc2"), storage.PutOptions{Size: 4})
			if !res.Created || !res.Info.Attributes.IsZero() {
				t.Fatalf("%s: rewrite kept old attributes: %+v", kind, res)
			}
			continue
		}
		res = mustPut(t, s, key, []byte("other"), storage.PutOptions{Size: 5, Attributes: attrs("second")})
		if res.Created || res.Info.Attributes != attrs("first") {
			t.Fatalf("%s: a second local write changed the attributes: %+v", kind, res)
		}
		// A replicated write that is the cluster's first writer brings its own attributes.
		body := []byte("older")
		sum := sha256.Sum256(body)
		res = mustPut(t, s, key, body, storage.PutOptions{Size: 5, ExpectedSHA256: &sum, Version: info.Version - 1000, Attributes: attrs("origin")})
		if !res.Created || res.Info.Attributes != attrs("origin") {
			t.Fatalf("%s: replicated first writer: %+v", kind, res)
		}
		if info, _ := s.Stat(ctxT(t), key); info.Attributes != attrs("origin") {
			t.Fatalf("%s: Stat after replacement = %+v", kind, info)
		}
	}
}
