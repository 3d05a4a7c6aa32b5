package harness

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of the harness's waits. They are generous because a race-instrumented binary on a
// shared 2-core machine is slow; a healthy node needs a fraction of each.
const (
	readyTimeout = 60 * time.Second // start (or restart after a crash) until GET /up is 200
	stopTimeout  = 40 * time.Second // SIGTERM until exit; kura drains for at most 25 s
	killTimeout  = 15 * time.Second // SIGKILL until the kernel has reaped the process
	pollInterval = 50 * time.Millisecond
	logTailLines = 300 // lines of a node's log printed when its test fails
	startRetries = 3   // fresh ports tried when a port was taken between probe and bind
)

// NodeOptions configure one kura process. Zero values pick sensible test defaults.
type NodeOptions struct {
	// Name is KURA_NODE_NAME (default "node-<index>").
	Name string
	// TenantID is KURA_TENANT_ID (default "default", kura's own default).
	TenantID string
	// Region is KURA_REGION (default "local").
	Region string
	// Peers are seed addresses for KURA_PEERS (gossip host:port); StartCluster fills them.
	Peers []string
	// Env adds or overrides KURA_* variables, e.g. {"KURA_MAX_KEYVALUE_BYTES": "4096"}.
	Env map[string]string
	// DataDir is KURA_DATA_DIR (default: a fresh directory owned by the test).
	DataDir string
	// ClientTLS, when set, is how the harness talks to a node serving public TLS
	// (KURA_PUBLIC_TLS_* in Env): its URL is https and its client trusts this configuration.
	ClientTLS *tls.Config
	// Host is the address every listener binds to and every URL names (KURA_BIND_ADDRESS;
	// default 127.0.0.1). Nodes on distinct 127.0.0.x addresses can be told apart by a
	// packet filter, which is how partitions are made.
	Host string
	// Wrapper runs the node through another command, e.g. {"ip", "netns", "exec", "ns1"}.
	Wrapper []string
	// Dial, when set, is how the harness's HTTP clients reach the node (a node inside a
	// network namespace is not reachable from the test's own).
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// Binary runs this kura executable instead of the one Main built (an older release).
	Binary string
	// GID, when non-zero, runs the process with this group id (and no supplementary groups),
	// keeping the test's user id. A packet filter's owner match (iptables -m owner
	// --gid-owner) can then tell one node's packets from another's: on loopback a node's
	// outgoing TCP connections leave from 127.0.0.1 whatever address it binds, so the
	// source address cannot. Setting a group id needs root.
	GID uint32
}

// Node is one kura process under test, with its own ports and data directory. Its ports and
// data directory stay the same across Restart, as a real node's would.
type Node struct {
	t    testing.TB
	opts NodeOptions

	Name    string
	Dir     string // holds data/ and kura.log
	DataDir string

	HTTPPort, GRPCPort, GossipPort, InternalPort int

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when cmd has been reaped
	exitErr error         // cmd.Wait's result, valid once done is closed
	starts  int

	transport *http.Transport // see sharedTransport; nil until first needed
}

// URL is the node's public HTTP base URL (KURA_NODE_URL), without a trailing slash.
func (n *Node) URL() string {
	if n.opts.ClientTLS != nil {
		return "https://" + n.HTTPAddr()
	}
	return "http://" + n.HTTPAddr()
}

// Client is an HTTP client for the node's public API (TLS- and Dial-aware), with timeout.
func (n *Node) Client(timeout time.Duration) *http.Client {
	if n.opts.ClientTLS == nil && n.opts.Dial == nil {
		return &http.Client{Timeout: timeout}
	}
	return &http.Client{Timeout: timeout, Transport: n.sharedTransport()}
}

// sharedTransport is the node's one TLS- or Dial-aware transport. One per node, not per
// Client call: a fresh transport per call would keep every polled connection idle and open
// (and its goroutines alive) until the node stops.
func (n *Node) sharedTransport() *http.Transport {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.transport == nil {
		n.transport = &http.Transport{TLSClientConfig: n.opts.ClientTLS, DialContext: n.opts.Dial}
	}
	return n.transport
}

// Options are the options the node was started with (Peers filled in by StartCluster).
func (n *Node) Options() NodeOptions { return n.opts }

// SetBinary makes the next Restart run another kura executable ("" for the built one), as
// an operator upgrading or rolling back a node would.
func (n *Node) SetBinary(path string) { n.opts.Binary = path }

