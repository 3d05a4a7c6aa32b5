package figures

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRecordAppendsAndTableKeepsLatest(t *testing.T) {
	path := filepath.Join(t.TempDir(), "report.jsonl")
	t.Setenv(ReportEnv, path)
	Record(t, 4, "bad bytes served", "1", "0", false)
	Record(t, 1, "corrupted bodies served", "0", "0", true)
	Record(t, 4, "bad bytes served", "0", "0", true)
	Report(t, 1, "time to ready p99", "1.2 s")

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	figs, err := Read(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(figs) != 4 {
		t.Fatalf("read %d figures, want 4", len(figs))
	}
	table := Table(figs)
	lines := strings.Split(strings.TrimSpace(table), "\n")
	if len(lines) != 2+3 {
		t.Fatalf("table has %d lines, want a header and 3 rows:\n%s", len(lines), table)
	}
	if !strings.Contains(lines[2], "| 1 | Crash under load | corrupted bodies served | 0 | 0 | ok |") {
		t.Errorf("first row is not item 1's figure:\n%s", table)
	}
	if !strings.Contains(lines[4], "| 4 | Bit rot | bad bytes served | 0 | 0 | ok |") || strings.Contains(table, "MISSED") {
		t.Errorf("item 4 does not show its latest value:\n%s", table)
	}
}

func TestReadNamesTheBadLine(t *testing.T) {
	_, err := Read(strings.NewReader("{\"item\":1}\nnot json\n"))
	if err == nil || !strings.Contains(err.Error(), "line 2") {
		t.Fatalf("Read = %v, want an error naming line 2", err)
	}
}

func TestPick(t *testing.T) {
	t.Setenv(LongEnv, "")
	if Pick(1, 20) != 1 {
		t.Error("short mode picked the long value")
	}
	t.Setenv(LongEnv, "1")
	if Pick(1, 20) != 20 {
		t.Error("long mode picked the short value")
	}
}
