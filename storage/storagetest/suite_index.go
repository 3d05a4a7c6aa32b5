package storagetest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
)

// IndexStore is what RunIndexSuite exercises: a store and its replication view.
type IndexStore = interface {
	storage.Store
	storage.Index
}

// RunIndexSuite checks the storage.Index contract (anti-entropy digests, listings, tombstones,
// evicted stubs) against the stores open returns. open is called once per store (a subtest
// may open two) and must return an empty store that it cleans up itself. Eviction is
// implementation specific; stubs are created here with ApplyStub.
func RunIndexSuite(t *testing.T, open func(t *testing.T) IndexStore) {
	tests := []struct {
		name string
		fn   func(t *testing.T, open func(t *testing.T) IndexStore)
	}{
		{"EmptyDigests", testIndexEmpty},
		{"DigestsMatchDefinition", testIndexDefinition},
		{"DigestsTrackChanges", testIndexTracksChanges},
		{"DigestsIndependentOfOrder", testIndexOrderIndependent},
		{"ListObjectsPaging", testIndexListPaging},
		{"ListObjectsInvalid", testIndexListInvalid},
		{"Tombstones", testIndexTombstones},
		{"StubIsInvisible", testIndexStubInvisible},
		{"StubRulesImmutable", testIndexStubImmutable},
		{"StubRulesLastWriterWins", testIndexStubLastWriterWins},
		{"StubAndTombstone", testIndexStubTombstone},
		{"ApplyStubInvalid", testIndexStubInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open) })
	}
}

// refDigests computes the bucket digests of objects straight from the definition in
// storage.Index, independently of the implementations under test.
func refDigests(objects []storage.Info, bits uint32) []byte {
	out := make([]byte, (1<<bits)*sha256.Size)
	for _, info := range objects {
		ek := meta.ManifestKey(info.Key)
		ksum := sha256.Sum256(ek)
		bucket := uint32(0)
		if bits > 0 {
			bucket = binary.BigEndian.Uint32(ksum[:4]) >> (32 - bits)
		}
		in := append(bytes.Clone(ek), info.SHA256[:]...)
		if info.Key.Kind.LastWriterWins() {
			in = binary.BigEndian.AppendUint64(in, uint64(info.Version))
		}
		h := sha256.Sum256(in)
		for i := range h {
			out[int(bucket)*sha256.Size+i] ^= h[i]
		}
	}
	return out
}

func digests(t *testing.T, s storage.Index) ([]byte, uint64) {
	t.Helper()
	d, n, err := s.BucketDigests(ctxT(t), storage.DigestBucketBits)
	if err != nil {
		t.Fatalf("BucketDigests: %v", err)
	}
	if len(d) != (1<<storage.DigestBucketBits)*sha256.Size {
		t.Fatalf("BucketDigests returned %d bytes, want %d", len(d), (1<<storage.DigestBucketBits)*sha256.Size)
	}
	return d, n
}

// assertDigests checks that s summarises exactly the objects want (stubs included).
func assertDigests(t *testing.T, s storage.Index, want []storage.Info) {
	t.Helper()
	d, n := digests(t, s)
	if n != uint64(len(want)) {
		t.Fatalf("BucketDigests counts %d objects, want %d", n, len(want))
	}
	if ref := refDigests(want, storage.DigestBucketBits); !bytes.Equal(d, ref) {
		t.Fatalf("bucket digests differ from the definition in %d of %d buckets", diffBuckets(d, ref), 1<<storage.DigestBucketBits)
	}
}

func diffBuckets(a, b []byte) int {
	n := 0
	for i := 0; i+sha256.Size <= len(a) && i+sha256.Size <= len(b); i += sha256.Size {
		if !bytes.Equal(a[i:i+sha256.Size], b[i:i+sha256.Size]) {
			n++
		}
	}
	return n
}

