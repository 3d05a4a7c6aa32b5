package figures

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// ReportEnv names the file figures are appended to (unset: figures are only logged).
const ReportEnv = "KURA_RELIABILITY_REPORT"

// LongEnv selects the long mode of the suite (KURA_RELIABILITY_LONG=1, `task reliability`):
// the full sizes and iteration counts instead of CI's short ones.
const LongEnv = "KURA_RELIABILITY_LONG"

// Long reports whether the suite runs in its long mode.
func Long() bool {
	switch os.Getenv(LongEnv) {
	case "1", "true", "yes":
		return true
	}
	return false
}

// Pick returns short in the short (CI) mode and long in the long mode.
func Pick[T any](short, long T) T {
	if Long() {
		return long
	}
	return short
}

// Figure is one measured result.
type Figure struct {
	// Item is the guarantee's number in the suite (issue 13's list: 1 crash under load … 13
	// rolling upgrades); the table is ordered by it.
	Item int `json:"item"`
	// Name says what was measured ("corrupted bodies served").
	Name string `json:"name"`
	// Value is the measurement as printed ("0", "100 %", "1.8 s p99").
	Value string `json:"value"`
	// Want is the bound it must meet ("0", "100 %", "" for a figure that is only reported).
	Want string `json:"want,omitempty"`
	// OK is false when Value misses Want (the test fails too).
	OK bool `json:"ok"`
	// Test is the test that measured it; Mode is "short" or "long".
	Test string    `json:"test"`
	Mode string    `json:"mode"`
	At   time.Time `json:"at"`
}

var (
	writeMu  sync.Mutex
	recorded []Figure // every figure of this process, for Recorded
)

// Recorded returns the figures recorded so far by this process.
func Recorded() []Figure {
	writeMu.Lock()
	defer writeMu.Unlock()
	return append([]Figure(nil), recorded...)
}

// Record logs the figure (as "figure: …", which scripts/test repeats after a run) and appends
// it to the report file when one is set. It does not fail the test: the caller asserts.
func Record(t testing.TB, item int, name, value, want string, ok bool) {
	t.Helper()
	f := Figure{Item: item, Name: name, Value: value, Want: want, OK: ok, Test: t.Name(), Mode: Pick("short", "long"), At: time.Now().UTC()}
	mark := "ok"
	if !ok {
		mark = "MISSED"
	}
	if want == "" {
		mark = "reported"
	}
	t.Logf("figure: reliability %d | %s | %s | want %s | %s", item, name, value, orDash(want), mark)
	writeMu.Lock()
	recorded = append(recorded, f)
	writeMu.Unlock()
	path := os.Getenv(ReportEnv)
	if path == "" {
		return
	}
	line, err := json.Marshal(f)
	if err != nil {
		t.Errorf("figures: encode %+v: %v", f, err)
		return
	}
	writeMu.Lock()
	defer writeMu.Unlock()
	// O_APPEND with one write per line: lines from parallel test processes do not interleave.
	file, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Errorf("figures: open %s: %v", path, err)
		return
	}
	defer file.Close()
	if _, err := file.Write(append(line, '\n')); err != nil {
		t.Errorf("figures: append to %s: %v", path, err)
	}
}

// Check records a figure whose value must equal want, and fails the test when it does not.
func Check(t testing.TB, item int, name string, got, want any) {
	t.Helper()
	g, w := fmt.Sprint(got), fmt.Sprint(want)
	Record(t, item, name, g, w, g == w)
	if g != w {
		t.Errorf("reliability %d: %s = %s, want %s", item, name, g, w)
	}
}

// Report records a figure that has no bound (a latency, a time to ready).
func Report(t testing.TB, item int, name, value string) {
	t.Helper()
	Record(t, item, name, value, "", true)
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

// Read decodes a report file; malformed lines are an error naming the line.
func Read(r io.Reader) ([]Figure, error) {
	var out []Figure
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var f Figure
		if err := json.Unmarshal(sc.Bytes(), &f); err != nil {
			return nil, fmt.Errorf("report line %d: %w", line, err)
		}
		out = append(out, f)
	}
	return out, sc.Err()
}

// Items names each guarantee of the suite, for the table's first column.
var Items = map[int]string{
	1:  "Crash under load",
	2:  "Simulated crashes",
	3:  "I/O faults",
	4:  "Bit rot",
	5:  "Eviction race soak",
	6:  "Membership",
	7:  "Writes across a partition",
	8:  "Hostile input",
	9:  "Internal-plane credentials",
	10: "Policy under attack",
	11: "Fuzzing",
	12: "Race and leaks",
	13: "Rolling upgrades",
}

// Table renders figures as one Markdown table ordered by item (then as recorded). A figure
// recorded more than once (the same test and name) keeps its latest value.
func Table(figs []Figure) string {
	type key struct {
		item       int
		test, name string
	}
	latest := map[key]int{}
	var order []key
	for i, f := range figs {
		k := key{f.Item, f.Test, f.Name}
		if _, seen := latest[k]; !seen {
			order = append(order, k)
		}
		latest[k] = i
	}
	sort.SliceStable(order, func(i, j int) bool { return order[i].item < order[j].item })
	var b strings.Builder
	b.WriteString("| # | guarantee | measured | value | must be | | test |\n|---|---|---|---|---|---|---|\n")
	for _, k := range order {
		f := figs[latest[k]]
		mark := "ok"
		switch {
		case f.Want == "":
			mark = ""
		case !f.OK:
			mark = "**MISSED**"
		}
		fmt.Fprintf(&b, "| %d | %s | %s | %s | %s | %s | %s (%s) |\n", f.Item, Items[f.Item], f.Name, f.Value, orDash(f.Want), mark, f.Test, f.Mode)
	}
	return b.String()
}