// SetEnv changes one KURA_* variable for the next Restart.
func (n *Node) SetEnv(key, value string) {
	env := make(map[string]string, len(n.opts.Env)+1)
	for k, v := range n.opts.Env {
		env[k] = v
	}
	env[key] = value
	n.opts.Env = env
}

// UnsetEnv removes KURA_* variables from the next Restart's settings.
func (n *Node) UnsetEnv(keys ...string) {
	env := make(map[string]string, len(n.opts.Env))
	for k, v := range n.opts.Env {
		env[k] = v
	}
	for _, k := range keys {
		delete(env, k)
	}
	n.opts.Env = env
}

// SetPeers replaces the node's seed addresses (KURA_PEERS) for the next Restart.
func (n *Node) SetPeers(peers []string) { n.opts.Peers = append([]string(nil), peers...) }

// Prepare makes a node with its ports and data directory chosen but no process started: for
// tests that run kura themselves with Environ (a second process on a locked directory).
func Prepare(t testing.TB, opts NodeOptions, index int) *Node {
	t.Helper()
	n := newNode(t, opts, index)
	n.allocatePorts()
	return n
}

// Environ is the environment the node's process runs with.
func (n *Node) Environ() []string { return n.env() }

// Pid is the running process's id (0 when it is not running).
func (n *Node) Pid() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.exited() {
		return 0
	}
	return n.cmd.Process.Pid
}

// Signal sends sig to the running process without waiting (SIGSTOP/SIGCONT freeze and thaw).
func (n *Node) Signal(sig syscall.Signal) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil || n.exited() {
		return fmt.Errorf("%s is not running", n.Name)
	}
	return n.cmd.Process.Signal(sig)
}

// LogTail returns the last lines of the node's log.
func (n *Node) LogTail(lines int) string { return n.logTail(lines) }

// HTTPAddr is host:port of the public HTTP API.
func (n *Node) HTTPAddr() string { return n.addr(n.HTTPPort) }

// GRPCAddr is host:port of the REAPI gRPC listener (for grpc://… remote caches).
func (n *Node) GRPCAddr() string { return n.addr(n.GRPCPort) }

// GossipAddr is host:port of the memberlist listener (what KURA_PEERS names).
func (n *Node) GossipAddr() string { return n.addr(n.GossipPort) }

// InternalAddr is host:port of the internal gRPC plane.
func (n *Node) InternalAddr() string { return n.addr(n.InternalPort) }

// LogPath is the file that receives the node's stdout and stderr across restarts.
func (n *Node) LogPath() string { return filepath.Join(n.Dir, "kura.log") }

func (n *Node) addr(port int) string { return net.JoinHostPort(n.opts.Host, strconv.Itoa(port)) }

// StartNode starts one node with a fresh data directory and waits until it is ready. The node
// is stopped gracefully (and its log printed if the test failed) when the test ends.
func StartNode(t testing.TB, opts NodeOptions) *Node {
	t.Helper()
	n := newNode(t, opts, 0)
	n.startFresh()
	return n
}

// StartCluster starts n nodes, each seeded with every other node's gossip address, and waits
// until each one answers /up. It does not wait for membership to converge: tests that need
// a converged ring poll /up for it (see Node.Up).
func StartCluster(t testing.TB, n int, configure func(i int, o *NodeOptions)) []*Node {
	t.Helper()
	nodes := make([]*Node, n)
	used := map[int]bool{}
	for i := range nodes {
		var o NodeOptions
		if configure != nil {
			configure(i, &o)
		}
		nodes[i] = newNode(t, o, i)
		// Each node's probes are released before the next node's, so the kernel may hand a
		// port out twice: the cluster's ports are kept distinct here.
		nodes[i].allocatePortsAvoiding(used)
	}
	for i, node := range nodes {
		if len(node.opts.Peers) == 0 {
			for j, other := range nodes {
				if j != i {
					node.opts.Peers = append(node.opts.Peers, other.GossipAddr())
				}
			}
		}
	}
	for _, node := range nodes {
		node.startFresh()
	}
	return nodes
}