// listAll pages through every object of the given buckets with a small page size and fails
// on a repeated object or a key-order violation.
func listAll(t *testing.T, s storage.Index, bits uint32, buckets []uint32, limit int) []storage.ObjectSummary {
	t.Helper()
	var out []storage.ObjectSummary
	var token []byte
	var lastKey []byte
	for page := 0; ; page++ {
		if page > 100000 {
			t.Fatal("ListObjects never returned a nil token")
		}
		sums, next, err := s.ListObjects(ctxT(t), bits, buckets, token, limit)
		if err != nil {
			t.Fatalf("ListObjects(page %d): %v", page, err)
		}
		if len(sums) > limit {
			t.Fatalf("ListObjects returned %d summaries, limit %d", len(sums), limit)
		}
		for _, sum := range sums {
			ek := meta.ManifestKey(sum.Info.Key)
			if lastKey != nil && bytes.Compare(ek, lastKey) <= 0 {
				t.Fatalf("ListObjects: %v listed after %q (repeated or out of key order)", sum.Info.Key, lastKey)
			}
			lastKey = ek
		}
		out = append(out, sums...)
		if next == nil {
			return out
		}
		if len(next) == 0 {
			t.Fatal("ListObjects returned an empty non-nil token")
		}
		token = next
	}
}

func mustStub(t *testing.T, s storage.Index, info storage.Info) {
	t.Helper()
	if err := s.ApplyStub(ctxT(t), info); err != nil {
		t.Fatalf("ApplyStub(%v @%v): %v", info.Key, info.Version, err)
	}
}

// summaryOf lists everything and returns the summary of key, if listed.
func summaryOf(t *testing.T, s storage.Index, key storage.Key) (storage.ObjectSummary, bool) {
	t.Helper()
	for _, sum := range listAll(t, s, 0, nil, 1000) {
		if sum.Info.Key == key {
			return sum, true
		}
	}
	return storage.ObjectSummary{}, false
}

// versionBase is fixed once so that pastVersion(n) means the same version throughout a run.
var versionBase = storage.MakeVersion(time.Now().Add(-time.Minute).UnixMilli(), 0)

// pastVersion is an explicit version in the past (a minute before the run started, plus a
// logical n), so a store's own clock (now) orders its local writes after it.
func pastVersion(n int) storage.Version {
	return versionBase + storage.Version(n)
}

func putAt(t *testing.T, s storage.Store, key storage.Key, body []byte, v storage.Version) (storage.PutResult, error) {
	t.Helper()
	return s.Put(ctxT(t), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), Version: v, ContentType: "application/x-test"})
}

func stubInfo(key storage.Key, body []byte, v storage.Version) storage.Info {
	return storage.Info{Key: key, Size: int64(len(body)), ContentType: "application/x-test", SHA256: sha256.Sum256(body), Version: v}
}

func testIndexEmpty(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	d, n := digests(t, s)
	if n != 0 || !bytes.Equal(d, make([]byte, len(d))) {
		t.Fatalf("empty store: %d objects, digests not all zero", n)
	}
	for _, bits := range []uint32{0, 1, 4} {
		d, n, err := s.BucketDigests(ctxT(t), bits)
		if err != nil || n != 0 || len(d) != (1<<bits)*sha256.Size {
			t.Fatalf("BucketDigests(%d) = %d bytes, %d objects, %v", bits, len(d), n, err)
		}
	}
	if _, _, err := s.BucketDigests(ctxT(t), storage.DigestBucketBits+1); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("BucketDigests(%d) = %v, want ErrInvalidKey", storage.DigestBucketBits+1, err)
	}
	sums, next, err := s.ListObjects(ctxT(t), storage.DigestBucketBits, nil, nil, 10)
	if err != nil || len(sums) != 0 || next != nil {
		t.Fatalf("ListObjects on an empty store = %v, %q, %v", sums, next, err)
	}
	tombs, err := s.Tombstones(ctxT(t))
	if err != nil || len(tombs) != 0 {
		t.Fatalf("Tombstones on an empty store = %v, %v", tombs, err)
	}
}

