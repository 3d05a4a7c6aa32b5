package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/kuracache/kura/storage/meta"
)

// ErrDataDirLocked reports that another running process holds the data directory. Open's
// error reads "data directory X is locked by another running kura process".
var ErrDataDirLocked = errors.New("locked by another running kura process")

// DataDir is a data directory locked for this process, with its metadata database open: the
// first half of opening a Store. It is a step of its own because the replication outbox keeps
// its queue in that database and must exist before the store that reports commits to it
// (Options.Observer): open the DataDir, build the outbox on DB, then Open the store with both.
type DataDir struct {
	path   string
	lock   *os.File
	db     *meta.DB
	closed bool
}

// OpenDataDir creates path if needed, takes its exclusive lock (ErrDataDirLocked when another
// process holds it), checks its layout version (ErrDataFormat when this build cannot read it;
// the marker is written when missing) and opens the metadata database in path/meta with mo (Dir is filled in).
// Hand it to Open through Options.Dir, which then owns it; Close it yourself only if Open is
// never called.
func OpenDataDir(path string, mo meta.Options) (*DataDir, error) {
	if path == "" {
		return nil, errors.New("open data directory: no path given")
	}
	if err := os.MkdirAll(path, 0o750); err != nil {
		return nil, fmt.Errorf("open data directory: create %s: %w", path, err)
	}
	lock, err := lockDataDir(path)
	if err != nil {
		return nil, err
	}
	// The layout version is checked before Pebble opens anything: a directory from a newer,
	// incompatible build is refused by name instead of being half-read.
	if err := checkDataFormat(path); err != nil {
		_ = lock.Close()
		return nil, err
	}
	mo.Dir = filepath.Join(path, "meta")
	db, err := meta.Open(mo)
	if err != nil {
		_ = lock.Close()
		return nil, fmt.Errorf("open data directory %s: %w", path, err)
	}
	return &DataDir{path: path, lock: lock, db: db}, nil
}

// Path is the directory's path as given to OpenDataDir.
func (d *DataDir) Path() string { return d.path }

// DB is the metadata database: the single source of truth for what is stored, and the home of
// the outbox's queue. Only the store writes manifests to it.
func (d *DataDir) DB() *meta.DB { return d.db }

// Close closes the metadata database, then releases the lock. Further calls do nothing.
func (d *DataDir) Close() error {
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	if err := d.db.Close(); err != nil {
		errs = append(errs, err)
	}
	// Closing the descriptor releases the flock; the LOCK file stays (removing it would race
	// with a process that just opened it).
	if err := d.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("release data directory lock: %w", err))
	}
	return errors.Join(errs...)
}

// lockDataDir takes an exclusive, non-blocking flock on dir/LOCK. The kernel drops it when the
// process dies, so a crash never leaves a stale lock behind.
func lockDataDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, "LOCK")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open lock file %s: %w", path, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if !errors.Is(err, syscall.EINTR) {
			break
		}
	}
	if err != nil {
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("data directory %s is %w", dir, ErrDataDirLocked)
		}
		return nil, fmt.Errorf("lock data directory %s: %w", dir, err)
	}
	// The pid helps an operator find the holder; failing to write it is harmless.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}