func newNode(t testing.TB, opts NodeOptions, index int) *Node {
	t.Helper()
	RequireKura(t)
	if opts.Name == "" {
		opts.Name = fmt.Sprintf("node-%d", index)
	}
	if opts.TenantID == "" {
		opts.TenantID = "default"
	}
	if opts.Region == "" {
		opts.Region = "local"
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	dir := t.TempDir()
	n := &Node{t: t, opts: opts, Name: opts.Name, Dir: dir, DataDir: opts.DataDir}
	if n.DataDir == "" {
		n.DataDir = filepath.Join(dir, "data")
	}
	t.Cleanup(n.cleanup)
	return n
}

// allocatePorts picks four distinct free loopback ports (the gossip one free for UDP too).
func (n *Node) allocatePorts() { n.allocatePortsAvoiding(nil) }

// allocatePortsAvoiding is allocatePorts with none of the ports in used (which it extends).
func (n *Node) allocatePortsAvoiding(used map[int]bool) {
	n.t.Helper()
	for attempt := 0; ; attempt++ {
		ports, err := FreePorts(n.opts.Host, 4)
		if err != nil {
			n.t.Fatalf("allocate ports for %s: %v", n.Name, err)
		}
		clash := false
		for _, p := range ports {
			clash = clash || used[p]
		}
		if clash && attempt < 100 {
			continue
		}
		for _, p := range ports {
			if used != nil {
				used[p] = true
			}
		}
		n.HTTPPort, n.GRPCPort, n.GossipPort, n.InternalPort = ports[0], ports[1], ports[2], ports[3]
		return
	}
}

// startFresh is the first start: when another process grabbed a probed port before kura
// bound it, it retries on new ports rather than failing the test.
func (n *Node) startFresh() {
	n.t.Helper()
	for attempt := 1; ; attempt++ {
		if n.HTTPPort == 0 {
			n.allocatePorts()
		}
		err := n.start()
		if err == nil {
			return
		}
		if attempt < startRetries && errors.Is(err, errPortTaken) {
			n.t.Logf("%s: a port was taken before kura bound it; retrying on new ports", n.Name)
			n.HTTPPort = 0
			continue
		}
		n.t.Fatalf("start %s: %v", n.Name, err)
	}
}

var errPortTaken = errors.New("address already in use")

// env is the process environment: the test's own minus any KURA_* (so the developer's shell
// cannot leak settings in), plus this node's settings.
func (n *Node) env() []string {
	env := WithoutKuraEnv()
	vars := map[string]string{
		"KURA_BIND_ADDRESS":  n.opts.Host,
		"KURA_PORT":          strconv.Itoa(n.HTTPPort),
		"KURA_GRPC_PORT":     strconv.Itoa(n.GRPCPort),
		"KURA_GOSSIP_PORT":   strconv.Itoa(n.GossipPort),
		"KURA_INTERNAL_PORT": strconv.Itoa(n.InternalPort),
		"KURA_DATA_DIR":      n.DataDir,
		"KURA_NODE_NAME":     n.Name,
		"KURA_NODE_URL":      n.URL(),
		"KURA_TENANT_ID":     n.opts.TenantID,
		"KURA_REGION":        n.opts.Region,
		"KURA_LOG_FORMAT":    "text",
	}
	// A race-enabled binary sleeps a second at exit (the race runtime's atexit_sleep_ms) for
	// reports from other threads; without this every exit time measured here is a second
	// longer than the node's.
	if os.Getenv("GORACE") == "" {
		env = append(env, "GORACE=atexit_sleep_ms=0")
	}
	if len(n.opts.Peers) > 0 {
		vars["KURA_PEERS"] = strings.Join(n.opts.Peers, ",")
	}
	for k, v := range n.opts.Env {
		vars[k] = v
	}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// start launches the process and waits for /up. It returns errPortTaken (wrapped) when kura
// exited because a listener could not bind.
func (n *Node) start() error {
	n.mu.Lock()
	if n.cmd != nil && !n.exited() {
		n.mu.Unlock()
		return fmt.Errorf("%s is already running", n.Name)
	}
	n.starts++
	starts := n.starts
	n.mu.Unlock()

	logFile, err := os.OpenFile(n.LogPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open the log file: %w", err)
	}
	fmt.Fprintf(logFile, "=== e2e harness: start #%d of %s at %s (http %d, grpc %d, gossip %d, internal %d)\n",
		starts, n.Name, time.Now().Format(time.RFC3339Nano), n.HTTPPort, n.GRPCPort, n.GossipPort, n.InternalPort)

	bin := kuraBinary
	if n.opts.Binary != "" {
		bin = n.opts.Binary
	}
	argv := append(append([]string(nil), n.opts.Wrapper...), bin)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = n.Dir
	cmd.Env = n.env()
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Pdeathsig: a crashed or interrupted test binary must not leave kura running.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if n.opts.GID != 0 {
		// Go sets the parent-death signal after changing credentials, so it survives this
		// (a wrapper such as setpriv would clear it).
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(os.Getuid()), Gid: n.opts.GID, Groups: []uint32{}}
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("exec %s: %w", strings.Join(argv, " "), err)
	}
	done := make(chan struct{})
	n.mu.Lock()
	n.cmd, n.done, n.exitErr = cmd, done, nil
	n.mu.Unlock()
	// The reaper is owned by the node: it ends when the process does, which Stop, Kill or
	// the test cleanup always bring about.
	go func() {
		err := cmd.Wait()
		logFile.Close()
		n.mu.Lock()
		n.exitErr = err
		n.mu.Unlock()
		close(done)
	}()
	return n.waitReady()
}

// waitReady polls GET /up until it answers 200 with status "ok", the process exits, or the
// deadline passes.
func (n *Node) waitReady() error {
	deadline := time.Now().Add(readyTimeout)
	client := n.Client(2 * time.Second)
	var last string
	for {
		select {
		case <-n.done:
			n.mu.Lock()
			err := n.exitErr
			n.mu.Unlock()
			tail := n.logTail(40)
			if strings.Contains(tail, "address already in use") {
				return fmt.Errorf("kura exited during startup (%v): %w\n%s", err, errPortTaken, tail)
			}
			return fmt.Errorf("kura exited during startup (%v); log tail:\n%s", err, tail)
		default:
		}
		resp, err := client.Get(n.URL() + "/up")
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				var up struct {
					Status string `json:"status"`
					Node   string `json:"node"`
				}
				// Another node answering on this port (one that took it first) is not this
				// node being ready: this one exits on the taken port and is retried.
				if json.Unmarshal(body, &up) == nil && up.Status == "ok" && up.Node == n.Name {
					return nil
				}
				if up.Node != n.Name {
					last = fmt.Sprintf("GET /up answered by node %q, not %s", up.Node, n.Name)
					if time.Now().After(deadline) {
						return fmt.Errorf("not ready after %s (last: %s); log tail:\n%s", readyTimeout, last, n.logTail(40))
					}
					time.Sleep(pollInterval)
					continue
				}
			}
			last = fmt.Sprintf("GET /up: %d %s", resp.StatusCode, bytes.TrimSpace(body))
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %s (last: %s); log tail:\n%s", readyTimeout, last, n.logTail(40))
		}
		time.Sleep(pollInterval)
	}
}

