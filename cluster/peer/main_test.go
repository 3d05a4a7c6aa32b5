package peer

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// diskStore opens the real disk store (Pebble and segment files) in a temporary directory.
func diskStore(t testing.TB) *local.Store {
	t.Helper()
	s, err := local.Open(local.Options{
		DataDir:    t.TempDir(),
		Registerer: prometheus.NewRegistry(),
		Metadata:   meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20},
	})
	if err != nil {
		t.Fatalf("open disk store: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close disk store: %v", err)
		}
	})
	return s
}

var (
	_ Backend = (*local.Store)(nil)
	_ Backend = (*storagetest.Memory)(nil)
)

// plane is a server on 127.0.0.1 and a client pointed at it.
type plane struct {
	addr      string
	server    *Server
	client    *Client
	serverReg *prometheus.Registry
	clientReg *prometheus.Registry
}

func startServer(t testing.TB, cfg ServerConfig, backend Backend) (*Server, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := NewServer(cfg, backend)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Stop(ctx)
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, ln.Addr().String()
}

func newTestClient(t testing.TB, cfg ClientConfig) *Client {
	t.Helper()
	c := NewClient(cfg)
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("close client: %v", err)
		}
	})
	return c
}

func startPlane(t testing.TB, backend Backend, scfg ServerConfig, ccfg ClientConfig) *plane {
	t.Helper()
	p := &plane{serverReg: prometheus.NewRegistry(), clientReg: prometheus.NewRegistry()}
	if scfg.Registerer == nil {
		scfg.Registerer = p.serverReg
	}
	if ccfg.Registerer == nil {
		ccfg.Registerer = p.clientReg
	}
	p.server, p.addr = startServer(t, scfg, backend)
	p.client = newTestClient(t, ccfg)
	return p
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func key(kind storage.Kind, name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "ios", Kind: kind, Name: name}
}

// infoFor describes body as the origin's store would.
func infoFor(k storage.Key, body []byte, v storage.Version) storage.Info {
	return storage.Info{Key: k, Size: int64(len(body)), ContentType: "application/octet-stream", SHA256: sha256.Sum256(body), Version: v}
}

// version returns a fixed, realistic HLC version; n orders them.
func version(n int) storage.Version { return storage.MakeVersion(1_760_000_000_000+int64(n), 0) }

// streamInfo hashes a pattern reader's stream, for a body too large to keep around.
func streamInfo(t testing.TB, k storage.Key, seed byte, n int64, v storage.Version) storage.Info {
	t.Helper()
	h := sha256.New()
	if _, err := io.Copy(h, testsupport.NewPatternReader(uint64(seed), n)); err != nil {
		t.Fatal(err)
	}
	info := storage.Info{Key: k, Size: n, ContentType: "application/octet-stream", Version: v}
	copy(info.SHA256[:], h.Sum(nil))
	return info
}

// observedBackend counts the body bytes the store reads from each push and can report when
// a threshold is crossed, so tests see what the server does with the stream.
type observedBackend struct {
	Backend
	bodyRead  atomic.Int64
	threshold int64
	crossed   chan struct{} // closed once bodyRead >= threshold (when threshold > 0)
	once      atomic.Bool
}

func (b *observedBackend) Put(ctx context.Context, k storage.Key, body io.Reader, opts storage.PutOptions) (storage.PutResult, error) {
	return b.Backend.Put(ctx, k, &observedBody{r: body, b: b}, opts)
}

type observedBody struct {
	r io.Reader
	b *observedBackend
}

func (o *observedBody) Read(p []byte) (int, error) {
	n, err := o.r.Read(p)
	total := o.b.bodyRead.Add(int64(n))
	if o.b.threshold > 0 && total >= o.b.threshold && o.b.once.CompareAndSwap(false, true) {
		close(o.b.crossed)
	}
	return n, err
}

// readAll reads a fetched body to the end, returning its bytes and the final error.
func readAll(t testing.TB, r io.Reader) ([]byte, error) {
	t.Helper()
	var buf bytes.Buffer
	_, err := io.Copy(&buf, r)
	return buf.Bytes(), err
}

// mustFetch fetches and fully verifies an object.
func mustFetch(t testing.TB, c *Client, addr string, k storage.Key) ([]byte, storage.Info) {
	t.Helper()
	r, err := c.FetchObject(testCtx(t), addr, k)
	if err != nil {
		t.Fatalf("fetch %s: %v", k, err)
	}
	defer func() { _ = r.Close() }()
	body, err := readAll(t, r)
	if err != nil {
		t.Fatalf("read fetched %s: %v", k, err)
	}
	return body, r.Info()
}

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }

// counterValue reads one counter (or a histogram's sample count) from reg by name and labels.
func counterValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			if m.GetHistogram() != nil {
				return float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return 0
}