// indexFixture writes objects of every kind in two namespaces and returns their Infos.
func indexFixture(t *testing.T, s storage.Store, n int) []storage.Info {
	t.Helper()
	var infos []storage.Info
	for i := range n {
		kind := storage.Kinds[i%len(storage.Kinds)]
		ns := []string{"app", "lib"}[i%2]
		key := storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: fmt.Sprintf("obj-%03d", i)}
		body := Bytes(uint64(i), 10+i%50)
		res := mustPut(t, s, key, body, storage.PutOptions{})
		infos = append(infos, res.Info)
	}
	return infos
}

func testIndexDefinition(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	infos := indexFixture(t, s, 64)
	assertDigests(t, s, infos)
	// Coarser resolutions fold the same definition.
	for _, bits := range []uint32{0, 3, 7} {
		d, n, err := s.BucketDigests(ctxT(t), bits)
		if err != nil || n != uint64(len(infos)) {
			t.Fatalf("BucketDigests(%d): %d objects, %v", bits, n, err)
		}
		if !bytes.Equal(d, refDigests(infos, bits)) {
			t.Fatalf("BucketDigests(%d) differs from the definition", bits)
		}
	}
}

func testIndexTracksChanges(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	ctx := ctxT(t)
	state := map[storage.Key]storage.Info{}
	current := func() []storage.Info {
		out := make([]storage.Info, 0, len(state))
		for _, info := range state {
			out = append(out, info)
		}
		return out
	}
	check := func(what string, wantChanged bool, before []byte) []byte {
		t.Helper()
		assertDigests(t, s, current())
		after, _ := digests(t, s)
		if changed := !bytes.Equal(before, after); changed != wantChanged {
			t.Fatalf("%s: digests changed = %v, want %v", what, changed, wantChanged)
		}
		return after
	}
	d, _ := digests(t, s)

	blob := k(storage.KindCAS, "blob")
	state[blob] = mustPut(t, s, blob, []byte("blob"), storage.PutOptions{}).Info
	d = check("put", true, d)
	mustPut(t, s, blob, []byte("blob"), storage.PutOptions{})
	d = check("first writer wins repeat", false, d)

	doc := k(storage.KindKeyValue, "doc")
	state[doc] = mustPut(t, s, doc, []byte(`{"v":1}`), storage.PutOptions{}).Info
	d = check("keyvalue put", true, d)
	state[doc] = mustPut(t, s, doc, []byte(`{"v":2}`), storage.PutOptions{}).Info
	d = check("last writer wins replacement", true, d)
	// The same body at a newer version is a new entry for last-writer-wins kinds.
	state[doc] = mustPut(t, s, doc, []byte(`{"v":2}`), storage.PutOptions{}).Info
	d = check("keyvalue rewrite of the same body", true, d)
	res, err := putAt(t, s, doc, []byte(`{"v":0}`), pastVersion(1))
	if err != nil || res.Created {
		t.Fatalf("stale keyvalue write: %+v, %v", res, err)
	}
	d = check("stale keyvalue write", false, d)

	other := storage.Key{Tenant: "acme", Namespace: "other", Kind: storage.KindNx, Name: "kept"}
	state[other] = mustPut(t, s, other, []byte("kept"), storage.PutOptions{}).Info
	d = check("put in another namespace", true, d)

	stubKey := k(storage.KindGradle, "stub")
	stub := stubInfo(stubKey, []byte("evicted elsewhere"), pastVersion(5))
	mustStub(t, s, stub)
	state[stubKey] = stub
	d = check("stub applied", true, d)

	if err := s.DeleteNamespace(ctx, "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	delete(state, blob)
	delete(state, doc)
	delete(state, stubKey)
	d = check("namespace clean", true, d)
	if err := s.DeleteNamespace(ctx, "acme", "app", 0); err != nil {
		t.Fatal(err)
	}
	check("clean of an empty namespace", false, d)
}

// indexOp is one write of the order-independence test.
type indexOp struct {
	key   storage.Key
	body  []byte
	v     storage.Version
	clean bool // DeleteNamespace(key.Tenant, key.Namespace, v) instead of a put
	stub  bool // ApplyStub instead of a put
}

func testIndexOrderIndependent(t *testing.T, open func(t *testing.T) IndexStore) {
	var ops []indexOp
	for i := range 40 {
		kind := storage.Kinds[i%len(storage.Kinds)]
		ns := []string{"app", "lib", "gone"}[i%3]
		key := storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: fmt.Sprintf("o%d", i)}
		ops = append(ops, indexOp{key: key, body: Bytes(uint64(i), 20), v: pastVersion(10 + i)})
		if kind.LastWriterWins() {
			// Two more versions: whichever arrives last, the newest wins.
			ops = append(ops, indexOp{key: key, body: Bytes(uint64(i)+100, 21), v: pastVersion(200 + i)})
			ops = append(ops, indexOp{key: key, body: Bytes(uint64(i)+200, 22), v: pastVersion(100 + i)})
		}
	}
	for i := range 6 {
		key := storage.Key{Tenant: "acme", Namespace: "lib", Kind: storage.KindMetro, Name: fmt.Sprintf("stub%d", i)}
		ops = append(ops, indexOp{key: key, body: Bytes(uint64(i)+300, 5), v: pastVersion(50 + i), stub: true})
	}
	// The clean at version 150 removes everything older in "gone"; later writes survive.
	gone := storage.Key{Tenant: "acme", Namespace: "gone"}
	ops = append(ops, indexOp{key: gone, v: pastVersion(150), clean: true})
	ops = append(ops, indexOp{key: storage.Key{Tenant: "acme", Namespace: "gone", Kind: storage.KindCAS, Name: "late"},
		body: []byte("late"), v: pastVersion(300)})

	apply := func(t *testing.T, s IndexStore, ops []indexOp) {
		for _, op := range ops {
			var err error
			switch {
			case op.clean:
				err = s.DeleteNamespace(ctxT(t), op.key.Tenant, op.key.Namespace, op.v)
			case op.stub:
				err = s.ApplyStub(ctxT(t), stubInfo(op.key, op.body, op.v))
			default:
				_, err = putAt(t, s, op.key, op.body, op.v)
			}
			if err != nil && !errors.Is(err, storage.ErrStale) {
				t.Fatalf("apply %+v: %v", op, err)
			}
		}
	}
	a, b := open(t), open(t)
	apply(t, a, ops)
	shuffled := slices.Clone(ops)
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	apply(t, b, shuffled)

	da, na := digests(t, a)
	db, nb := digests(t, b)
	if na != nb || !bytes.Equal(da, db) {
		t.Fatalf("same writes in another order: %d vs %d objects, %d buckets differ", na, nb, diffBuckets(da, db))
	}
	la, lb := listAll(t, a, 0, nil, 1000), listAll(t, b, 0, nil, 1000)
	if !slices.Equal(la, lb) {
		t.Fatalf("listings differ:\n%v\n%v", la, lb)
	}
	var infos []storage.Info
	for _, sum := range la {
		if sum.Info.Key.Namespace == "gone" && sum.Info.Version <= pastVersion(150) {
			t.Fatalf("%v at %v survived the namespace clean", sum.Info.Key, sum.Info.Version)
		}
		infos = append(infos, sum.Info)
	}
	assertDigests(t, a, infos)
}

