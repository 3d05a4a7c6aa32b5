package segment

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"
	"testing"
)

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

func benchCommit(b *testing.B, size int, parallelism int) {
	m := openManager(b, Options{})
	body := testBody(1, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	if parallelism == 0 {
		for i := range b.N {
			if _, err := tryCommit(context.Background(), m, fmt.Sprintf("k%d", i), body); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		var n atomic.Int64
		b.SetParallelism(parallelism)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := tryCommit(context.Background(), m, fmt.Sprintf("k%d", n.Add(1)), body); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	reportOps(b)
	st := m.Stats()
	if st.Syncs > 0 {
		b.ReportMetric(float64(st.Appends)/float64(st.Syncs), "commits/sync")
	}
}

// Sequential durable commits: each one pays a full fdatasync.
func BenchmarkCommit1KiB(b *testing.B) { benchCommit(b, 1<<10, 0) }

// Concurrent durable commits (GOMAXPROCS x 32 goroutines): group commit shares the syncs.
func BenchmarkCommit1KiBParallel(b *testing.B) { benchCommit(b, 1<<10, 32) }

// Large records spill to a staging file and are renamed in as their own segment.
func BenchmarkCommit4MiB(b *testing.B) { benchCommit(b, 4<<20, 0) }

func benchRead(b *testing.B, size int) {
	m := openManager(b, Options{})
	const records = 64
	locs := make([]Location, records)
	for i := range locs {
		locs[i] = commit(b, m, fmt.Sprintf("k%d", i), testBody(uint64(i), size))
	}
	buf := make([]byte, 256<<10)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		j := i % records
		r, err := m.OpenRecord(context.Background(), locs[j], []byte(fmt.Sprintf("k%d", j)), 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.CopyBuffer(io.Discard, r, buf)
		r.Close()
		if err != nil || n != int64(size) {
			b.Fatalf("read %d bytes: %v", n, err)
		}
	}
	b.StopTimer()
	reportOps(b)
}

func BenchmarkOpenRecord1KiB(b *testing.B) { benchRead(b, 1<<10) }
func BenchmarkOpenRecord4MiB(b *testing.B) { benchRead(b, 4<<20) }
