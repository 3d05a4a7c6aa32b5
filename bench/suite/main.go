// Command suite is Kura's benchmark suite: it starts the servers itself (a Kura node, and
// bazel-remote when BAZEL_REMOTE_BIN is set), runs the same load against each, one server at
// a time, and reports per workload the throughput, p50/p99 latency, server CPU per operation
// and peak RSS, next to this machine's limits, which it measures first. With both servers it
// adds the ratio Kura/bazel-remote per row (> 1: Kura is better).
//
//	go run ./bench/suite [-quick] [-duration 10s] [-json out.json] [-groups reapi,http,replication,restart]
//
// See bench/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

type options struct {
	kuraBin        string // KURA_BIN, else built from ./cmd/kura
	bazelRemoteBin string // BAZEL_REMOTE_BIN, optional
	duration       time.Duration
	limitsFor      time.Duration
	quick          bool
	restartObjects int
	batch          int
	groups         []string
	jsonPath       string
	workdir        string
	keep           bool
	pprof          string            // KURA_PPROF_ADDRESS of the benchmarked single node, and of the replication pair's receiver
	kuraEnv        map[string]string // -kura-env: settings of the benchmarked single node
	log            io.Writer
}

var allGroups = []string{"reapi", "http", "replication", "restart"}

func main() {
	o := options{log: os.Stderr}
	var groups string
	var duration time.Duration
	flag.DurationVar(&duration, "duration", 0, "how long each workload starts new requests (default 10s, 1s with -quick)")
	flag.BoolVar(&o.quick, "quick", false, "smoke test: 1 s per workload, 2,000 objects for the restart, short limit probes")
	flag.IntVar(&o.restartObjects, "restart-objects", 0, "objects stored before the restart workload (default 100000, 2000 with -quick; the target is 1000000)")
	flag.IntVar(&o.batch, "batch", 1, "blobs per BatchUpdateBlobs/BatchReadBlobs request in the REAPI rows, and per write on A in the 1 KiB replication row")
	flag.StringVar(&groups, "groups", strings.Join(allGroups, ","), "comma-separated workload groups: "+strings.Join(allGroups, ", "))
	flag.StringVar(&o.jsonPath, "json", "", "also write the report as JSON to this file")
	flag.StringVar(&o.workdir, "workdir", "", "directory for data directories and logs (default: a fresh temporary directory, removed afterwards)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory (data and server logs) afterwards")
	flag.StringVar(&o.pprof, "pprof", "", "KURA_PPROF_ADDRESS for the benchmarked Kura node, and for the receiving node (B) of the replication group (e.g. 127.0.0.1:6060), to profile it under the load")
	var kuraEnvFlag string
	flag.StringVar(&kuraEnvFlag, "kura-env", "", "comma-separated KURA_*=value settings for the benchmarked Kura node (the shell's KURA_* variables are never passed), e.g. KURA_RESUMABLE_UPLOAD_MIN_BYTES=off")
	flag.Parse()
	o.duration = duration
	if kuraEnvFlag != "" {
		o.kuraEnv = map[string]string{}
		for _, kv := range strings.Split(kuraEnvFlag, ",") {
			k, v, ok := strings.Cut(kv, "=")
			if !ok || !strings.HasPrefix(k, "KURA_") {
				fmt.Fprintf(os.Stderr, "bench suite: -kura-env: %q is not KURA_NAME=value\n", kv)
				os.Exit(2)
			}
			o.kuraEnv[k] = v
		}
	}
	o.groups = strings.Split(groups, ",")
	o.kuraBin = os.Getenv("KURA_BIN")
	o.bazelRemoteBin = os.Getenv("BAZEL_REMOTE_BIN")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	rep, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench suite:", err)
		os.Exit(1)
	}
	rep.markdown(os.Stdout)
}

// defaults fills what the flags left unset.
func (o *options) defaults() error {
	if o.duration <= 0 {
		o.duration = 10 * time.Second
		if o.quick {
			o.duration = time.Second
		}
	}
	o.limitsFor = min(o.duration, 2*time.Second)
	if o.quick {
		o.limitsFor = 300 * time.Millisecond
	}
	if o.restartObjects <= 0 {
		o.restartObjects = 100_000
		if o.quick {
			o.restartObjects = 2_000
		}
	}
	if o.batch < 1 {
		return errors.New("-batch must be positive")
	}
	for _, g := range o.groups {
		if !slices.Contains(allGroups, g) {
			return fmt.Errorf("-groups: unknown group %q (known: %s)", g, strings.Join(allGroups, ", "))
		}
	}
	if o.log == nil {
		o.log = io.Discard
	}
	return nil
}

