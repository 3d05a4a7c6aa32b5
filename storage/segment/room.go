package segment

import (
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage"
)

// distinctFilesystems returns the directories among dirs that live on different filesystems
// (by device number), so CheckRoom inspects each filesystem once.
func distinctFilesystems(dirs ...string) ([]string, error) {
	var out []string
	seen := map[uint64]bool{}
	for _, d := range dirs {
		fi, err := os.Stat(d)
		if err != nil {
			return nil, ioError("stat directory", d, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			out = append(out, d)
			continue
		}
		dev := uint64(st.Dev) //nolint:unconvert // Dev's type differs between architectures
		if !seen[dev] {
			seen[dev] = true
			out = append(out, d)
		}
	}
	return out, nil
}

// freeBytes is the space an unprivileged writer may still use on path's filesystem.
func freeBytes(path string) (int64, error) {
	var st unix.Statfs_t
	for {
		err := unix.Statfs(path, &st)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return 0, ioError("inspect filesystem of", path, err)
		}
	}
	return int64(st.Bavail) * int64(st.Bsize), nil //nolint:unconvert // field types differ between architectures
}

// FreeBytes is the smallest free space among the filesystems of Dir and TmpDir.
func (m *Manager) FreeBytes() (int64, error) {
	least := int64(-1)
	for _, p := range m.roomPaths {
		free, err := m.ops.freeBytes(p)
		if err != nil {
			return 0, err
		}
		if least < 0 || free < least {
			least = free
		}
	}
	return least, nil
}

// ReserveBytes is the free space writes leave untouched (Options.ReserveBytes).
func (m *Manager) ReserveBytes() int64 { return m.opts.ReserveBytes }

// A write far from the reserve is checked against the last statfs reading, less every byte
// checked since, instead of a statfs of its own: a small durable write checked its room two
// or three times (the staged record, the append, the store's pre-check), and those statfs
// calls were 4–6% of its server CPU. A reading serves for roomReadingTTL and only while at
// least roomSlack would stay free above the reserve after the write, so close to the reserve
// every check is an exact statfs, as before; bytes freed since the reading are not credited
// until the next one. Space another process takes within the TTL is the slack's to absorb
// (the kernel's ENOSPC, which the write paths handle, stays the last word).
const (
	roomReadingTTL = 50 * time.Millisecond
	roomSlack      = 64 << 20
)

// roomReading is the last statfs reading and what was checked against it since.
type roomReading struct {
	mu    sync.Mutex
	at    time.Time // zero: no reading yet
	free  int64     // FreeBytes at the reading
	spent int64     // bytes checked against the reading since
}

// CheckRoom reports whether need more bytes can be written to Dir or TmpDir while leaving
// ReserveBytes free: nil if so, else an error wrapping storage.ErrInsufficientStorage. Far
// from the reserve it answers from the last statfs reading (roomReading); near it, it is a
// statfs per filesystem. With no reserve configured it always succeeds: only the kernel's
// ENOSPC stops writes then.
func (m *Manager) CheckRoom(need int64) error {
	reserve := m.opts.ReserveBytes
	if reserve == 0 {
		return nil
	}
	r := &m.room
	r.mu.Lock()
	if !r.at.IsZero() && time.Since(r.at) < roomReadingTTL && r.free-r.spent-need-reserve >= roomSlack {
		r.spent += need
		r.mu.Unlock()
		return nil
	}
	r.mu.Unlock()
	free, err := m.FreeBytes()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.at, r.free, r.spent = time.Now(), free, 0
	if free-need >= reserve {
		r.spent = need
	}
	r.mu.Unlock()
	if free-need < reserve {
		return fmt.Errorf("%w: %d bytes free on the data filesystem, a write of %d bytes would leave less than the %d bytes kept in reserve",
			storage.ErrInsufficientStorage, free, need, reserve)
	}
	return nil
}
