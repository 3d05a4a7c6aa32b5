package segment

import (
	"fmt"
	"os"
	"syscall"

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
		free, err := freeBytes(p)
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

// CheckRoom reports whether need more bytes can be written to Dir or TmpDir while leaving
// ReserveBytes free: nil if so, else an error wrapping storage.ErrInsufficientStorage. It is a
// statfs per filesystem (about a microsecond), cheap next to the fdatasync of every write.
// With no reserve configured it always succeeds: only the kernel's ENOSPC stops writes then.
func (m *Manager) CheckRoom(need int64) error {
	if m.opts.ReserveBytes == 0 {
		return nil
	}
	free, err := m.FreeBytes()
	if err != nil {
		return err
	}
	if free-need < m.opts.ReserveBytes {
		return fmt.Errorf("%w: %d bytes free on the data filesystem, a write of %d bytes would leave less than the %d bytes kept in reserve",
			storage.ErrInsufficientStorage, free, need, m.opts.ReserveBytes)
	}
	return nil
}
