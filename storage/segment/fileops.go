package segment

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage"
)

// ErrClosed is returned by every Manager method called after Close, and by Commit on a record
// staged before Close. It wraps storage.ErrUnavailable (the store is shutting down).
var ErrClosed = fmt.Errorf("segment manager is closed: %w", storage.ErrUnavailable)

// fileOps is the seam through which the Manager performs every operation that changes what
// is on disk (writes, truncations, syncs, renames, removals), so tests can inject ENOSPC, EIO
// or EXDEV at an exact point, count fdatasync calls, and model a crash that loses whatever
// was not synced (reliability_sim_test.go). Production code always uses osFileOps. A test
// may leave fields nil: Open fills them from osFileOps.
type fileOps struct {
	writeAt  func(f *os.File, p []byte, off int64) (int, error)
	write    func(f *os.File, p []byte) (int, error)
	truncate func(f *os.File, size int64) error
	datasync func(f *os.File) error
	// syncDir fsyncs a directory, making its entries (creations, renames, removals) durable.
	syncDir func(d *os.File) error
	rename  func(oldpath, newpath string) error
	remove  func(path string) error
	// freeBytes is the space an unprivileged writer may still use on path's filesystem.
	freeBytes func(path string) (int64, error)
}

var osFileOps = fileOps{
	writeAt:  (*os.File).WriteAt,
	write:    (*os.File).Write,
	truncate: (*os.File).Truncate,
	datasync: fdatasync,
	syncDir:  (*os.File).Sync,
	rename:   os.Rename,
	remove:   os.Remove,

	freeBytes: freeBytes,
}

// withDefaults returns ops with every nil operation taken from osFileOps.
func (ops fileOps) withDefaults() fileOps {
	if ops.write == nil {
		ops.write = osFileOps.write
	}
	if ops.writeAt == nil {
		ops.writeAt = osFileOps.writeAt
	}
	if ops.truncate == nil {
		ops.truncate = osFileOps.truncate
	}
	if ops.datasync == nil {
		ops.datasync = osFileOps.datasync
	}
	if ops.syncDir == nil {
		ops.syncDir = osFileOps.syncDir
	}
	if ops.rename == nil {
		ops.rename = osFileOps.rename
	}
	if ops.remove == nil {
		ops.remove = osFileOps.remove
	}
	if ops.freeBytes == nil {
		ops.freeBytes = osFileOps.freeBytes
	}
	return ops
}

// withHook returns ops with hook (Options.FaultHook) consulted before each operation.
func (ops fileOps) withHook(hook func(op, path string) error) fileOps {
	next := ops
	ops.writeAt = func(f *os.File, p []byte, off int64) (int, error) {
		if err := hook("writeAt", f.Name()); err != nil {
			return 0, err
		}
		return next.writeAt(f, p, off)
	}
	ops.write = func(f *os.File, p []byte) (int, error) {
		if err := hook("write", f.Name()); err != nil {
			return 0, err
		}
		return next.write(f, p)
	}
	ops.truncate = func(f *os.File, size int64) error {
		if err := hook("truncate", f.Name()); err != nil {
			return err
		}
		return next.truncate(f, size)
	}
	ops.datasync = func(f *os.File) error {
		if err := hook("datasync", f.Name()); err != nil {
			return err
		}
		return next.datasync(f)
	}
	ops.syncDir = func(d *os.File) error {
		if err := hook("syncDir", d.Name()); err != nil {
			return err
		}
		return next.syncDir(d)
	}
	ops.rename = func(oldpath, newpath string) error {
		if err := hook("rename", oldpath); err != nil {
			return err
		}
		return next.rename(oldpath, newpath)
	}
	ops.remove = func(path string) error {
		if err := hook("remove", path); err != nil {
			return err
		}
		return next.remove(path)
	}
	return ops
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

// syncDir makes the segment directory's entries (a new segment file, a rename, a removal)
// durable.
func (m *Manager) syncDir() error {
	if err := m.ops.syncDir(m.dir.File); err != nil {
		return ioError("sync directory", m.dir.Name(), err)
	}
	return nil
}

// removeFile removes path through the seam; a file already gone is no error.
func (m *Manager) removeFile(path string) error {
	if err := m.ops.remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}
