package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

func TestPushSmallThenFetch(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	body := []byte("compiled module bytes")
	k := key(storage.KindXcode, "cas-1")
	info := infoFor(k, body, version(1))
	info.ContentType = "application/x-xcode"

	applied, err := p.client.PushObject(ctx, p.addr, info, bytes.NewReader(body))
	if err != nil || !applied {
		t.Fatalf("PushObject = %v, %v; want applied", applied, err)
	}
	got, err := store.Stat(ctx, k)
	if err != nil {
		t.Fatalf("Stat after push: %v", err)
	}
	if got != info {
		t.Fatalf("stored info = %+v, want the origin's %+v (version kept)", got, info)
	}
	fetched, finfo := mustFetch(t, p.client, p.addr, k)
	if !bytes.Equal(fetched, body) || finfo != info {
		t.Fatalf("fetched %q %+v, want %q %+v", fetched, finfo, body, info)
	}

	// Idempotent: the same push again is delivered but changes nothing.
	applied, err = p.client.PushObject(ctx, p.addr, info, bytes.NewReader(body))
	if err != nil || applied {
		t.Fatalf("second PushObject = %v, %v; want not applied, no error", applied, err)
	}
}

func TestPushEmptyBody(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	k := key(storage.KindCAS, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
	info := infoFor(k, nil, version(1))
	if applied, err := p.client.PushObject(testCtx(t), p.addr, info, bytes.NewReader(nil)); err != nil || !applied {
		t.Fatalf("PushObject(empty) = %v, %v", applied, err)
	}
	if body, got := mustFetch(t, p.client, p.addr, k); len(body) != 0 || got.Size != 0 {
		t.Fatalf("fetched %d bytes, info %+v", len(body), got)
	}
}

// A 20 MiB push streams: the store is already reading the body while the client still holds
// most of it back, and the whole body round-trips intact.
func TestPushLargeStreams(t *testing.T) {
	const size = 20 << 20
	store := diskStore(t)
	backend := &observedBackend{Backend: store, threshold: 2 << 20, crossed: make(chan struct{})}
	p := startPlane(t, backend, ServerConfig{}, ClientConfig{})
	k := key(storage.KindGradle, "big")
	info := streamInfo(t, k, 7, size, version(1))

	// The body pauses after 4 MiB until the store has read 2 MiB: a server that buffered the
	// body before storing it would never get there.
	body := &gatedReader{r: testsupport.NewPatternReader(7, size), after: 4 << 20, gate: backend.crossed, timeout: time.Minute}
	applied, err := p.client.PushObject(testCtx(t), p.addr, info, body)
	if err != nil || !applied {
		t.Fatalf("PushObject(20 MiB) = %v, %v", applied, err)
	}
	if body.timedOut {
		t.Fatal("the store did not start reading before the client sent everything: the push is not streamed")
	}
	if got := backend.bodyRead.Load(); got != size {
		t.Fatalf("store read %d body bytes, want %d", got, size)
	}
	if got, err := store.Stat(testCtx(t), k); err != nil || got != info {
		t.Fatalf("Stat = %+v, %v; want %+v", got, err, info)
	}
	r, err := p.client.FetchObject(testCtx(t), p.addr, k)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	h := sha256.New()
	n, err := io.Copy(h, r)
	if err != nil || n != size || !bytes.Equal(h.Sum(nil), info.SHA256[:]) {
		t.Fatalf("fetched %d bytes (err %v), digest match %v", n, err, bytes.Equal(h.Sum(nil), info.SHA256[:]))
	}
}

// gatedReader yields after bytes, then waits for gate before yielding the rest.
type gatedReader struct {
	r        io.Reader
	after    int64
	read     int64
	gate     <-chan struct{}
	timeout  time.Duration
	timedOut bool
}

func (g *gatedReader) Read(p []byte) (int, error) {
	if g.read >= g.after {
		select {
		case <-g.gate:
		case <-time.After(g.timeout):
			g.timedOut = true
			return 0, errors.New("gate never opened")
		}
	} else if rest := g.after - g.read; int64(len(p)) > rest {
		p = p[:rest]
	}
	n, err := g.r.Read(p)
	g.read += int64(n)
	return n, err
}

// Pushing an immutable object the peer already has is answered without the store reading
// the body, and the client stops reading its body early.
func TestPushExistingImmutableSkipsBody(t *testing.T) {
	const size = 20 << 20
	store := diskStore(t)
	backend := &observedBackend{Backend: store}
	p := startPlane(t, backend, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	k := key(storage.KindNx, "123456789")
	info := streamInfo(t, k, 3, size, version(1))
	if _, err := store.Put(ctx, k, testsupport.NewPatternReader(3, size), storage.PutOptions{Size: size, Version: info.Version}); err != nil {
		t.Fatal(err)
	}

	body := &testsupport.CountingReader{R: testsupport.NewPatternReader(3, size)}
	applied, err := p.client.PushObject(ctx, p.addr, info, body)
	if err != nil || applied {
		t.Fatalf("PushObject(existing) = %v, %v; want not applied and no error", applied, err)
	}
	if got := backend.bodyRead.Load(); got != 0 {
		t.Fatalf("the server's store read %d body bytes of an existing immutable object, want 0", got)
	}
	sent := body.N()
	t.Logf("client read %d of %d body bytes before the peer's answer stopped it", sent, size)
	if sent >= size/2 {
		t.Fatalf("client read %d of %d bytes: it did not stop when the peer answered", sent, size)
	}
}

// Immutable kinds keep the cluster's first writer: a pushed copy with another body and a
// later version is not applied and its body not read; one with an earlier version is applied
// and replaces the stored body, which reads and fetches then return.
func TestPushEarlierImmutableReplaces(t *testing.T) {
	store := diskStore(t)
	backend := &observedBackend{Backend: store}
	p := startPlane(t, backend, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	k := key(storage.KindGradle, "contested")
	ours, later, earlier := []byte("our body"), []byte("a later body"), []byte("the first writer's body")
	if _, err := store.Put(ctx, k, bytes.NewReader(ours), storage.PutOptions{Size: int64(len(ours)), Version: version(10)}); err != nil {
		t.Fatal(err)
	}
	applied, err := p.client.PushObject(ctx, p.addr, infoFor(k, later, version(20)), bytes.NewReader(later))
	if err != nil || applied {
		t.Fatalf("PushObject(later) = %v, %v; want not applied", applied, err)
	}
	if got := backend.bodyRead.Load(); got != 0 {
		t.Fatalf("the server's store read %d body bytes of a losing copy, want 0", got)
	}
	applied, err = p.client.PushObject(ctx, p.addr, infoFor(k, earlier, version(5)), bytes.NewReader(earlier))
	if err != nil || !applied {
		t.Fatalf("PushObject(earlier) = %v, %v; want applied", applied, err)
	}
	r, err := p.client.FetchObject(ctx, p.addr, k)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	_ = r.Close()
	if err != nil || !bytes.Equal(got, earlier) || r.Info().Version != version(5) {
		t.Fatalf("fetch after the replace = %q at %v, %v; want the first writer's body at %v", got, r.Info().Version, err, version(5))
	}
}

// Last-writer-wins kinds: an older version is delivered (no error) but not applied; the
// newer one stays; a newer one still applies.
func TestPushStaleLastWriterWins(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	k := key(storage.KindKeyValue, "cas-id-1")
	newer := []byte(`{"entries":[{"value":"new"}]}`)
	older := []byte(`{"entries":[{"value":"old"}]}`)
	newest := []byte(`{"entries":[{"value":"newest"}]}`)

	push := func(body []byte, v storage.Version) bool {
		t.Helper()
		applied, err := p.client.PushObject(ctx, p.addr, infoFor(k, body, v), bytes.NewReader(body))
		if err != nil {
			t.Fatalf("PushObject(v%s) = %v", v, err)
		}
		return applied
	}
	if !push(newer, version(20)) {
		t.Fatal("first write not applied")
	}
	if push(older, version(10)) {
		t.Fatal("an older version was applied over a newer one")
	}
	if got, _ := mustFetch(t, p.client, p.addr, k); !bytes.Equal(got, newer) {
		t.Fatalf("after a stale push the peer serves %q, want %q", got, newer)
	}
	if !push(newest, version(30)) {
		t.Fatal("a newer version was not applied")
	}
	if got, info := mustFetch(t, p.client, p.addr, k); !bytes.Equal(got, newest) || info.Version != version(30) {
		t.Fatalf("peer serves %q at %s, want %q at %s", got, info.Version, newest, version(30))
	}
}

// A write older than the namespace's tombstone is ErrStale in the store: delivered, not
// applied, nothing stored.
func TestPushOlderThanTombstone(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	if err := p.client.PushTombstone(ctx, p.addr, storage.Tombstone{Tenant: "acme", Namespace: "ios", Version: version(50)}); err != nil {
		t.Fatal(err)
	}
	k := key(storage.KindGradle, "late")
	body := []byte("written before the clean, delivered after it")
	applied, err := p.client.PushObject(ctx, p.addr, infoFor(k, body, version(40)), bytes.NewReader(body))
	if err != nil || applied {
		t.Fatalf("PushObject(older than tombstone) = %v, %v; want not applied, no error", applied, err)
	}
	if _, err := store.Stat(ctx, k); !isNotFound(err) {
		t.Fatalf("Stat = %v, want not found (the tombstone wins)", err)
	}
	applied, err = p.client.PushObject(ctx, p.addr, infoFor(k, body, version(60)), bytes.NewReader(body))
	if err != nil || !applied {
		t.Fatalf("PushObject(newer than tombstone) = %v, %v; want applied", applied, err)
	}
}

func TestPushTombstone(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	ctx := testCtx(t)
	old := key(storage.KindMetro, "before")
	other := storage.Key{Tenant: "acme", Namespace: "android", Kind: storage.KindMetro, Name: "before"}
	for _, k := range []storage.Key{old, other} {
		if _, err := store.Put(ctx, k, bytes.NewReader([]byte("x")), storage.PutOptions{Size: 1, Version: version(1)}); err != nil {
			t.Fatal(err)
		}
	}
	ts := storage.Tombstone{Tenant: "acme", Namespace: "ios", Version: version(5)}
	if err := p.client.PushTombstone(ctx, p.addr, ts); err != nil {
		t.Fatalf("PushTombstone: %v", err)
	}
	if _, err := store.Stat(ctx, old); !isNotFound(err) {
		t.Fatalf("object in the cleaned namespace: Stat = %v, want not found", err)
	}
	if _, err := store.Stat(ctx, other); err != nil {
		t.Fatalf("object in another namespace: Stat = %v, want kept", err)
	}
	got, err := p.client.ListTombstones(ctx, p.addr)
	if err != nil || len(got) != 1 || got[0] != ts {
		t.Fatalf("ListTombstones = %+v, %v; want [%+v]", got, err, ts)
	}
	// Replaying it is harmless.
	if err := p.client.PushTombstone(ctx, p.addr, ts); err != nil {
		t.Fatalf("PushTombstone replay: %v", err)
	}
	// A tombstone without a version would mean "now" on the receiver: refused before sending.
	if err := p.client.PushTombstone(ctx, p.addr, storage.Tombstone{Tenant: "acme", Namespace: "ios"}); err == nil {
		t.Fatal("PushTombstone(version 0) succeeded")
	}
	if err := p.client.PushTombstone(ctx, p.addr, storage.Tombstone{Tenant: "", Namespace: "ios", Version: 1}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("PushTombstone(no tenant) = %v, want ErrInvalidKey", err)
	}
}

// Bodies that do not match their header are refused with INVALID_ARGUMENT and the storage
// sentinel, and nothing is stored.
func TestPushRejectsMismatchedBody(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{MaxKeyValueBytes: 64}, ClientConfig{})
	ctx := testCtx(t)
	body := []byte("the real body")
	cases := []struct {
		name     string
		info     func(storage.Key) storage.Info
		body     []byte
		sentinel error
		remote   bool // refused by the peer (else by the client before sending too much)
	}{
		{"wrong digest", func(k storage.Key) storage.Info {
			i := infoFor(k, body, version(1))
			i.SHA256[0] ^= 1
			return i
		}, body, storage.ErrDigestMismatch, true},
		{"body shorter than declared", func(k storage.Key) storage.Info {
			i := infoFor(k, body, version(1))
			i.Size++
			return i
		}, body, storage.ErrDigestMismatch, true},
		{"body longer than declared", func(k storage.Key) storage.Info {
			i := infoFor(k, body, version(1))
			i.Size--
			return i
		}, body, storage.ErrDigestMismatch, false},
		{"keyvalue over the limit", func(k storage.Key) storage.Info {
			k.Kind = storage.KindKeyValue
			return infoFor(k, bytes.Repeat([]byte("x"), 65), version(1))
		}, bytes.Repeat([]byte("x"), 65), storage.ErrTooLarge, true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			info := tc.info(key(storage.KindGradle, fmt.Sprintf("bad-%d", i)))
			applied, err := p.client.PushObject(ctx, p.addr, info, bytes.NewReader(tc.body))
			if applied || !errors.Is(err, tc.sentinel) {
				t.Fatalf("PushObject = %v, %v; want an error wrapping %v", applied, err, tc.sentinel)
			}
			var re *RemoteError
			if got := errors.As(err, &re); got != tc.remote {
				t.Fatalf("error %v: from the peer = %v, want %v", err, got, tc.remote)
			}
			if tc.remote && status.Code(err) != codes.InvalidArgument {
				t.Fatalf("code = %v, want InvalidArgument", status.Code(err))
			}
			if _, err := store.Stat(ctx, info.Key); !isNotFound(err) {
				t.Fatalf("Stat after a refused push = %v, want not found", err)
			}
		})
	}
	// Invalid keys never leave the client.
	bad := infoFor(storage.Key{Tenant: "acme", Namespace: "ios", Kind: "nope", Name: "x"}, body, version(1))
	if _, err := p.client.PushObject(ctx, p.addr, bad, bytes.NewReader(body)); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("PushObject(bad kind) = %v, want ErrInvalidKey", err)
	}
	if _, err := p.client.PushObject(ctx, p.addr, infoFor(key(storage.KindGradle, "v0"), body, 0), bytes.NewReader(body)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("PushObject(version 0) = %v, want ErrMalformed", err)
	}
}

