package local

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDataFormatMarkerWrittenOnFirstOpen(t *testing.T) {
	path := t.TempDir()
	dir, err := OpenDataDir(path, smallMeta())
	if err != nil {
		t.Fatal(err)
	}
	if err := dir.Close(); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(path, formatFile))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(raw), "kura-data-format 1\n"; got != want {
		t.Fatalf("%s = %q, want %q", formatFile, got, want)
	}
	if _, err := os.Stat(filepath.Join(path, formatFile+".tmp")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary marker left behind: %v", err)
	}
	// A second open reads the marker it wrote.
	dir, err = OpenDataDir(path, smallMeta())
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	_ = dir.Close()
}

func TestDataFormatRefusesOtherVersionsByName(t *testing.T) {
	for _, tc := range []struct{ content, wantInError string }{
		{"kura-data-format 2\n", "format version 2"},
		{"kura-data-format 0\n", "not a positive whole number"},
		{"kura-data-format two\n", "not a positive whole number"},
		{"something else", "is not"},
	} {
		path := t.TempDir()
		if err := os.WriteFile(filepath.Join(path, formatFile), []byte(tc.content), 0o640); err != nil {
			t.Fatal(err)
		}
		dir, err := OpenDataDir(path, smallMeta())
		if err == nil {
			_ = dir.Close()
			t.Fatalf("%q: OpenDataDir succeeded, want a refusal", tc.content)
		}
		if !errors.Is(err, ErrDataFormat) || !strings.Contains(err.Error(), tc.wantInError) {
			t.Fatalf("%q: error %q, want ErrDataFormat mentioning %q", tc.content, err, tc.wantInError)
		}
		if _, err := os.Stat(filepath.Join(path, "meta")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%q: the metadata database was created before the refusal", tc.content)
		}
		// The lock is released: the directory can be locked again.
		lock, err := lockDataDir(path)
		if err != nil {
			t.Fatalf("%q: lock after refusal: %v", tc.content, err)
		}
		_ = lock.Close()
	}
}