func testIndexListPaging(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	infos := indexFixture(t, s, 300)
	stub := stubInfo(storage.Key{Tenant: "acme", Namespace: "app", Kind: storage.KindCAS, Name: "zz-stub"}, []byte("s"), pastVersion(1))
	mustStub(t, s, stub)
	want := map[storage.Key]storage.ObjectSummary{}
	for _, info := range infos {
		want[info.Key] = storage.ObjectSummary{Info: info}
	}
	want[stub.Key] = storage.ObjectSummary{Info: stub, Evicted: true}

	for _, limit := range []int{1, 7, 1000} {
		got := listAll(t, s, storage.DigestBucketBits, nil, limit)
		if len(got) != len(want) {
			t.Fatalf("limit %d: listed %d objects, want %d", limit, len(got), len(want))
		}
		for _, sum := range got {
			if w, ok := want[sum.Info.Key]; !ok || w != sum {
				t.Fatalf("limit %d: listed %+v, want %+v", limit, sum, w)
			}
		}
	}
	// Bucket subsets: every object of the chosen buckets exactly once, nothing else.
	bucketOf := func(key storage.Key, bits uint32) uint32 {
		sum := sha256.Sum256(meta.ManifestKey(key))
		if bits == 0 {
			return 0
		}
		return binary.BigEndian.Uint32(sum[:4]) >> (32 - bits)
	}
	for _, bits := range []uint32{storage.DigestBucketBits, 4} {
		var chosen []uint32
		for i, info := range infos {
			if i%3 == 0 {
				chosen = append(chosen, bucketOf(info.Key, bits))
			}
		}
		chosen = append(chosen, chosen[0]) // duplicates are harmless
		set := map[uint32]bool{}
		for _, b := range chosen {
			set[b] = true
		}
		expect := 0
		for key := range want {
			if set[bucketOf(key, bits)] {
				expect++
			}
		}
		got := listAll(t, s, bits, chosen, 3)
		if len(got) != expect {
			t.Fatalf("bits %d, %d buckets: listed %d objects, want %d", bits, len(set), len(got), expect)
		}
		for _, sum := range got {
			if !set[bucketOf(sum.Info.Key, bits)] {
				t.Fatalf("bits %d: %v listed although its bucket was not asked for", bits, sum.Info.Key)
			}
			if w := want[sum.Info.Key]; w != sum {
				t.Fatalf("bits %d: listed %+v, want %+v", bits, sum, w)
			}
		}
	}
}