// exited reports whether the current process has been reaped. Callers hold n.mu.
func (n *Node) exited() bool {
	if n.done == nil {
		return true
	}
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// Running reports whether the node's process is alive.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cmd != nil && !n.exited()
}

// Stop sends SIGTERM and waits for a graceful exit, which must be status 0. A node that does
// not exit in time is killed and the test fails.
func (n *Node) Stop() {
	n.t.Helper()
	if err := n.signalAndWait(syscall.SIGTERM, stopTimeout); err != nil {
		n.t.Errorf("stop %s: %v", n.Name, err)
		n.Kill()
		return
	}
	n.mu.Lock()
	err := n.exitErr
	n.mu.Unlock()
	if err != nil {
		n.t.Errorf("stop %s: graceful shutdown after SIGTERM ended with %v (want exit status 0); log tail:\n%s",
			n.Name, err, n.logTail(40))
	}
}

// Kill sends SIGKILL (a crash: no drain, no flush) and waits until the process is reaped, so
// the data directory's lock is free for Restart.
func (n *Node) Kill() {
	n.t.Helper()
	if err := n.signalAndWait(syscall.SIGKILL, killTimeout); err != nil {
		n.t.Fatalf("kill %s: %v", n.Name, err)
	}
}

// Restart starts the node again on the same ports and data directory, waits for /up and
// returns how long that took (recovery included).
func (n *Node) Restart() time.Duration {
	n.t.Helper()
	if n.Running() {
		n.t.Fatalf("restart %s: it is still running; Stop or Kill it first", n.Name)
	}
	start := time.Now()
	if err := n.start(); err != nil {
		n.t.Fatalf("restart %s: %v", n.Name, err)
	}
	took := time.Since(start).Round(time.Millisecond)
	n.t.Logf("%s restarted on its data directory, ready in %s", n.Name, took)
	return took
}

