package main

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kuracache/kura/bench/load"
)

// What a row's headline figure is, and so which way its ratio points.
const (
	primaryOps     = "ops/s"   // requests (or replicated objects) per second, higher is better
	primaryMiB     = "MiB/s"   // bytes per second, higher is better
	primaryP50     = "p50"     // median latency, lower is better
	primarySeconds = "seconds" // a duration (restart), lower is better
)

// Which machine limit a row is set against (Limits), if any.
const (
	limitAppends  = "appends"  // small durable writes: one file, one fdatasync per 64 records
	limitSHA256   = "sha256"   // large writes: every byte is hashed once
	limitLoopback = "loopback" // large reads: every byte crosses loopback TCP once
)

// Row is one workload against one server.
type Row struct {
	Workload   string  `json:"workload"`
	Group      string  `json:"group"` // reapi, http, replication, restart
	Clients    int     `json:"clients,omitempty"`
	Primary    string  `json:"primary"`
	Limit      string  `json:"limit,omitempty"`
	Ops        int64   `json:"ops"`
	Items      int64   `json:"items"`
	Bytes      int64   `json:"bytes"`
	Errors     int64   `json:"errors"`
	ElapsedS   float64 `json:"elapsed_s"`
	OpsPerS    float64 `json:"ops_per_s"`
	ItemsPerS  float64 `json:"items_per_s"`
	MiBPerS    float64 `json:"mib_per_s"`
	P50Ms      float64 `json:"p50_ms"`
	P99Ms      float64 `json:"p99_ms"`
	Seconds    float64 `json:"seconds,omitempty"` // restart rows
	CPUS       float64 `json:"server_cpu_s"`      // utime+stime over the run
	CPUPerOpUs float64 `json:"server_cpu_per_op_us"`
	CPUPerMiBM float64 `json:"server_cpu_per_mib_ms,omitempty"`
	PeakRSSMiB float64 `json:"peak_rss_mib"` // VmHWM after the run
	OfLimit    float64 `json:"of_limit,omitempty"`
	FirstError string  `json:"first_error,omitempty"`
}

// headline is the row's figure in its own unit.
func (r Row) headline() float64 {
	switch r.Primary {
	case primaryOps:
		return r.OpsPerS
	case primaryMiB:
		return r.MiBPerS
	case primaryP50:
		return r.P50Ms
	}
	return r.Seconds
}

func (r Row) lowerIsBetter() bool { return r.Primary == primaryP50 || r.Primary == primarySeconds }

// fromResult fills the load figures of a row; the caller adds CPU and RSS.
func fromResult(r *load.Result) Row {
	row := Row{
		Ops: r.Requests, Items: r.Items, Bytes: r.Bytes, Errors: r.Errors, ElapsedS: r.Elapsed.Seconds(),
		OpsPerS: r.PerSecond(r.Requests), ItemsPerS: r.PerSecond(r.Items), MiBPerS: r.PerSecond(r.Bytes) / (1 << 20),
		P50Ms: ms(r.Percentile(0.50)), P99Ms: ms(r.Percentile(0.99)),
	}
	if r.FirstErr != nil {
		row.FirstError = r.FirstErr.Error()
	}
	return row
}