func testIndexListInvalid(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	indexFixture(t, s, 3)
	ctx := ctxT(t)
	cases := []struct {
		name    string
		bits    uint32
		buckets []uint32
		token   []byte
	}{
		{"too many bits", storage.DigestBucketBits + 1, nil, nil},
		{"bucket out of range", 4, []uint32{16}, nil},
		{"bucket out of range at zero bits", 0, []uint32{1}, nil},
		{"garbage token", storage.DigestBucketBits, nil, []byte{0xff, 0x00, 0x13}},
		{"empty token", storage.DigestBucketBits, nil, []byte{}},
	}
	for _, tc := range cases {
		sums, next, err := s.ListObjects(ctx, tc.bits, tc.buckets, tc.token, 10)
		if !errors.Is(err, storage.ErrInvalidKey) {
			t.Fatalf("%s: ListObjects = %d summaries, %q, %v; want ErrInvalidKey", tc.name, len(sums), next, err)
		}
	}
}

func testIndexTombstones(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	ctx := ctxT(t)
	v1, v2 := pastVersion(10), pastVersion(20)
	for _, c := range []struct {
		ns string
		v  storage.Version
	}{{"a", v1}, {"b", v2}, {"a", v1 - 5}} { // an older clean never lowers a tombstone
		if err := s.DeleteNamespace(ctx, "acme", c.ns, c.v); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteNamespace(ctx, "other", "a", v2); err != nil {
		t.Fatal(err)
	}
	got, err := s.Tombstones(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b storage.Tombstone) int {
		return bytes.Compare([]byte(a.Tenant+"\x00"+a.Namespace), []byte(b.Tenant+"\x00"+b.Namespace))
	})
	want := []storage.Tombstone{
		{Tenant: "acme", Namespace: "a", Version: v1},
		{Tenant: "acme", Namespace: "b", Version: v2},
		{Tenant: "other", Namespace: "a", Version: v2},
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Tombstones = %v, want %v", got, want)
	}
}