func (n *Node) signalAndWait(sig syscall.Signal, timeout time.Duration) error {
	n.mu.Lock()
	cmd, done := n.cmd, n.done
	running := cmd != nil && !n.exited()
	n.mu.Unlock()
	if !running {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("send %v: %w", sig, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("no exit within %s of %v; killed. Log tail:\n%s", timeout, sig, n.logTail(40))
	}
}

// cleanup stops a still-running node and, when the test failed, prints the node's log. It
// also fails the test if the race detector reported anything in the server.
func (n *Node) cleanup() {
	n.mu.Lock()
	if n.transport != nil {
		n.transport.CloseIdleConnections()
	}
	n.mu.Unlock()
	if n.Running() {
		if n.t.Failed() {
			_ = n.signalAndWait(syscall.SIGKILL, killTimeout)
		} else {
			n.Stop()
		}
	}
	if log, err := os.ReadFile(n.LogPath()); err == nil && bytes.Contains(log, []byte("WARNING: DATA RACE")) {
		n.t.Errorf("%s: the race detector reported a data race in kura; log tail:\n%s", n.Name, n.logTail(logTailLines))
		return
	}
	if n.t.Failed() {
		n.t.Logf("%s log (%s), last %d lines:\n%s", n.Name, n.LogPath(), logTailLines, n.logTail(logTailLines))
	}
}

// logTail returns the last lines of the node's log.
func (n *Node) logTail(lines int) string {
	f, err := os.Open(n.LogPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	ring := make([]string, 0, lines)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		if len(ring) == lines {
			ring = ring[1:]
		}
		ring = append(ring, sc.Text())
	}
	return strings.Join(ring, "\n")
}

// Up fetches and decodes GET /up.
func (n *Node) Up(ctx context.Context) (UpStatus, error) {
	var up UpStatus
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.URL()+"/up", nil)
	if err != nil {
		return up, err
	}
	resp, err := n.Client(30 * time.Second).Do(req)
	if err != nil {
		return up, fmt.Errorf("GET %s/up: %w", n.URL(), err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return up, fmt.Errorf("GET %s/up: status %d", n.URL(), resp.StatusCode)
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&up); err != nil {
		return up, fmt.Errorf("decode %s/up: %w", n.URL(), err)
	}
	return up, nil
}

// UpStatus is the JSON document of GET /up (docs/contract.md §3).
type UpStatus struct {
	Status         string   `json:"status"`
	TenantID       string   `json:"tenant_id"`
	Region         string   `json:"region"`
	Node           string   `json:"node"`
	NodeURL        string   `json:"node_url"`
	ConnectedNodes []string `json:"connected_nodes"`
	RingMembers    int      `json:"ring_members"`
	RingNames      []string `json:"ring_member_names"`
	Members        []string `json:"members"`
	Nodes          []string `json:"nodes"`
	State          string   `json:"state"`
}

// FreePorts returns k distinct ports on host that were free for TCP and UDP at the time of
// the call. All probes are held open together so the kernel cannot hand out one port twice.
// (A node inside a network namespace gets ports probed in the test's namespace: they are
// free there with overwhelming likelihood, and a clash is retried like any taken port.)
func FreePorts(host string, k int) ([]int, error) {
	var closers []io.Closer
	defer func() {
		for _, c := range closers {
			c.Close()
		}
	}()
	ports := make([]int, 0, k)
	for len(ports) < k {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("probe a TCP port: %w", err)
		}
		closers = append(closers, ln)
		port := ln.Addr().(*net.TCPAddr).Port
		// memberlist binds UDP on the same port number as TCP.
		pc, err := net.ListenPacket("udp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			continue // UDP twin is taken; this TCP probe stays held so it is not returned again
		}
		closers = append(closers, pc)
		ports = append(ports, port)
	}
	return ports, nil
}

// PollUntil calls cond every pollInterval until it returns true or timeout passes, then fails
// the test with what the last call reported.
func PollUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, detail := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %s (last: %s)", what, timeout, detail)
		}
		time.Sleep(pollInterval)
	}
}
