// Command reapi is a load generator for a Kura REAPI endpoint (or any REAPI v2 cache). It runs
// each scenario for a fixed time at each concurrency level and prints, per scenario, the
// request rate, the throughput and the p50/p99 request latency; given the server's PID it also
// reports the server's peak resident memory (VmHWM). The scenarios live in bench/load, shared
// with bench/suite.
//
//	go run ./bench/reapi -addr 127.0.0.1:50051 -duration 10s -concurrency 16,64 [-pid N]
//
// See bench/README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kuracache/kura/bench/load"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "reapi bench:", err)
		os.Exit(1)
	}
}

func run() error {
	var o load.REAPIOptions
	var conc, scen string
	var duration time.Duration
	var pid int
	flag.StringVar(&o.Addr, "addr", "127.0.0.1:50051", "REAPI gRPC address (host:port)")
	flag.StringVar(&o.Instance, "instance", "bench", "instance_name to use (its own namespace)")
	flag.DurationVar(&duration, "duration", 10*time.Second, "how long each run starts new requests (requests in flight then finish)")
	flag.StringVar(&conc, "concurrency", "16,64", "comma-separated numbers of concurrent workers")
	flag.StringVar(&scen, "scenarios", strings.Join(load.REAPIScenarios(), ","), "comma-separated scenarios to run")
	flag.IntVar(&o.Batch, "batch", 100, "blobs per BatchUpdateBlobs/BatchReadBlobs request")
	flag.IntVar(&o.Conns, "conns", 4, "gRPC connections the workers share (round robin)")
	flag.IntVar(&o.Chunk, "chunk", 1<<20, "ByteStream.Write chunk size in bytes")
	flag.IntVar(&pid, "pid", 0, "server PID: report its peak RSS (VmHWM) from /proc/<pid>/status")
	flag.Parse()
	var concurrency []int
	for _, f := range strings.Split(conc, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-concurrency: %q is not a positive number", f)
		}
		concurrency = append(concurrency, n)
	}
	var scenarios []string
	for _, s := range strings.Split(scen, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(load.REAPIScenarios(), s) {
			return fmt.Errorf("-scenarios: unknown scenario %q (known: %s)", s, strings.Join(load.REAPIScenarios(), ", "))
		}
		scenarios = append(scenarios, s)
	}
	if duration <= 0 {
		return errors.New("-duration must be positive")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	b, err := load.NewREAPI(o)
	if err != nil {
		return err
	}
	defer b.Close()
	if err := b.Ping(ctx); err != nil {
		return err
	}
	if pid > 0 {
		if _, _, err := peakRSS(pid); err != nil {
			return err
		}
	}

	fmt.Printf("REAPI bench against %s, instance %q, %s per run, %d connection(s)\n\n", o.Addr, o.Instance, duration, o.Conns)
	const row = "%-18s %5s %9s %9s %10s %9s %10s %10s %7s\n"
	fmt.Printf(row, "scenario", "conc", "requests", "req/s", "items/s", "MiB/s", "p50", "p99", "errors")
	for _, name := range scenarios {
		for _, c := range concurrency {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			newOp, err := b.Setup(ctx, name)
			if err != nil {
				return fmt.Errorf("%s: set up: %w", name, err)
			}
			r := load.Run(ctx, duration, c, newOp)
			fmt.Printf(row, name, strconv.Itoa(c), strconv.FormatInt(r.Requests, 10),
				fmt.Sprintf("%.0f", r.PerSecond(r.Requests)), fmt.Sprintf("%.0f", r.PerSecond(r.Items)),
				fmt.Sprintf("%.1f", r.PerSecond(r.Bytes)/(1<<20)),
				load.FmtDur(r.Percentile(0.50)), load.FmtDur(r.Percentile(0.99)), strconv.FormatInt(r.Errors, 10))
			if r.FirstErr != nil {
				fmt.Printf("  first error: %v\n", r.FirstErr)
			}
		}
	}
	if pid > 0 {
		hwm, rss, err := peakRSS(pid)
		if err != nil {
			return err
		}
		fmt.Printf("\nserver PID %d: peak RSS (VmHWM) %s, current RSS %s\n", pid, hwm, rss)
	}
	return nil
}

// peakRSS reads VmHWM and VmRSS of a process.
func peakRSS(pid int) (hwm, rss string, err error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", "", fmt.Errorf("read the server's memory use (-pid %d): %w", pid, err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
	}
	if hwm == "" {
		return "", "", fmt.Errorf("no VmHWM in /proc/%d/status", pid)
	}
	return hwm, rss, nil
}
