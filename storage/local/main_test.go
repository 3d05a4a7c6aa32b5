package local

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/meta"
	"github.com/kuracache/kura/storage/storagetest"
)

func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		// The crash child is killed mid-flight; leak checks make no sense there.
		os.Exit(m.Run())
	}
	goleak.VerifyTestMain(m)
}

// testOpts returns options for a store in a fresh temporary directory.
func testOpts(t testing.TB) Options {
	return Options{
		DataDir:    t.TempDir(),
		Registerer: prometheus.NewRegistry(),
		Metadata:   smallMeta(),
	}
}

func smallMeta() meta.Options {
	return meta.Options{BlockCacheBytes: 4 << 20, MemTableBytes: 4 << 20}
}

func openStore(t testing.TB, opts Options) *Store {
	t.Helper()
	s, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if !s.closed.Load() {
			if err := s.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}
	})
	return s
}

func TestStoreConformance(t *testing.T) {
	storagetest.RunStoreSuite(t, func(t *testing.T) storage.Store { return openStore(t, testOpts(t)) })
}

// Conformance of both ways FindMissing answers: from the existence index once it is built
// (here), and from the manifests before (a store reopened with the index reset).
func TestStoreConformanceExistenceIndex(t *testing.T) {
	t.Run("index", func(t *testing.T) {
		storagetest.RunStoreSuite(t, func(t *testing.T) storage.Store {
			s := openStore(t, testOpts(t))
			waitExistence(t, s)
			return s
		})
	})
	t.Run("manifests", func(t *testing.T) {
		storagetest.RunStoreSuite(t, func(t *testing.T) storage.Store {
			s := openStore(t, testOpts(t))
			waitExistence(t, s)
			s.exists.reset() // no walk rebuilds it unless a damaged manifest kicks one
			return s
		})
	})
}

func TestMultipartConformance(t *testing.T) {
	storagetest.RunMultipartSuite(t, func(t *testing.T) storagetest.MultipartStore { return openStore(t, testOpts(t)) })
}

func TestIndexConformance(t *testing.T) {
	storagetest.RunIndexSuite(t, func(t *testing.T) storagetest.IndexStore { return openStore(t, testOpts(t)) })
}

// Conformance again with tiny segments and spill threshold, so records roll across many
// files and most bodies take the spilled (own segment) path.
func TestStoreConformanceSmallSegments(t *testing.T) {
	storagetest.RunStoreSuite(t, func(t *testing.T) storage.Store {
		o := testOpts(t)
		o.TargetSegmentBytes = 256 << 10
		o.SpillThreshold = 64 << 10
		return openStore(t, o)
	})
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

func counterValue(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }

func isNotFound(err error) bool { return errors.Is(err, storage.ErrNotFound) }

// commitFunc is a CommitObserver made of its OnCommit; its AfterCommit does nothing.
type commitFunc func(*meta.Batch, storage.Change) error

func (f commitFunc) OnCommit(b *meta.Batch, c storage.Change) error { return f(b, c) }
func (commitFunc) AfterCommit()                                     {}

// Conformance of PutBatch: every Put of the suite goes through a batch of one item.
func TestStoreConformanceBatch(t *testing.T) {
	storagetest.RunStoreSuite(t, func(t *testing.T) storage.Store {
		return storagetest.PutThroughBatch(openStore(t, testOpts(t)))
	})
}
