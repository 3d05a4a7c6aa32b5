package peer

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// replicatedItem is a PutItem as a sender builds it from its store.
func replicatedItem(k storage.Key, body []byte, v storage.Version) storage.PutItem {
	sum := sha256.Sum256(body)
	return storage.PutItem{Key: k, Body: body, Opts: storage.PutOptions{Size: int64(len(body)), ContentType: "application/octet-stream", ExpectedSHA256: &sum, Version: v}}
}

// A batch is applied into the real disk store in one commit and answered per item: new
// objects are applied at their origin's version, an identical copy and a write older than
// its namespace's tombstone count as delivered without being applied, a body that does not
// match its digest fails alone and is not stored, and the objects spread over several
// messages (more than a message's worth of bodies) all arrive.
func TestPushBatchAppliesEachItem(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	if err := store.DeleteNamespace(ctx, "acme", "cleaned", version(50)); err != nil {
		t.Fatal(err)
	}
	existing := []byte("already here")
	if _, err := p.client.PushObject(ctx, p.addr, infoFor(key(storage.KindGradle, "existing"), existing, version(3)), bytes.NewReader(existing)); err != nil {
		t.Fatal(err)
	}
	var items []storage.PutItem
	for i := range 40 { // 40 × 100 KiB: four messages
		items = append(items, replicatedItem(key(storage.KindGradle, fmt.Sprintf("obj-%d", i)), storagetest.Bytes(uint64(i), 100<<10), version(10+i)))
	}
	items = append(items, replicatedItem(key(storage.KindGradle, "existing"), existing, version(3)))
	bad := replicatedItem(key(storage.KindGradle, "bad-digest"), []byte("body"), version(4))
	wrong := sha256.Sum256([]byte("another body"))
	bad.Opts.ExpectedSHA256 = &wrong
	items = append(items, bad)
	items = append(items, replicatedItem(storage.Key{Tenant: "acme", Namespace: "cleaned", Kind: storage.KindGradle, Name: "old"}, []byte("old"), version(49)))

	res, err := p.client.PushBatch(ctx, p.addr, items)
	if err != nil {
		t.Fatalf("PushBatch: %v", err)
	}
	if len(res) != len(items) {
		t.Fatalf("%d results for %d items", len(res), len(items))
	}
	for i := range 40 {
		if res[i].Err != nil || !res[i].Created {
			t.Errorf("item %d: %+v, want applied", i, res[i])
		}
		info, err := store.Stat(ctx, items[i].Key)
		if err != nil || info.Version != items[i].Opts.Version || info.SHA256 != *items[i].Opts.ExpectedSHA256 {
			t.Errorf("item %d on the receiver: %+v, %v; want the origin's version and digest", i, info, err)
		}
	}
	if r := res[40]; r.Err != nil || r.Created {
		t.Errorf("identical copy: %+v, want delivered without being applied", r)
	}
	if r := res[41]; !errors.Is(r.Err, storage.ErrDigestMismatch) || status.Code(r.Err) != codes.InvalidArgument {
		t.Errorf("digest mismatch: %+v, want INVALID_ARGUMENT wrapping ErrDigestMismatch", r)
	}
	if r := res[42]; r.Err != nil || r.Created {
		t.Errorf("write under a newer tombstone: %+v, want delivered without being applied", r)
	}
	for _, k := range []storage.Key{bad.Key, items[42].Key} {
		if _, err := store.Stat(ctx, k); !isNotFound(err) {
			t.Errorf("%v is stored after its refusal: %v", k, err)
		}
	}
	got, err := readStored(t, store, items[7].Key)
	if err != nil || !bytes.Equal(got, items[7].Body) {
		t.Errorf("reading a batched object back: %d bytes, %v", len(got), err)
	}
	if n := counterValue(t, p.serverReg, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushBatch", "code": "OK"}); n != 1 {
		t.Errorf("server counted %v PushBatch calls, want 1", n)
	}
}

