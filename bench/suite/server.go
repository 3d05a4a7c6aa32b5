package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// server is one server process the suite started: a Kura node or bazel-remote.
type server struct {
	name     string // "kura", "bazel-remote", "kura-a", …
	bin      string
	args     []string
	env      []string
	dataDir  string
	logPath  string
	httpAddr string
	grpcAddr string
	// Kura only.
	gossipAddr, internalAddr string
	readyPath                string // polled until 200 after a start

	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
	log    *os.File
	starts int
}

// freePorts reserves n distinct loopback ports (free for TCP, and for UDP too, which gossip
// needs) by binding them all at once and releasing them just before the server binds.
func freePorts(n int) ([]int, error) {
	var closers []func()
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	var ports []int
	for len(ports) < n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		closers = append(closers, func() { _ = ln.Close() })
		port := ln.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue // taken for UDP: try another
		}
		closers = append(closers, func() { _ = udp.Close() })
		ports = append(ports, port)
	}
	return ports, nil
}

func loopback(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// kuraEnv is the environment of a suite-started node: the suite's own minus every KURA_*
// variable (so the developer's shell cannot change what is measured), plus the node's own.
func kuraEnv(vars map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "KURA_") {
			env = append(env, kv)
		}
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// newKura prepares (does not start) a Kura node on fresh loopback ports with its data under
// dir. peers are gossip addresses of other nodes; extra adds KURA_* settings.
func newKura(name, bin, dir string, ports []int, peers []string, extra map[string]string) *server {
	s := &server{
		name: name, bin: bin, dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, name+".log"),
		httpAddr: loopback(ports[0]), grpcAddr: loopback(ports[1]), gossipAddr: loopback(ports[2]),
		internalAddr: loopback(ports[3]), readyPath: "/ready",
	}
	vars := map[string]string{
		"KURA_BIND_ADDRESS":  "127.0.0.1",
		"KURA_PORT":          strconv.Itoa(ports[0]),
		"KURA_GRPC_PORT":     strconv.Itoa(ports[1]),
		"KURA_GOSSIP_PORT":   strconv.Itoa(ports[2]),
		"KURA_INTERNAL_PORT": strconv.Itoa(ports[3]),
		"KURA_DATA_DIR":      s.dataDir,
		"KURA_NODE_NAME":     name,
		"KURA_NODE_URL":      "http://" + s.httpAddr,
		"KURA_LOG_FORMAT":    "text",
		// Per-request logging is off at info already; warn keeps the log to what went wrong.
		"KURA_LOG_LEVEL": "warn",
	}
	if len(peers) > 0 {
		vars["KURA_PEERS"] = strings.Join(peers, ",")
	}
	for k, v := range extra {
		vars[k] = v
	}
	s.env = kuraEnv(vars)
	return s
}

// newBazelRemote prepares bazel-remote with uncompressed storage (as Kura stores blobs) and
// without access logging (Kura logs no line per request either).
func newBazelRemote(bin, dir string, ports []int, maxSizeGiB int) *server {
	s := &server{
		name: "bazel-remote", bin: bin, dataDir: filepath.Join(dir, "data"), logPath: filepath.Join(dir, "bazel-remote.log"),
		httpAddr: loopback(ports[0]), grpcAddr: loopback(ports[1]), readyPath: "/status",
	}
	s.args = []string{
		"--dir", s.dataDir, "--max_size", strconv.Itoa(maxSizeGiB), "--storage_mode", "uncompressed",
		"--http_address", s.httpAddr, "--grpc_address", s.grpcAddr, "--access_log_level", "none",
	}
	s.env = os.Environ()
	return s
}

// start launches the process and returns how long it took until it answered /up (Kura; for
// bazel-remote the HTTP listener) and until readyPath answered 200.
func (s *server) start(ctx context.Context, timeout time.Duration) (up, ready time.Duration, err error) {
	if err := os.MkdirAll(s.dataDir, 0o755); err != nil {
		return 0, 0, err
	}
	if s.log == nil {
		if s.log, err = os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err != nil {
			return 0, 0, err
		}
	}
	s.starts++
	fmt.Fprintf(s.log, "=== bench suite: start #%d of %s at %s\n", s.starts, s.name, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(s.bin, s.args...)
	cmd.Env = s.env
	cmd.Stdout, cmd.Stderr = s.log, s.log
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, 0, fmt.Errorf("start %s (%s): %w", s.name, s.bin, err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func() { _ = cmd.Wait(); close(s.exited) }() // owned: ends with the process, which stop/kill end
	upPath := "/up"
	if s.readyPath == "/status" {
		upPath = "/status"
	}
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	poll := func(path string) (time.Duration, error) {
		for {
			select {
			case <-s.exited:
				return 0, fmt.Errorf("%s exited during startup (%s); log %s:\n%s", s.name, cmd.ProcessState, s.logPath, s.logTail())
			case <-ctx.Done():
				return 0, ctx.Err()
			default:
			}
			if time.Now().After(deadline) {
				return 0, fmt.Errorf("%s: %s did not answer 200 within %s; log %s:\n%s", s.name, path, timeout, s.logPath, s.logTail())
			}
			resp, err := client.Get("http://" + s.httpAddr + path)
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					return time.Since(t0), nil
				}
			}
			time.Sleep(2 * time.Millisecond) // polling a local process: the resolution of the figure
		}
	}
	if up, err = poll(upPath); err != nil {
		s.kill()
		return 0, 0, err
	}
	if ready, err = poll(s.readyPath); err != nil {
		s.kill()
		return 0, 0, err
	}
	return up, ready, nil
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// running reports whether the process is still alive.
func (s *server) running() bool {
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// stop ends the process with SIGTERM (a clean drain) and waits; after timeout it kills it.
func (s *server) stop(timeout time.Duration) error {
	if !s.running() {
		return nil
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
		return nil
	case <-time.After(timeout):
		s.kill()
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", s.name, timeout)
	}
}

// kill ends the process with SIGKILL and waits for it.
func (s *server) kill() {
	if !s.running() {
		return
	}
	_ = s.cmd.Process.Kill()
	<-s.exited
}

func (s *server) close() {
	s.kill()
	if s.log != nil {
		_ = s.log.Close()
		s.log = nil
	}
}

func (s *server) logTail() string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return err.Error()
	}
	if len(data) > 4000 {
		data = data[len(data)-4000:]
	}
	return string(data)
}

// procStats is a process's CPU time (user + system, all threads) and peak RSS.
type procStats struct {
	cpu    time.Duration
	peakKB int64 // VmHWM
}

// clockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100 on every Linux
// architecture Go supports (the kernel's CLOCKS_PER_SEC ABI constant).
const clockTick = 10 * time.Millisecond

func readProc(pid int) (procStats, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStats{}, err
	}
	// The command name (field 2) may hold spaces and parentheses: fields are counted after the
	// last ')'. utime and stime are fields 14 and 15, so the 12th and 13th after it.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return procStats{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 13 {
		return procStats{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return procStats{}, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	st := procStats{cpu: time.Duration(utime+stime) * clockTick}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStats{}, err
	}
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			st.peakKB, _ = strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		}
	}
	return st, nil
}
