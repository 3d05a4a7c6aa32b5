package segment

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/kuracache/kura/storage"
)

// TestCheckRoomAnswersFarChecksFromAReading: far from the reserve, checks are answered from
// the last statfs reading less what was checked since; within roomSlack of the reserve every
// check reads the filesystem, so a filesystem that fills up is refused at the next check.
func TestCheckRoomAnswersFarChecksFromAReading(t *testing.T) {
	const reserve = 100 << 20
	var free atomic.Int64
	var reads atomic.Int64
	ops := osFileOps
	ops.freeBytes = func(string) (int64, error) {
		reads.Add(1)
		return free.Load(), nil
	}
	m := openManager(t, Options{ReserveBytes: reserve, ops: &ops})

	// Far: 1 GiB above the reserve. 100 checks of 1 MiB stay far from it even counted
	// together, so (but for a reading older than the TTL, on a stalled machine) one statfs
	// serves them all.
	free.Store(reserve + 1<<30)
	reads.Store(0)
	for i := range 100 {
		if err := m.CheckRoom(1 << 20); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if n := reads.Load(); n == 0 || n > 20 {
		t.Fatalf("%d statfs reads for 100 far checks, want at least 1 and far fewer than 100", n)
	}

	// What was checked counts: with roomSlack + 10 MiB above the reserve, checks of 4 MiB
	// reach the slack by the third, which reads the filesystem again.
	free.Store(reserve + roomSlack + 10<<20)
	staleReading(m)
	reads.Store(0)
	for i := range 3 {
		if err := m.CheckRoom(4 << 20); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
	if n := reads.Load(); n < 2 {
		t.Fatalf("%d statfs reads for three 4 MiB checks ending within the slack, want 2 or more", n)
	}

	// Near: every check reads the filesystem, and the one that would eat into the reserve is
	// refused as soon as the filesystem says so.
	free.Store(reserve + 8<<20)
	staleReading(m) // (a far reading is trusted for its TTL: the slack absorbs such drops)
	reads.Store(0)
	for i := range 5 {
		if err := m.CheckRoom(1 << 20); err != nil {
			t.Fatalf("near check %d: %v", i, err)
		}
	}
	if n := reads.Load(); n != 5 {
		t.Fatalf("%d statfs reads for 5 checks near the reserve, want 5", n)
	}
	free.Store(reserve + 512<<10) // something else filled the disk
	if err := m.CheckRoom(1 << 20); !errors.Is(err, storage.ErrInsufficientStorage) {
		t.Fatalf("check past the reserve: %v, want ErrInsufficientStorage", err)
	}
	// A refused reading never answers a later check: the next one reads again.
	free.Store(reserve + 4<<20) // eviction freed some
	reads.Store(0)
	if err := m.CheckRoom(1 << 20); err != nil || reads.Load() != 1 {
		t.Fatalf("check after the space came back: %v with %d reads, want nil with 1", err, reads.Load())
	}
}

// staleReading ages m's last statfs reading past its TTL.
func staleReading(m *Manager) {
	m.room.mu.Lock()
	m.room.at = m.room.at.Add(-roomReadingTTL)
	m.room.mu.Unlock()
}