// setCPU records server CPU spent over the run, per operation and per MiB moved.
func (r *Row) setCPU(cpu time.Duration, peakKB int64) {
	r.CPUS = cpu.Seconds()
	if r.Ops > 0 {
		r.CPUPerOpUs = float64(cpu.Microseconds()) / float64(r.Ops)
	}
	if r.Ops > 0 && r.Bytes/r.Ops >= 1<<20 { // per MiB only where objects are MiB-sized
		r.CPUPerMiBM = float64(cpu.Microseconds()) / 1000 / (float64(r.Bytes) / (1 << 20))
	}
	r.PeakRSSMiB = float64(peakKB) / 1024
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Limits are this machine's ceilings, measured by the suite before any server starts.
type Limits struct {
	SHA256GBps        float64 `json:"sha256_gb_per_s_one_core"`
	FdatasyncP50Ms    float64 `json:"fdatasync_p50_ms"`
	FdatasyncP99Ms    float64 `json:"fdatasync_p99_ms"`
	AppendsPerS       float64 `json:"appends_1kib_fdatasync_per_64_records_per_s"`
	LoopbackGiBps     float64 `json:"loopback_tcp_gib_per_s"`
	FilesystemOfData  string  `json:"data_dir"`
	MeasuredFor       string  `json:"measured_for"`
	LogicalCPUs       int     `json:"cpus"`
	LoadGeneratorNote string  `json:"note"`
}

// ofLimit is the row's headline as a fraction of the machine limit it is set against.
func (l Limits) ofLimit(r Row) float64 {
	switch r.Limit {
	case limitAppends:
		if l.AppendsPerS > 0 {
			return r.ItemsPerS / l.AppendsPerS
		}
	case limitSHA256:
		if l.SHA256GBps > 0 {
			return r.MiBPerS * (1 << 20) / (l.SHA256GBps * 1e9)
		}
	case limitLoopback:
		if l.LoopbackGiBps > 0 {
			return r.MiBPerS / (l.LoopbackGiBps * 1024)
		}
	}
	return 0
}

// ServerReport is every row run against one server.
type ServerReport struct {
	Name       string  `json:"name"`
	Binary     string  `json:"binary"`
	Rows       []Row   `json:"rows"`
	PeakRSSMiB float64 `json:"peak_rss_mib"` // over the REAPI and HTTP workloads
}

// Comparison is one workload run against both servers.
type Comparison struct {
	Workload    string  `json:"workload"`
	Primary     string  `json:"primary"`
	Kura        float64 `json:"kura"`
	BazelRemote float64 `json:"bazel_remote"`
	Ratio       float64 `json:"ratio"`     // > 1: Kura is better
	CPURatio    float64 `json:"cpu_ratio"` // bazel-remote CPU/op ÷ Kura CPU/op: > 1, Kura spends less
	KuraCPUUs   float64 `json:"kura_cpu_per_op_us"`
	BRCPUUs     float64 `json:"bazel_remote_cpu_per_op_us"`
}

// Report is the suite's whole output.
type Report struct {
	Started     time.Time      `json:"started"`
	Quick       bool           `json:"quick"`
	Duration    string         `json:"duration_per_workload"`
	Machine     Limits         `json:"machine"`
	Servers     []ServerReport `json:"servers"`
	Comparisons []Comparison   `json:"comparisons,omitempty"`
	PeakRSS     *Comparison    `json:"peak_rss,omitempty"`
}

// compare pairs the rows both servers ran.
func (rep *Report) compare() {
	if len(rep.Servers) < 2 {
		return
	}
	kura, br := rep.Servers[0], rep.Servers[1]
	byName := map[string]Row{}
	for _, r := range br.Rows {
		byName[r.Workload] = r
	}
	for _, k := range kura.Rows {
		b, ok := byName[k.Workload]
		if !ok {
			continue
		}
		c := Comparison{Workload: k.Workload, Primary: k.Primary, Kura: k.headline(), BazelRemote: b.headline(),
			KuraCPUUs: k.CPUPerOpUs, BRCPUUs: b.CPUPerOpUs}
		c.Ratio = ratio(c.Kura, c.BazelRemote, k.lowerIsBetter())
		c.CPURatio = ratio(k.CPUPerOpUs, b.CPUPerOpUs, true)
		rep.Comparisons = append(rep.Comparisons, c)
	}
	rep.PeakRSS = &Comparison{Workload: "peak RSS over the REAPI and HTTP workloads", Primary: "MiB",
		Kura: kura.PeakRSSMiB, BazelRemote: br.PeakRSSMiB, Ratio: ratio(kura.PeakRSSMiB, br.PeakRSSMiB, true)}
}

// ratio is kura/other, inverted when lower is better; 0 when either side is missing.
func ratio(kura, other float64, lowerIsBetter bool) float64 {
	if kura <= 0 || other <= 0 {
		return 0
	}
	if lowerIsBetter {
		return other / kura
	}
	return kura / other
}

// markdown writes the report as Markdown tables.
func (rep *Report) markdown(w io.Writer) {
	m := rep.Machine
	fmt.Fprintf(w, "## Machine limits (measured by the suite, %d CPUs)\n\n", m.LogicalCPUs)
	fmt.Fprintf(w, "| limit | figure |\n|---|---|\n")
	fmt.Fprintf(w, "| sha256, one core | %.2f GB/s |\n", m.SHA256GBps)
	fmt.Fprintf(w, "| fdatasync on the data directory's filesystem, p50 / p99 | %.2f ms / %.2f ms |\n", m.FdatasyncP50Ms, m.FdatasyncP99Ms)
	fmt.Fprintf(w, "| 1 KiB appends to one file, one fdatasync per 64 records | %s records/s |\n", num(m.AppendsPerS))
	fmt.Fprintf(w, "| loopback TCP, one connection | %.2f GiB/s |\n\n", m.LoopbackGiBps)

	for _, s := range rep.Servers {
		fmt.Fprintf(w, "## %s (%s)\n\n", s.Name, s.Binary)
		fmt.Fprintf(w, "| workload | clients | ops/s | MiB/s | p50 | p99 | server CPU/op | CPU/MiB | peak RSS | of limit | errors |\n")
		fmt.Fprintf(w, "|---|---|---|---|---|---|---|---|---|---|---|\n")
		for _, r := range s.Rows {
			p50, p99 := fmtMs(r.P50Ms), fmtMs(r.P99Ms)
			ops, mib := num(r.OpsPerS), fmt.Sprintf("%.1f", r.MiBPerS)
			if r.Primary == primarySeconds {
				p50, p99, ops, mib = fmt.Sprintf("%.2f s", r.Seconds), "", "", ""
			}
			ofLimit := ""
			if r.OfLimit > 0 {
				ofLimit = fmt.Sprintf("%.0f%% of %s", 100*r.OfLimit, r.Limit)
			}
			cpuMiB := ""
			if r.CPUPerMiBM > 0 {
				cpuMiB = fmt.Sprintf("%.2f ms", r.CPUPerMiBM)
			}
			cpuOp := ""
			if r.Ops > 0 {
				cpuOp = fmtUs(r.CPUPerOpUs)
			}
			errs := fmt.Sprint(r.Errors)
			if r.FirstError != "" {
				errs += " (" + strings.ReplaceAll(truncate(r.FirstError, 80), "|", "/") + ")"
			}
			clients := ""
			if r.Clients > 0 {
				clients = fmt.Sprint(r.Clients)
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %.0f MiB | %s | %s |\n",
				r.Workload, clients, ops, mib, p50, p99, cpuOp, cpuMiB, r.PeakRSSMiB, ofLimit, errs)
		}
		if s.PeakRSSMiB > 0 { // none when only the restart or replication groups ran
			fmt.Fprintf(w, "\npeak RSS over the REAPI and HTTP workloads: %.0f MiB\n", s.PeakRSSMiB)
		}
		fmt.Fprintln(w)
	}

	if len(rep.Comparisons) == 0 {
		return
	}
	fmt.Fprintf(w, "## Kura against bazel-remote (ratio > 1: Kura is better; for latency and CPU inverted)\n\n")
	fmt.Fprintf(w, "| workload | Kura | bazel-remote | ratio | Kura CPU/op | bazel-remote CPU/op | CPU ratio |\n|---|---|---|---|---|---|---|\n")
	for _, c := range rep.Comparisons {
		fmt.Fprintf(w, "| %s | %s | %s | %.2f | %s | %s | %.2f |\n", c.Workload, fmtHeadline(c.Kura, c.Primary),
			fmtHeadline(c.BazelRemote, c.Primary), c.Ratio, fmtUs(c.KuraCPUUs), fmtUs(c.BRCPUUs), c.CPURatio)
	}
	if p := rep.PeakRSS; p != nil {
		fmt.Fprintf(w, "| %s | %.0f MiB | %.0f MiB | %.2f | | | |\n", p.Workload, p.Kura, p.BazelRemote, p.Ratio)
	}
	fmt.Fprintln(w)
}

func fmtHeadline(v float64, primary string) string {
	switch primary {
	case primaryOps:
		return num(v) + "/s"
	case primaryMiB:
		return fmt.Sprintf("%.0f MiB/s", v)
	case primaryP50:
		return fmtMs(v)
	}
	return fmt.Sprintf("%.2f s", v)
}

func fmtMs(v float64) string {
	if v <= 0 {
		return ""
	}
	return load.FmtDur(time.Duration(v * float64(time.Millisecond)))
}

func fmtUs(v float64) string {
	if v <= 0 {
		return ""
	}
	return load.FmtDur(time.Duration(v * float64(time.Microsecond)))
}

// num prints a rate with thousands separators and no decimals (two below 10).
func num(v float64) string {
	if v < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	s := fmt.Sprintf("%.0f", v)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
