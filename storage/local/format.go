package local

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// DataFormatVersion is the version of the data directory's layout this build writes and
// reads: segments/ (segment files whose footers carry their own version), meta/ (Pebble, whose
// values carry a format byte), tmp/ (staging). A build refuses a directory written by a newer,
// incompatible layout instead of misreading it; docs/reliability.md lists every versioned format.
const DataFormatVersion = 1

// formatFile names the marker holding the directory's layout version, as
// "kura-data-format <N>\n". Builds before the marker existed wrote version 1 without it and
// ignore it, so a directory keeps opening on them after an upgrade (a rollback works).
const formatFile = "KURA_FORMAT"

const formatPrefix = "kura-data-format "

// ErrDataFormat reports a data directory whose layout version this build cannot read.
var ErrDataFormat = errors.New("unsupported data directory format")

// checkDataFormat reads dir's format marker, refusing a version other than
// DataFormatVersion, and writes the marker (atomically, durably) when it is missing: a new
// directory, or one written by a build from before the marker (the same version-1 layout).
func checkDataFormat(dir string) error {
	path := filepath.Join(dir, formatFile)
	raw, err := os.ReadFile(path)
	switch {
	case err == nil:
		version, perr := parseDataFormat(string(raw))
		if perr != nil {
			return fmt.Errorf("data directory %s: %s: %w: %v", dir, formatFile, ErrDataFormat, perr)
		}
		if version != DataFormatVersion {
			return fmt.Errorf("data directory %s: %w: it has format version %d and this build of kura reads format version %d only (run the kura release that wrote it, or start this node on an empty data directory)",
				dir, ErrDataFormat, version, DataFormatVersion)
		}
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return writeDataFormat(dir)
	default:
		return fmt.Errorf("data directory %s: read %s: %w", dir, formatFile, err)
	}
}

// parseDataFormat decodes the marker's content.
func parseDataFormat(s string) (int, error) {
	line, ok := strings.CutSuffix(s, "\n")
	rest, found := strings.CutPrefix(line, formatPrefix)
	if !ok || !found {
		return 0, fmt.Errorf("content %q is not %q", truncateForError(s), formatPrefix+"<version>\\n")
	}
	v, err := strconv.Atoi(rest)
	if err != nil || v < 1 {
		return 0, fmt.Errorf("version %q is not a positive whole number", truncateForError(rest))
	}
	return v, nil
}

func truncateForError(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "…"
	}
	return s
}

// writeDataFormat writes the marker through a temporary file, a rename and a directory sync, so
// a crash leaves either no marker (written again on the next start) or a whole one.
func writeDataFormat(dir string) error {
	tmp := filepath.Join(dir, formatFile+".tmp")
	content := formatPrefix + strconv.Itoa(DataFormatVersion) + "\n"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o640)
	if err != nil {
		return fmt.Errorf("data directory %s: write %s: %w", dir, formatFile, err)
	}
	_, werr := f.WriteString(content)
	if werr == nil {
		werr = f.Sync()
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(tmp, filepath.Join(dir, formatFile))
	}
	if werr == nil {
		werr = syncPath(dir)
	}
	if werr != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("data directory %s: write %s: %w", dir, formatFile, werr)
	}
	return nil
}

// syncPath fsyncs a directory so the entries just renamed into it survive a crash.
func syncPath(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