// A push whose body fails to read on the origin is abandoned: nothing stored on the peer.
func TestPushBodyReadFailure(t *testing.T) {
	store := diskStore(t)
	p := startPlane(t, store, ServerConfig{}, ClientConfig{})
	k := key(storage.KindGradle, "broken-source")
	info := streamInfo(t, k, 1, 3<<20, version(1))
	boom := errors.New("disk read failed")
	body := io.MultiReader(io.LimitReader(testsupport.NewPatternReader(1, 3<<20), 2<<20), &failingReader{err: boom})
	applied, err := p.client.PushObject(testCtx(t), p.addr, info, body)
	if applied || !errors.Is(err, boom) {
		t.Fatalf("PushObject = %v, %v; want the body's read error", applied, err)
	}
	// The server sees the cancellation; poll until its handler has finished, then check.
	testsupport.WaitFor(t, "server to finish the abandoned push", 10*time.Second, func() bool {
		return counterValue(t, p.serverReg, "kura_peer_requests_total", map[string]string{"side": "server", "method": "PushObject", "code": "Canceled"}) == 1
	})
	if _, err := store.Stat(testCtx(t), k); !isNotFound(err) {
		t.Fatalf("Stat after an abandoned push = %v, want not found", err)
	}
}

type failingReader struct{ err error }

