package local

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/storage"
)

// TestRestartMeasure is a bounded measurement, not a check: it fills a data directory with
// $KURA_RESTART_OBJECTS 1 KiB objects (if it is not filled yet), reopens the store and reports
// how long Open takes (what blocks serving) and how long the background digest walk takes
// after it (what blocks only anti-entropy, and so a cluster node's /ready). The directory
// ($KURA_RESTART_DIR, default a temporary one) can then be served by a kura process to time
// /up and /ready:
//
//	KURA_RESTART_OBJECTS=1000000 KURA_RESTART_DIR=/tmp/kura-1m go test -run TestRestartMeasure -v -timeout 30m ./storage/local/
func TestRestartMeasure(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("KURA_RESTART_OBJECTS"))
	if err != nil || n <= 0 {
		t.Skip("set KURA_RESTART_OBJECTS to measure a restart")
	}
	dir := os.Getenv("KURA_RESTART_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	opts := func() Options {
		return Options{DataDir: dir, Registerer: prometheus.NewRegistry()}
	}
	s, err := Open(opts())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.waitDigests(ctx); err != nil {
		t.Fatal(err)
	}
	have := int(s.digests.objects())
	if have < n {
		start := time.Now()
		var next atomic.Int64
		next.Store(int64(have))
		var wg sync.WaitGroup
		var failed atomic.Value
		for range 64 {
			wg.Go(func() {
				body := make([]byte, 1<<10)
				for {
					i := next.Add(1) - 1
					if i >= int64(n) {
						return
					}
					copy(body, fmt.Sprintf("restart-%d", i))
					k := storage.Key{Tenant: "bench", Namespace: "restart", Kind: storage.KindGradle, Name: fmt.Sprintf("o-%d", i)}
					if _, err := s.Put(ctx, k, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
						failed.Store(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if err, _ := failed.Load().(error); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %d objects in %v", n-have, time.Since(start).Round(time.Millisecond))
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	s, err = Open(opts())
	if err != nil {
		t.Fatal(err)
	}
	opened := time.Since(start)
	if err := s.waitDigests(ctx); err != nil {
		t.Fatal(err)
	}
	digested := time.Since(start)
	objects := s.digests.objects()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d objects: Open %v, digests built %v after the start of Open", objects, opened.Round(time.Millisecond), digested.Round(time.Millisecond))
}