func testIndexStubInvisible(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	key := k(storage.KindCAS, "evicted")
	stub := stubInfo(key, []byte("body held elsewhere"), pastVersion(3))
	mustStub(t, s, stub)
	assertAbsent(t, s, key)
	sum, ok := summaryOf(t, s, key)
	if !ok || !sum.Evicted || sum.Info != stub {
		t.Fatalf("listing shows %+v (listed %v), want the stub %+v", sum, ok, stub)
	}
	assertDigests(t, s, []storage.Info{stub})
	mustStub(t, s, stub) // idempotent
	assertDigests(t, s, []storage.Info{stub})
}

func testIndexStubImmutable(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	body := []byte("artifact")
	// A Put fills a stub as if it were absent, whatever the versions.
	key := k(storage.KindXcode, "filled")
	stub := stubInfo(key, body, pastVersion(100))
	mustStub(t, s, stub)
	res, err := putAt(t, s, key, body, pastVersion(1))
	if err != nil || !res.Created {
		t.Fatalf("Put over a stub = %+v, %v; want Created", res, err)
	}
	assertStored(t, s, key, body)
	if sum, _ := summaryOf(t, s, key); sum.Evicted || sum.Info != res.Info {
		t.Fatalf("after the fill the listing shows %+v, want %+v", sum, res.Info)
	}
	// Same key and body: the digest does not depend on the version for immutable kinds.
	assertDigests(t, s, []storage.Info{stub})
	// A local write fills a stub too; bringing back the stub's own body, it keeps the stub's
	// version (the artifact is the one the cluster knew, not a later, losing copy).
	local := k(storage.KindNx, "local")
	mustStub(t, s, stubInfo(local, body, pastVersion(7)))
	if res := mustPut(t, s, local, body, storage.PutOptions{}); !res.Created || res.Info.Version != pastVersion(7) {
		t.Fatalf("local Put of the stub's body = %+v; want Created at the stub's version %v", res, pastVersion(7))
	}
	assertStored(t, s, local, body)
	// A stub is no body: a replicated copy with another body fills it even when it is a
	// later write than the stub's.
	other := k(storage.KindGradle, "other-body")
	mustStub(t, s, stubInfo(other, body, pastVersion(7)))
	if res, err := putAt(t, s, other, []byte("later body"), pastVersion(9)); err != nil || !res.Created {
		t.Fatalf("later Put with another body over a stub = %+v, %v; want Created", res, err)
	}
	assertStored(t, s, other, []byte("later body"))

	// Between two stubs the cluster's first writer is kept, so the nodes' digests agree.
	stubs := k(storage.KindMetro, "stubs")
	mustStub(t, s, stubInfo(stubs, []byte("b"), pastVersion(50)))
	first := stubInfo(stubs, []byte("a"), pastVersion(20))
	mustStub(t, s, first)
	mustStub(t, s, stubInfo(stubs, []byte("c"), pastVersion(30)))
	if sum, _ := summaryOf(t, s, stubs); !sum.Evicted || sum.Info != first {
		t.Fatalf("after three stubs the listing shows %+v, want the first writer's %+v", sum, first)
	}
	assertAbsent(t, s, stubs)

	// A stub never replaces an object that is held, not even the cluster's first writer's.
	held := k(storage.KindCAS, "held")
	info := mustPut(t, s, held, body, storage.PutOptions{}).Info
	mustStub(t, s, stubInfo(held, body, info.Version+1000))
	mustStub(t, s, stubInfo(held, []byte("earlier"), info.Version-1000))
	assertStored(t, s, held, body)
	if sum, _ := summaryOf(t, s, held); sum.Evicted || sum.Info != info {
		t.Fatalf("held object listed as %+v, want %+v", sum, info)
	}
}