// cleanup removes a finished server's data directory (unless -keep): the 64 MiB workloads
// leave gigabytes behind, and the next server should not run on a fuller disk.
func (o *options) cleanup(dataDir string) error {
	if o.keep {
		return nil
	}
	return os.RemoveAll(dataDir)
}

func (o *options) has(group string) bool { return slices.Contains(o.groups, group) }

// run runs the suite and returns its report (also written as JSON when o.jsonPath is set).
func run(ctx context.Context, o options) (*Report, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	work := o.workdir
	if work == "" {
		var err error
		if work, err = os.MkdirTemp("", "kura-bench-"); err != nil {
			return nil, err
		}
		if !o.keep {
			defer os.RemoveAll(work)
		}
	} else if err := os.MkdirAll(work, 0o755); err != nil {
		return nil, err
	}
	if o.kuraBin == "" {
		bin := filepath.Join(work, "kura")
		fmt.Fprintf(o.log, "building ./cmd/kura into %s\n", bin)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kuracache/kura/cmd/kura")
		cmd.Stdout, cmd.Stderr = o.log, o.log
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("build kura (or set KURA_BIN): %w", err)
		}
		o.kuraBin = bin
	}

	rep := &Report{Started: time.Now().UTC(), Quick: o.quick, Duration: o.duration.String()}
	fmt.Fprintf(o.log, "measuring the machine's limits in %s\n", work)
	var err error
	if rep.Machine, err = measureLimits(work, o.limitsFor); err != nil {
		return nil, err
	}

	type target struct{ name, bin string }
	targets := []target{{"kura", o.kuraBin}}
	if o.bazelRemoteBin != "" {
		targets = append(targets, target{"bazel-remote", o.bazelRemoteBin})
	}
	for i, t := range targets {
		sr := ServerReport{Name: t.name, Binary: t.bin}
		add := func(r Row) {
			r.OfLimit = rep.Machine.ofLimit(r)
			if r.Primary == primarySeconds {
				fmt.Fprintf(o.log, "%s: %s: %.2f s\n", t.name, r.Workload, r.Seconds)
			} else {
				fmt.Fprintf(o.log, "%s: %s: %s ops/s, %.1f MiB/s, p50 %s, p99 %s, CPU/op %s, errors %d\n", t.name, r.Workload,
					num(r.OpsPerS), r.MiBPerS, fmtMs(r.P50Ms), fmtMs(r.P99Ms), fmtUs(r.CPUPerOpUs), r.Errors)
			}
			sr.Rows = append(sr.Rows, r)
			sr.PeakRSSMiB = max(sr.PeakRSSMiB, r.PeakRSSMiB)
		}
		if o.has("reapi") || o.has("http") {
			ports, err := freePorts(4)
			if err != nil {
				return nil, err
			}
			dir := filepath.Join(work, fmt.Sprintf("%d-%s", i, t.name))
			var srv *server
			if t.name == "kura" {
				extra := maps.Clone(o.kuraEnv)
				if extra == nil {
					extra = map[string]string{}
				}
				if o.pprof != "" {
					extra["KURA_PPROF_ADDRESS"] = o.pprof
				}
				srv = newKura("kura", t.bin, dir, ports, nil, extra)
			} else {
				srv = newBazelRemote(t.bin, dir, ports, 50)
			}
			fmt.Fprintf(o.log, "starting %s (log %s)\n", t.name, srv.logPath)
			if _, _, err := srv.start(ctx, 60*time.Second); err != nil {
				return nil, err
			}
			err = func() error {
				defer srv.close()
				if o.has("reapi") {
					if err := runREAPI(ctx, o, srv, add); err != nil {
						return err
					}
				}
				if o.has("http") {
					if err := runHTTP(ctx, o, srv, t.name != "kura", add); err != nil {
						return err
					}
				}
				if err := srv.stop(30 * time.Second); err != nil {
					return err
				}
				return o.cleanup(srv.dataDir)
			}()
			if err != nil {
				return nil, err
			}
		}
		peak := sr.PeakRSSMiB
		if t.name == "kura" {
			if o.has("replication") {
				if err := runReplication(ctx, o, filepath.Join(work, "replication"), add); err != nil {
					return nil, fmt.Errorf("replication: %w", err)
				}
			}
			if o.has("restart") {
				if err := runRestart(ctx, o, filepath.Join(work, "restart"), add); err != nil {
					return nil, fmt.Errorf("restart: %w", err)
				}
			}
		}
		sr.PeakRSSMiB = peak // over the REAPI and HTTP workloads, which both servers run
		rep.Servers = append(rep.Servers, sr)
	}
	rep.compare()
	if o.jsonPath != "" {
		data, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(o.jsonPath, append(data, '\n'), 0o644); err != nil {
			return nil, err
		}
	}
	return rep, nil
}