func readStored(t *testing.T, store Backend, k storage.Key) ([]byte, error) {
	t.Helper()
	r, err := store.Open(testCtx(t), k, 0, -1)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	return readAll(t, r)
}

// The server enforces the batch bounds while receiving, whatever a peer sends: a batch beyond
// them is INVALID_ARGUMENT and nothing of it is stored, while an item with a bad header fails
// alone.
func TestServerRejectsMalformedBatches(t *testing.T) {
	store := diskStore(t)
	_, addr := startServer(t, ServerConfig{}, store)
	rc := rawClient(t, addr)
	ctx := testCtx(t)
	item := func(name string, body []byte) *peerpb.BatchItem {
		return &peerpb.BatchItem{Header: infoToHeader(infoFor(key(storage.KindGradle, name), body, version(1)), false), Body: body}
	}
	send := func(parts ...*peerpb.PushBatchPart) (*peerpb.PushBatchResponse, error) {
		stream, err := rc.PushBatch(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range parts {
			if err := stream.Send(p); err != nil {
				break
			}
		}
		return stream.CloseAndRecv()
	}
	many := &peerpb.PushBatchPart{}
	for i := range MaxBatchItems + 1 {
		many.Items = append(many.Items, item(fmt.Sprintf("many-%d", i), []byte("x")))
	}
	var heavy []*peerpb.PushBatchPart // 9 parts of 4 items of 250 KiB: over MaxBatchBytes
	for i := range 9 {
		part := &peerpb.PushBatchPart{}
		for j := range 4 {
			part.Items = append(part.Items, item(fmt.Sprintf("heavy-%d-%d", i, j), storagetest.Bytes(uint64(i*4+j), 250<<10)))
		}
		heavy = append(heavy, part)
	}
	for _, c := range []struct {
		name   string
		parts  []*peerpb.PushBatchPart
		reason string
		prefix string // no key with it may be stored
	}{
		{"empty", nil, "MALFORMED", ""},
		{"too many items", []*peerpb.PushBatchPart{many}, "MALFORMED", "many-"},
		{"item too large", []*peerpb.PushBatchPart{{Items: []*peerpb.BatchItem{item("small", []byte("s")), item("huge", make([]byte, MaxBatchItemBytes+1))}}}, "TOO_LARGE", "small"},
		{"bodies too large", heavy, "TOO_LARGE", "heavy-"},
	} {
		_, err := send(c.parts...)
		if status.Code(err) != codes.InvalidArgument || reasonOf(err) != c.reason {
			t.Errorf("%s: %v, want INVALID_ARGUMENT %s", c.name, err, c.reason)
		}
		if c.prefix == "" {
			continue
		}
		page, _, err := store.ListObjects(ctx, 0, nil, nil, 10000)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range page {
			if len(o.Info.Key.Name) >= len(c.prefix) && o.Info.Key.Name[:len(c.prefix)] == c.prefix {
				t.Fatalf("%s: %v was stored from a refused batch", c.name, o.Info.Key)
			}
		}
	}

	// Items with a bad header fail alone; the good one is stored.
	noVersion := item("no-version", []byte("v"))
	noVersion.Header.Version = 0
	shortSum := item("short-sum", []byte("s"))
	shortSum.Header.Sha256 = shortSum.Header.Sha256[:5]
	badKey := item("bad-key", []byte("k"))
	badKey.Header.Key.Tenant = ""
	longer := item("longer", []byte("longer than declared"))
	longer.Header.Size = 3
	resp, err := send(&peerpb.PushBatchPart{Items: []*peerpb.BatchItem{noVersion, item("good", []byte("good")), shortSum, badKey, {Body: []byte("no header")}, longer}})
	if err != nil {
		t.Fatalf("batch with bad items: %v", err)
	}
	want := []struct {
		code   codes.Code
		reason string
	}{{codes.InvalidArgument, "MALFORMED"}, {codes.OK, ""}, {codes.InvalidArgument, "MALFORMED"}, {codes.InvalidArgument, "INVALID_KEY"}, {codes.InvalidArgument, "MALFORMED"}, {codes.InvalidArgument, "DIGEST_MISMATCH"}}
	if len(resp.GetResults()) != len(want) {
		t.Fatalf("%d results, want %d", len(resp.GetResults()), len(want))
	}
	for i, w := range want {
		r := resp.GetResults()[i]
		if codes.Code(r.GetCode()) != w.code || r.GetReason() != w.reason {
			t.Errorf("item %d: code %v reason %q (%s), want %v %q", i, codes.Code(r.GetCode()), r.GetReason(), r.GetMessage(), w.code, w.reason)
		}
	}
	if !resp.GetResults()[1].GetApplied() {
		t.Error("the good item was not applied")
	}
	for _, name := range []string{"no-version", "short-sum", "longer"} {
		if _, err := store.Stat(ctx, key(storage.KindGradle, name)); !isNotFound(err) {
			t.Errorf("%s stored after its refusal: %v", name, err)
		}
	}
}

// The client checks the bounds before calling, so a sender's bug never reaches the peer.
func TestPushBatchClientBounds(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	ok := replicatedItem(key(storage.KindGradle, "ok"), []byte("ok"), version(1))
	sizeOff := ok
	sizeOff.Opts.Size = 7
	tooMany := make([]storage.PutItem, MaxBatchItems+1)
	for i := range tooMany {
		tooMany[i] = replicatedItem(key(storage.KindGradle, fmt.Sprint(i)), []byte("x"), version(1))
	}
	for name, c := range map[string]struct {
		objs []storage.PutItem
		want error
	}{
		"none":       {nil, ErrMalformed},
		"too many":   {tooMany, ErrMalformed},
		"size":       {[]storage.PutItem{sizeOff}, ErrMalformed},
		"no version": {[]storage.PutItem{replicatedItem(ok.Key, ok.Body, 0)}, ErrMalformed},
		"too large":  {[]storage.PutItem{replicatedItem(ok.Key, make([]byte, MaxBatchItemBytes+1), version(1))}, storage.ErrTooLarge},
	} {
		if _, err := p.client.PushBatch(ctx, p.addr, c.objs); !errors.Is(err, c.want) {
			t.Errorf("%s: %v, want %v", name, err, c.want)
		}
	}
	if n := counterValue(t, p.serverReg, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushBatch", "code": "InvalidArgument"}); n != 0 {
		t.Errorf("the server saw %v refused batches; the client must not send them", n)
	}
}

// A node that predates PushBatch answers UNIMPLEMENTED, which the client reports as
// errors.ErrUnsupported so the outbox can fall back to PushObject.
func TestPushBatchToAnOlderNode(t *testing.T) {
	c := newTestClient(t, ClientConfig{})
	_, err := c.PushBatch(testCtx(t), testsupport.NewOlderPeer(t), []storage.PutItem{replicatedItem(key(storage.KindGradle, "x"), []byte("x"), version(1))})
	if !errors.Is(err, errors.ErrUnsupported) || status.Code(err) != codes.Unimplemented {
		t.Fatalf("PushBatch to an older node: %v, want UNIMPLEMENTED wrapping errors.ErrUnsupported", err)
	}
}

// A backend without PutBatch still gets every item, one Put each.
func TestPushBatchWithoutBatchPutter(t *testing.T) {
	mem := storagetest.NewMemory()
	p := startPlane(t, mem, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	items := []storage.PutItem{
		replicatedItem(key(storage.KindGradle, "a"), []byte("a"), version(1)),
		replicatedItem(key(storage.KindGradle, "b"), []byte("b"), version(2)),
	}
	res, err := p.client.PushBatch(ctx, p.addr, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err != nil || !r.Created {
			t.Errorf("item %d: %+v", i, r)
		}
		if info, err := mem.Stat(ctx, items[i].Key); err != nil || info.Version != items[i].Opts.Version {
			t.Errorf("item %d stored as %+v, %v", i, info, err)
		}
	}
}
