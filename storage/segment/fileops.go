package segment

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage"
)

// ErrClosed is returned by every Manager method called after Close, and by Commit on a record
// staged before Close. It wraps storage.ErrUnavailable (the store is shutting down).
var ErrClosed = fmt.Errorf("segment manager is closed: %w", storage.ErrUnavailable)

// fileOps is the seam through which the Manager performs the writes and syncs that can fail
// for environmental reasons, so tests can inject ENOSPC, EIO or EXDEV at an exact point and
// count fdatasync calls. Production code always uses osFileOps.
type fileOps struct {
	writeAt  func(f *os.File, p []byte, off int64) (int, error)
	write    func(f *os.File, p []byte) (int, error)
	datasync func(f *os.File) error
	rename   func(oldpath, newpath string) error
	// freeBytes is the space an unprivileged writer may still use on path's filesystem.
	freeBytes func(path string) (int64, error)
}

var osFileOps = fileOps{
	writeAt:  (*os.File).WriteAt,
	write:    (*os.File).Write,
	datasync: fdatasync,
	rename:   os.Rename,

	freeBytes: freeBytes,
}

// fdatasync flushes a file's data and the metadata needed to read it back (its size), which
// is all a segment needs; it skips the timestamp update a full fsync would also write.
// SyscallConn keeps the descriptor referenced for the duration of the call, so a concurrent
// Close cannot recycle it under us.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = unix.Fdatasync(int(fd))
			if serr != unix.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// isNoSpace reports whether err means the filesystem (or the user's quota) is full.
func isNoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// ioError wraps an I/O failure with the action and the path; a full disk additionally wraps
// storage.ErrInsufficientStorage so each protocol can answer 507 / RESOURCE_EXHAUSTED.
func ioError(action, path string, err error) error {
	if isNoSpace(err) {
		return fmt.Errorf("%s %s: %w: %w", action, path, storage.ErrInsufficientStorage, err)
	}
	return fmt.Errorf("%s %s: %w", action, path, err)
}

// syncDir makes directory entries (a new segment file, a rename, a removal) durable.
func syncDir(d *os.File) error {
	if err := d.Sync(); err != nil {
		return ioError("sync directory", d.Name(), err)
	}
	return nil
}
