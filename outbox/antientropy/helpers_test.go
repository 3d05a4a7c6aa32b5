package antientropy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/local"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// node is one simulated cluster member: a real store plus its identity.
type node struct {
	Peer
	store Local
	disk  *local.Store // nil for the in-memory fake
	dir   string
}

// nodeFactory opens an empty node.
type nodeFactory func(t *testing.T, name, region string) *node

func memoryNode(t *testing.T, name, region string) *node {
	return &node{Peer: Peer{Name: name, Region: region, Addr: name + ":7443"}, store: storagetest.NewMemory()}
}

func diskNode(t *testing.T, name, region string) *node {
	return openDisk(t, name, region)
}

func openDisk(t testing.TB, name, region string) *node {
	t.Helper()
	dir := t.TempDir()
	s, err := local.Open(local.Options{
		DataDir:    dir,
		Registerer: prometheus.NewRegistry(),
		Metadata:   meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20},
	})
	if err != nil {
		t.Fatalf("open store of %s: %v", name, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close store of %s: %v", name, err)
		}
	})
	return &node{Peer: Peer{Name: name, Region: region, Addr: name + ":7443"}, store: s, disk: s, dir: dir}
}

// forEachStore runs fn against the in-memory fake and against real disk stores.
func forEachStore(t *testing.T, fn func(t *testing.T, open nodeFactory)) {
	t.Run("memory", func(t *testing.T) { fn(t, memoryNode) })
	t.Run("disk", func(t *testing.T) { fn(t, diskNode) })
}

// directSource implements Source by calling other nodes' stores in-process, verifying
// fetched bodies like the gRPC client does. Hooks inject failures and stalls.
type directSource struct {
	mu      sync.Mutex
	nodes   map[string]*node // by address
	fail    func(method, addr string, key storage.Key) error
	stall   map[string]chan struct{} // addr → FetchObject blocks until closed (or ctx ends)
	fetches []string                 // "name key" of every FetchObject call, in order
	finds   []string                 // name of every FindObjects call, in order
	// findStall: addr → FindObjects blocks until closed (or ctx ends)
	findStall map[string]chan struct{}
	active    int // FetchObject calls currently blocked in a stall
}

func newSource(nodes ...*node) *directSource {
	s := &directSource{nodes: map[string]*node{}, stall: map[string]chan struct{}{}, findStall: map[string]chan struct{}{}}
	for _, n := range nodes {
		s.nodes[n.Addr] = n
	}
	return s
}

func (s *directSource) node(method, addr string, key storage.Key) (*node, error) {
	s.mu.Lock()
	n, ok := s.nodes[addr]
	fail := s.fail
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s on %s: %w: connection refused", method, addr, storage.ErrUnavailable)
	}
	if fail != nil {
		if err := fail(method, addr, key); err != nil {
			return nil, err
		}
	}
	return n, nil
}

func (s *directSource) setFail(f func(method, addr string, key storage.Key) error) {
	s.mu.Lock()
	s.fail = f
	s.mu.Unlock()
}

func (s *directSource) BucketDigests(ctx context.Context, addr string, bits uint32) ([]byte, uint64, error) {
	n, err := s.node("BucketDigests", addr, storage.Key{})
	if err != nil {
		return nil, 0, err
	}
	return n.store.BucketDigests(ctx, bits)
}

func (s *directSource) ListObjects(ctx context.Context, addr string, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error) {
	n, err := s.node("ListObjects", addr, storage.Key{})
	if err != nil {
		return nil, nil, err
	}
	return n.store.ListObjects(ctx, bits, buckets, after, limit)
}

func (s *directSource) ListTombstones(ctx context.Context, addr string) ([]storage.Tombstone, error) {
	n, err := s.node("ListTombstones", addr, storage.Key{})
	if err != nil {
		return nil, err
	}
	return n.store.Tombstones(ctx)
}

func (s *directSource) FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error) {
	n, err := s.node("FetchObject", addr, key)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.fetches = append(s.fetches, n.Name+" "+key.Name)
	stall := s.stall[addr]
	if stall != nil {
		s.active++
	}
	s.mu.Unlock()
	if stall != nil {
		select {
		case <-stall:
		case <-ctx.Done():
		}
		s.mu.Lock()
		s.active--
		s.mu.Unlock()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("fetch %s: %w", key, ctx.Err())
		}
	}
	r, err := n.store.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	return &verifyingReader{r: r, ctx: ctx, h: sha256.New()}, nil
}

// FindObjects answers from the peer's store, blocking like FetchObject while addr stalls.
func (s *directSource) FindObjects(ctx context.Context, addr string, keys []storage.Key) ([]storage.Info, error) {
	n, err := s.node("FindObjects", addr, storage.Key{})
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	s.finds = append(s.finds, n.Name)
	stall := s.findStall[addr]
	s.mu.Unlock()
	if stall != nil {
		select {
		case <-stall:
		case <-ctx.Done():
			return nil, fmt.Errorf("find objects: %w", ctx.Err())
		}
	}
	missing, err := n.store.FindMissing(ctx, keys)
	if err != nil {
		return nil, err
	}
	absent := map[storage.Key]bool{}
	for _, k := range missing {
		absent[k] = true
	}
	var found []storage.Info
	for _, k := range keys {
		if absent[k] {
			continue
		}
		absent[k] = true
		info, err := n.store.Stat(ctx, k)
		if err != nil {
			return nil, err
		}
		found = append(found, info)
	}
	return found, nil
}

