package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuickSuiteAgainstKura runs the whole suite in quick mode against a real Kura node (built
// here, or KURA_BIN) and checks that the report is well-formed: every workload present, with
// operations, no errors, server CPU and peak RSS measured, the machine limits measured, and
// the JSON and Markdown forms agreeing. It asserts nothing about speed. It takes about a
// minute on two busy cores, so -short skips it.
func TestQuickSuiteAgainstKura(t *testing.T) {
	if testing.Short() {
		t.Skip("runs every workload against real servers for about a minute")
	}
	bin := os.Getenv("KURA_BIN")
	if bin == "" {
		bin = filepath.Join(t.TempDir(), "kura")
		out, err := exec.Command("go", "build", "-o", bin, "github.com/kuracache/kura/cmd/kura").CombinedOutput()
		if err != nil {
			t.Fatalf("build kura: %v\n%s", err, out)
		}
	}
	jsonPath := filepath.Join(t.TempDir(), "report.json")
	var log bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rep, err := run(ctx, options{
		kuraBin: bin, quick: true, duration: 500 * time.Millisecond, restartObjects: 500, groups: allGroups, batch: 1,
		jsonPath: jsonPath, workdir: t.TempDir(), log: &log,
	})
	if err != nil {
		t.Fatalf("suite: %v\n%s", err, log.String())
	}

	m := rep.Machine
	for name, v := range map[string]float64{"sha256": m.SHA256GBps, "fdatasync": m.FdatasyncP50Ms, "appends": m.AppendsPerS, "loopback": m.LoopbackGiBps} {
		if v <= 0 {
			t.Errorf("machine limit %s = %v", name, v)
		}
	}
	if len(rep.Servers) != 1 || rep.Servers[0].Name != "kura" {
		t.Fatalf("servers = %+v, want kura only (BAZEL_REMOTE_BIN is not read by run)", rep.Servers)
	}
	if len(rep.Comparisons) != 0 {
		t.Errorf("comparisons with one server: %+v", rep.Comparisons)
	}
	rows := rep.Servers[0].Rows
	groups := map[string]int{}
	for _, r := range rows {
		groups[r.Group]++
		if r.Errors != 0 || r.FirstError != "" {
			t.Errorf("%s: %d errors, first %q", r.Workload, r.Errors, r.FirstError)
		}
		if r.PeakRSSMiB <= 0 {
			t.Errorf("%s: peak RSS %v", r.Workload, r.PeakRSSMiB)
		}
		if r.Primary == primarySeconds {
			if r.Seconds <= 0 {
				t.Errorf("%s: %v s", r.Workload, r.Seconds)
			}
			continue
		}
		if r.Ops <= 0 || r.OpsPerS <= 0 || r.P50Ms <= 0 || r.P99Ms < r.P50Ms || r.CPUS < 0 {
			t.Errorf("%s: ops %d (%v/s), p50 %v ms, p99 %v ms, cpu %v s", r.Workload, r.Ops, r.OpsPerS, r.P50Ms, r.P99Ms, r.CPUS)
		}
		if r.Primary == primaryMiB && (r.MiBPerS <= 0 || r.CPUPerMiBM < 0) {
			t.Errorf("%s: %v MiB/s", r.Workload, r.MiBPerS)
		}
	}
	// CPU is counted in 10 ms ticks: a quick run of one workload may round to zero, all of them
	// together cannot.
	var cpu float64
	for _, r := range rows {
		cpu += r.CPUS
	}
	if cpu <= 0 {
		t.Errorf("no server CPU measured over %d workloads", len(rows))
	}
	want := map[string]int{"reapi": len(reapiRows), "http": 14, "replication": 2, "restart": 4}
	for g, n := range want {
		if groups[g] != n {
			t.Errorf("group %s: %d rows, want %d", g, groups[g], n)
		}
	}

	data, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(data, &back); err != nil {
		t.Fatalf("the JSON report does not decode: %v", err)
	}
	if len(back.Servers) != 1 || len(back.Servers[0].Rows) != len(rows) {
		t.Fatalf("JSON report: %d servers", len(back.Servers))
	}
	var md bytes.Buffer
	rep.markdown(&md)
	for _, r := range rows {
		if !strings.Contains(md.String(), "| "+r.Workload+" |") {
			t.Errorf("the Markdown report has no row %q", r.Workload)
		}
	}
	t.Logf("report:\n%s", md.String())
}

// The ratio points the right way for every kind of headline.
func TestCompareRatios(t *testing.T) {
	rep := &Report{Servers: []ServerReport{
		{Name: "kura", PeakRSSMiB: 100, Rows: []Row{
			{Workload: "w", Primary: primaryOps, OpsPerS: 200, CPUPerOpUs: 50},
			{Workload: "f", Primary: primaryP50, P50Ms: 1, CPUPerOpUs: 100},
			{Workload: "only kura", Primary: primaryOps, OpsPerS: 1},
		}},
		{Name: "bazel-remote", PeakRSSMiB: 50, Rows: []Row{
			{Workload: "w", Primary: primaryOps, OpsPerS: 100, CPUPerOpUs: 100},
			{Workload: "f", Primary: primaryP50, P50Ms: 4, CPUPerOpUs: 100},
		}},
	}}
	rep.compare()
	if len(rep.Comparisons) != 2 {
		t.Fatalf("comparisons: %+v", rep.Comparisons)
	}
	if c := rep.Comparisons[0]; c.Ratio != 2 || c.CPURatio != 2 {
		t.Errorf("throughput row: ratio %v, CPU ratio %v; want 2, 2", c.Ratio, c.CPURatio)
	}
	if c := rep.Comparisons[1]; c.Ratio != 4 || c.CPURatio != 1 {
		t.Errorf("latency row: ratio %v, CPU ratio %v; want 4, 1", c.Ratio, c.CPURatio)
	}
	if rep.PeakRSS == nil || rep.PeakRSS.Ratio != 0.5 {
		t.Errorf("peak RSS comparison %+v, want ratio 0.5", rep.PeakRSS)
	}
}

// readProc parses this process's own /proc files.
func TestReadProc(t *testing.T) {
	st, err := readProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if st.cpu < 0 || st.peakKB <= 0 {
		t.Fatalf("cpu %v, peak %d kB", st.cpu, st.peakKB)
	}
}