func testIndexStubLastWriterWins(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	key := k(storage.KindAC, "action")
	v1, v2, v3 := pastVersion(1), pastVersion(2), pastVersion(3)
	if _, err := putAt(t, s, key, []byte("v2"), v2); err != nil {
		t.Fatal(err)
	}
	mustStub(t, s, stubInfo(key, []byte("v1"), v1)) // older: ignored
	assertStored(t, s, key, []byte("v2"))
	mustStub(t, s, stubInfo(key, []byte("v2"), v2)) // same version: ignored
	assertStored(t, s, key, []byte("v2"))
	stub := stubInfo(key, []byte("v3"), v3) // newer: replaces the older object
	mustStub(t, s, stub)
	assertAbsent(t, s, key)
	if sum, _ := summaryOf(t, s, key); !sum.Evicted || sum.Info != stub {
		t.Fatalf("listing shows %+v, want the stub %+v", sum, stub)
	}
	assertDigests(t, s, []storage.Info{stub})
	// An older write does not displace the newer stub.
	if res, err := putAt(t, s, key, []byte("v2"), v2); err != nil || res.Created {
		t.Fatalf("Put older than the stub = %+v, %v; want not created", res, err)
	}
	assertAbsent(t, s, key)
	// The stub's own version (read-through or repair bringing it back) fills it.
	res, err := putAt(t, s, key, []byte("v3"), v3)
	if err != nil || !res.Created {
		t.Fatalf("Put at the stub's version = %+v, %v; want Created", res, err)
	}
	assertStored(t, s, key, []byte("v3"))
	assertDigests(t, s, []storage.Info{stub})
	// A local write (stamped now) wins over a stub too.
	mustStub(t, s, stubInfo(key, []byte("v4"), pastVersion(4)))
	if res := mustPut(t, s, key, []byte("local"), storage.PutOptions{}); !res.Created {
		t.Fatalf("local Put over a stub: %+v", res)
	}
	assertStored(t, s, key, []byte("local"))
}

func testIndexStubTombstone(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	ctx := ctxT(t)
	mustStub(t, s, stubInfo(k(storage.KindCAS, "old"), []byte("old"), pastVersion(5)))
	if err := s.DeleteNamespace(ctx, "acme", "app", pastVersion(10)); err != nil {
		t.Fatal(err)
	}
	// The clean removed the older stub.
	assertDigests(t, s, nil)
	// A stub not newer than the tombstone is not recorded; a newer one is.
	mustStub(t, s, stubInfo(k(storage.KindCAS, "covered"), []byte("c"), pastVersion(10)))
	assertDigests(t, s, nil)
	newer := stubInfo(k(storage.KindCAS, "newer"), []byte("n"), pastVersion(11))
	mustStub(t, s, newer)
	assertDigests(t, s, []storage.Info{newer})
}

func testIndexStubInvalid(t *testing.T, open func(t *testing.T) IndexStore) {
	s := open(t)
	ctx := ctxT(t)
	for _, info := range []storage.Info{
		{Key: storage.Key{Tenant: "", Namespace: "app", Kind: storage.KindCAS, Name: "x"}, Version: pastVersion(1)},
		{Key: storage.Key{Tenant: "acme", Namespace: "app", Kind: "bogus", Name: "x"}, Version: pastVersion(1)},
		{Key: k(storage.KindCAS, "no-version")},
		{Key: k(storage.KindCAS, "negative"), Size: -1, Version: pastVersion(1)},
	} {
		if err := s.ApplyStub(ctx, info); !errors.Is(err, storage.ErrInvalidKey) {
			t.Fatalf("ApplyStub(%+v) = %v, want ErrInvalidKey", info, err)
		}
	}
	assertDigests(t, s, nil)
}