func (s *directSource) findLog() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.finds...)
}

func (s *directSource) fetchLog() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.fetches...)
}

func (s *directSource) resetFetchLog() {
	s.mu.Lock()
	s.fetches = nil
	s.mu.Unlock()
}

func (s *directSource) blocked() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// verifyingReader checks size and SHA-256 at EOF, as the gRPC client's reader does, and
// stops when its context ends (the stream would be cancelled).
type verifyingReader struct {
	r   storage.Reader
	ctx context.Context
	h   hash.Hash
	n   int64
}

func (v *verifyingReader) Read(p []byte) (int, error) {
	if err := v.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if err == io.EOF {
		info := v.r.Info()
		if v.n != info.Size || !bytes.Equal(v.h.Sum(nil), info.SHA256[:]) {
			return n, fmt.Errorf("%w: body differs from the header", storage.ErrCorrupt)
		}
	}
	return n, err
}

func (v *verifyingReader) Close() error       { return v.r.Close() }
func (v *verifyingReader) Info() storage.Info { return v.r.Info() }

// peerList is a mutable Peers.
type peerList struct {
	mu    sync.Mutex
	peers []Peer
}

func newPeers(nodes ...*node) *peerList {
	pl := &peerList{}
	pl.set(nodes...)
	return pl
}

func (pl *peerList) set(nodes ...*node) {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	pl.peers = nil
	for _, n := range nodes {
		pl.peers = append(pl.peers, n.Peer)
	}
}

func (pl *peerList) Peers() []Peer {
	pl.mu.Lock()
	defer pl.mu.Unlock()
	return append([]Peer(nil), pl.peers...)
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func key(ns string, kind storage.Kind, name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: ns, Kind: kind, Name: name}
}

// put stores body under k (version 0: the store's clock).
func put(t testing.TB, s storage.Store, k storage.Key, body string, version storage.Version) storage.Info {
	t.Helper()
	res, err := s.Put(context.Background(), k, bytes.NewReader([]byte(body)),
		storage.PutOptions{Size: int64(len(body)), ContentType: "application/x-test", Version: version})
	if err != nil {
		t.Fatalf("put %s: %v", k, err)
	}
	return res.Info
}

// read returns the body stored under k, or the error.
func read(s storage.Store, k storage.Key) (string, error) {
	r, err := s.Open(context.Background(), k, 0, -1)
	if err != nil {
		return "", err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	return string(b), err
}

func mustRead(t testing.TB, s storage.Store, k storage.Key) string {
	t.Helper()
	b, err := read(s, k)
	if err != nil {
		t.Fatalf("read %s: %v", k, err)
	}
	return b
}

func assertMissing(t testing.TB, s storage.Store, k storage.Key) {
	t.Helper()
	if _, err := s.Stat(context.Background(), k); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("stat %s: got %v, want not found", k, err)
	}
}

// assertConverged checks that two nodes' bucket digests are equal.
func assertConverged(t testing.TB, a, b *node) {
	t.Helper()
	da, na, err := a.store.BucketDigests(context.Background(), storage.DigestBucketBits)
	if err != nil {
		t.Fatalf("digests of %s: %v", a.Name, err)
	}
	db, nb, err := b.store.BucketDigests(context.Background(), storage.DigestBucketBits)
	if err != nil {
		t.Fatalf("digests of %s: %v", b.Name, err)
	}
	if !bytes.Equal(da, db) || na != nb {
		t.Fatalf("digests of %s (%d objects) and %s (%d objects) differ", a.Name, na, b.Name, nb)
	}
}

func newSweeper(t testing.TB, self *node, src Source, peers Peers, mod func(*Config)) (*Sweeper, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{Local: self.store, Source: src, Peers: peers, SelfRegion: self.Region, Registerer: reg}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s, reg
}

func sweep(t testing.TB, s *Sweeper) Result {
	t.Helper()
	res, err := s.SweepNow(testCtx(t))
	if err != nil {
		t.Fatalf("SweepNow: %v (result %+v)", err, res)
	}
	return res
}

// startRun runs s.Run until the test ends and checks that it returns nil.
func startRun(t *testing.T, s *Sweeper) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// corruptOnDisk flips a byte of body inside n's segment files.
func corruptOnDisk(t *testing.T, n *node, body []byte) {
	t.Helper()
	found := false
	walkFiles(t, n.dir+"/segments", func(path string) {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
		i := bytes.Index(data, body)
		if i < 0 {
			return
		}
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatalf("open %s: %v", path, err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{data[i+len(body)/2] ^ 0xff}, int64(i+len(body)/2)); err != nil {
			t.Fatalf("corrupt %s: %v", path, err)
		}
		found = true
	})
	if !found {
		t.Fatalf("body not found in the segment files of %s", n.Name)
	}
}

func walkFiles(t *testing.T, dir string, fn func(path string)) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read dir %s: %v", dir, err)
	}
	for _, e := range entries {
		p := dir + "/" + e.Name()
		if e.IsDir() {
			walkFiles(t, p, fn)
		} else {
			fn(p)
		}
	}
}
