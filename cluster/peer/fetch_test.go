package peer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestFetchNotFound(t *testing.T) {
	p := startPlane(t, diskStore(t), ServerConfig{}, ClientConfig{})
	_, err := p.client.FetchObject(testCtx(t), p.addr, key(storage.KindGradle, "absent"))
	if !isNotFound(err) || status.Code(err) != codes.NotFound {
		t.Fatalf("FetchObject(absent) = %v (code %v), want ErrNotFound / NOT_FOUND", err, status.Code(err))
	}
	var re *RemoteError
	if !errors.As(err, &re) || re.Addr != p.addr {
		t.Fatalf("error %v does not name the peer", err)
	}
	if _, err := p.client.FetchObject(testCtx(t), p.addr, storage.Key{Tenant: "acme"}); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("FetchObject(invalid key) = %v, want ErrInvalidKey", err)
	}
}

// The client receives the first chunks while the server's store is still producing the
// rest: the body is never gathered in memory on either side.
func TestFetchStreams(t *testing.T) {
	mem := storagetest.NewMemory()
	k := key(storage.KindGradle, "streamed")
	const size = 6 << 20
	if _, err := mem.Put(testCtx(t), k, testsupport.NewPatternReader(9, size), storage.PutOptions{Size: size, Version: version(1)}); err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	backend := &gatedOpenBackend{Backend: mem, after: 2 << 20, gate: release}
	p := startPlane(t, backend, ServerConfig{}, ClientConfig{})
	r, err := p.client.FetchObject(testCtx(t), p.addr, k)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	first := make([]byte, 1<<20)
	if _, err := io.ReadFull(r, first); err != nil {
		t.Fatalf("first MiB while the server holds the rest back: %v", err)
	}
	close(release)
	rest, err := readAll(t, r)
	if err != nil || len(rest) != size-len(first) {
		t.Fatalf("rest: %d bytes, %v", len(rest), err)
	}
	if r.Info().Size != size {
		t.Fatalf("Info().Size = %d", r.Info().Size)
	}
}

// gatedOpenBackend's readers stop after `after` bytes until gate is closed.
type gatedOpenBackend struct {
	Backend
	after int64
	gate  <-chan struct{}
}

func (b *gatedOpenBackend) Open(ctx context.Context, k storage.Key, off, n int64) (storage.Reader, error) {
	r, err := b.Backend.Open(ctx, k, off, n)
	if err != nil {
		return nil, err
	}
	return &gatedStorageReader{Reader: r, g: &gatedReader{r: r, after: b.after, gate: b.gate, timeout: time.Minute}}, nil
}

type gatedStorageReader struct {
	storage.Reader
	g *gatedReader
}

func (r *gatedStorageReader) Read(p []byte) (int, error) { return r.g.Read(p) }

// lyingBackend serves bodies that do not match the Info it announces, as a peer with a
// memory or disk fault would.
type lyingBackend struct {
	Backend
	mode string // "flip", "truncate", "extend", "corrupt-midway"
}

func (b *lyingBackend) Open(ctx context.Context, k storage.Key, off, n int64) (storage.Reader, error) {
	r, err := b.Backend.Open(ctx, k, off, n)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	body, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	var src io.Reader
	switch b.mode {
	case "flip":
		body[len(body)/2] ^= 0x40
		src = bytes.NewReader(body)
	case "truncate":
		src = bytes.NewReader(body[:len(body)-1])
	case "extend":
		src = bytes.NewReader(append(body, 'x'))
	case "corrupt-midway":
		src = io.MultiReader(bytes.NewReader(body[:len(body)/2]), &failingReader{err: fmt.Errorf("read block: %w", storage.ErrCorrupt)})
	}
	return &fakeReader{Reader: src, info: r.Info()}, nil
}

type fakeReader struct {
	io.Reader
	info storage.Info
}

func (f *fakeReader) Close() error       { return nil }
func (f *fakeReader) Info() storage.Info { return f.info }

// The client verifies what a peer streams against the header: a flipped, missing or extra
// byte ends the read with ErrCorrupt instead of io.EOF, and a store failing mid-stream on
// the peer (a corrupt record it just dropped) ends it with ErrNotFound.
func TestFetchDetectsBadStream(t *testing.T) {
	body := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB: several chunks
	for _, tc := range []struct {
		mode string
		want error
	}{
		{"flip", storage.ErrCorrupt},
		{"truncate", storage.ErrCorrupt},
		{"extend", storage.ErrCorrupt},
		{"corrupt-midway", storage.ErrNotFound},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			mem := storagetest.NewMemory()
			k := key(storage.KindXcode, "lied-about")
			if _, err := mem.Put(testCtx(t), k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body)), Version: version(1)}); err != nil {
				t.Fatal(err)
			}
			p := startPlane(t, &lyingBackend{Backend: mem, mode: tc.mode}, ServerConfig{}, ClientConfig{})
			r, err := p.client.FetchObject(testCtx(t), p.addr, k)
			if err != nil {
				t.Fatalf("FetchObject: %v", err)
			}
			got, err := readAll(t, r)
			if !errors.Is(err, tc.want) {
				t.Fatalf("read to the end: %d bytes, err %v; want an error wrapping %v", len(got), err, tc.want)
			}
			// The failure is sticky and Close is clean.
			if _, err2 := r.Read(make([]byte, 1)); !errors.Is(err2, tc.want) {
				t.Fatalf("Read after the failure = %v", err2)
			}
			if err := r.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			code := "DataLoss"
			if tc.want == storage.ErrNotFound {
				code = "NotFound"
			}
			if v := counterValue(t, p.clientReg, "kura_peer_requests_total", map[string]string{"side": "client", "method": "FetchObject", "code": code}); v != 1 {
				t.Fatalf("client FetchObject{code=%s} = %v, want 1", code, v)
			}
		})
	}
}

// Closing a fetch before the end stops the server's stream and is not an error.
func TestFetchCloseEarly(t *testing.T) {
	mem := storagetest.NewMemory()
	k := key(storage.KindGradle, "abandoned")
	const size = 8 << 20
	if _, err := mem.Put(testCtx(t), k, testsupport.NewPatternReader(2, size), storage.PutOptions{Size: size, Version: version(1)}); err != nil {
		t.Fatal(err)
	}
	p := startPlane(t, mem, ServerConfig{MaxChunkBytes: 64 << 10}, ClientConfig{})
	r, err := p.client.FetchObject(testCtx(t), p.addr, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(r, make([]byte, 100<<10)); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := r.Read(make([]byte, 1)); err == nil {
		t.Fatal("Read after Close succeeded")
	}
	testsupport.WaitFor(t, "the server's FetchObject handler to end", 10*time.Second, func() bool {
		return counterValue(t, p.serverReg, "kura_peer_requests_total", map[string]string{"side": "server", "method": "FetchObject"}) == 1
	})
	if v := counterValue(t, p.clientReg, "kura_peer_requests_total", map[string]string{"side": "client", "method": "FetchObject", "code": "Canceled"}); v != 1 {
		t.Fatalf("client FetchObject{Canceled} = %v, want 1", v)
	}
}