func (f *failingReader) Read([]byte) (int, error) { return 0, f.err }

// A caller's deadline ends a push that is waiting on a slow body.
func TestPushHonoursContext(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	k := key(storage.KindGradle, "slow")
	info := streamInfo(t, k, 1, 2<<20, version(1))
	ctx, cancel := context.WithCancel(testCtx(t))
	never := make(chan struct{})
	body := &gatedReader{r: testsupport.NewPatternReader(1, 2<<20), after: 1 << 20, gate: never, timeout: time.Minute}
	done := make(chan error, 1)
	go func() {
		_, err := p.client.PushObject(ctx, p.addr, info, &cancelOnBlock{r: body, ctx: ctx, cancel: cancel, size: 2 << 20})
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
			t.Fatalf("PushObject after cancel = %v, want cancelled", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("PushObject did not return after its context was cancelled")
	}
	close(never)
}

// cancelOnBlock cancels the call's context when the body reaches its gate, then keeps
// reading: the client must notice the cancellation at a following Send. The garbage stops at
// the declared size (then Read waits for the cancellation to end the call): a body longer than
// declared would let the server refuse it first, before the client saw its cancellation.
type cancelOnBlock struct {
	r      *gatedReader
	ctx    context.Context
	cancel context.CancelFunc
	size   int64
	sent   int64
}

func (c *cancelOnBlock) Read(p []byte) (int, error) {
	if c.r.read < c.r.after {
		n, err := c.r.Read(p)
		c.sent += int64(n)
		return n, err
	}
	c.cancel()
	if left := c.size - c.sent; left > 0 {
		n := int(min(int64(len(p)), left))
		c.sent += int64(n)
		return n, nil // garbage, never stored: the stream is cancelled
	}
	<-c.ctx.Done()
	return 0, c.ctx.Err()
}
