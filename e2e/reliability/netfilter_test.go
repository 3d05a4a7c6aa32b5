package reliability

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
)

// Partitions and packet loss on loopback, with iptables.
//
// Each node of a network test binds its own 127.0.77.x address and runs with its own group
// id (harness.NodeOptions.GID). A rule names the sender by its group (-m owner --gid-owner)
// and the receiver by the address it listens on: the source address cannot name the sender,
// because on loopback a node's outgoing TCP connections leave from 127.0.0.1 whatever it
// binds (memberlist's and gRPC's dialers do not bind a local address). Every rule sits in a
// chain of the test's own, jumped to from OUTPUT and removed in t.Cleanup, and matches only
// the test's group ids, so other processes on the machine (other tests included) are never
// affected. tc netem is not available here; -m statistic --mode random is the packet-loss
// substitute.
//
// The test's own HTTP clients talk to the nodes from testClientIP, so a rule can spare them
// ("! -d testClientIP"): a node's answers to a peer go to 127.0.0.1, its answers to the test
// go there.

const (
	// testClientIP is the source address of the test's HTTP requests to network-test nodes.
	testClientIP = "127.0.77.2"
	// netfilterTimeout bounds one iptables call (it waits up to 5 s for the xtables lock).
	netfilterTimeout = 20 * time.Second
)

// requirePacketFilter returns the path of iptables, or skips the test: network tests need
// root (for the rules and the nodes' group ids) and iptables, which scripts/install-test-deps
// installs. In CI (CI set) a missing prerequisite fails the test instead, so the figures
// cannot silently disappear from the table. Call it before starting the nodes.
func requirePacketFilter(t testing.TB) string {
	t.Helper()
	harness.RequireKura(t)
	missing := func(why string) {
		t.Helper()
		if os.Getenv("CI") != "" {
			t.Fatalf("network fault tests need %s (scripts/install-test-deps installs iptables; the job must run as root)", why)
		}
		t.Skipf("network fault tests need %s; skipped outside CI", why)
	}
	if os.Geteuid() != 0 {
		missing("root (iptables rules and per-node group ids)")
	}
	path, err := exec.LookPath("iptables")
	if err != nil {
		if _, statErr := os.Stat("/usr/sbin/iptables"); statErr != nil {
			missing("iptables")
		}
		path = "/usr/sbin/iptables"
	}
	return path
}

// packetFilter is one test's iptables chain.
type packetFilter struct {
	t        testing.TB
	iptables string
	chain    string
}

// newPacketFilter creates the chain (after removing a leftover of a killed earlier run) and
// jumps to it from OUTPUT; t.Cleanup removes both. chain is at most 28 characters. Call it
// after starting the nodes: cleanups run last first, so the rules are gone before the nodes
// stop (a node stopping behind a partition would wait out its drain for the peers it cannot
// reach).
func newPacketFilter(t testing.TB, chain string) *packetFilter {
	t.Helper()
	f := &packetFilter{t: t, iptables: requirePacketFilter(t), chain: chain}
	f.remove()
	f.must("-N", chain)
	t.Cleanup(f.remove)
	f.must("-I", "OUTPUT", "1", "-j", chain)
	return f
}

func (f *packetFilter) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), netfilterTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, f.iptables, append([]string{"-w", "5"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

func (f *packetFilter) must(args ...string) string {
	f.t.Helper()
	out, err := f.run(args...)
	if err != nil {
		f.t.Fatalf("iptables %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// remove deletes every jump to the chain and the chain itself; absent ones are fine.
func (f *packetFilter) remove() {
	for range 10 {
		if _, err := f.run("-D", "OUTPUT", "-j", f.chain); err != nil {
			break
		}
	}
	if _, err := f.run("-F", f.chain); err == nil {
		if out, err := f.run("-X", f.chain); err != nil {
			f.t.Errorf("remove iptables chain %s: %v\n%s", f.chain, err, out)
		}
	}
}

func gidOf(n *harness.Node) string { return strconv.FormatUint(uint64(n.Options().GID), 10) }

// partition drops every packet between the two sides, both ways.
func (f *packetFilter) partition(one, other []*harness.Node) {
	f.t.Helper()
	for _, a := range one {
		for _, b := range other {
			f.must("-A", f.chain, "-m", "owner", "--gid-owner", gidOf(a), "-d", b.Options().Host, "-j", "DROP")
			f.must("-A", f.chain, "-m", "owner", "--gid-owner", gidOf(b), "-d", a.Options().Host, "-j", "DROP")
		}
	}
}

// blockTCP drops from's packets to to's TCP port (one plane of a node, the others untouched).
func (f *packetFilter) blockTCP(from, to *harness.Node, port int) {
	f.t.Helper()
	f.must("-A", f.chain, "-m", "owner", "--gid-owner", gidOf(from), "-d", to.Options().Host,
		"-p", "tcp", "--dport", strconv.Itoa(port), "-j", "DROP")
}

// lose drops each packet a node sends (to peers, not to the test's client) with probability p.
func (f *packetFilter) lose(nodes []*harness.Node, p float64) {
	f.t.Helper()
	for _, n := range nodes {
		// A rule without a target only counts: the packets the next one may drop.
		f.must("-A", f.chain, "-m", "owner", "--gid-owner", gidOf(n), "!", "-d", testClientIP,
			"-m", "comment", "--comment", sentComment)
		f.must("-A", f.chain, "-m", "owner", "--gid-owner", gidOf(n), "!", "-d", testClientIP,
			"-m", "statistic", "--mode", "random", "--probability", strconv.FormatFloat(p, 'f', -1, 64), "-j", "DROP")
	}
}

// heal removes every rule of the chain (the chain and its jump stay).
func (f *packetFilter) heal() {
	f.t.Helper()
	f.must("-F", f.chain)
}

// sentComment marks lose's counting rules.
const sentComment = "relnet-sent"

// counters returns the packets the chain's rules have dropped, and the packets lose's
// counting rules have seen, since the rules were added.
func (f *packetFilter) counters() (dropped, sent int64) {
	f.t.Helper()
	out := f.must("-L", f.chain, "-n", "-v", "-x")
	for _, line := range strings.Split(out, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 3 {
			continue
		}
		n, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			continue // the chain's header lines
		}
		switch {
		case fields[2] == "DROP":
			dropped += n
		case strings.Contains(line, "/* "+sentComment+" */"):
			sent += n
		}
	}
	return dropped, sent
}

// netNode configures node i of a network test: its own address 127.0.77.(base+i), its own
// group id gidBase+i, and the test's client bound to testClientIP.
func netNode(base int, gidBase uint32, env map[string]string) func(i int, o *harness.NodeOptions) {
	return func(i int, o *harness.NodeOptions) {
		o.Host = fmt.Sprintf("127.0.77.%d", base+i)
		o.GID = gidBase + uint32(i)
		o.Env = env
		dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(testClientIP)}}
		o.Dial = dialer.DialContext
	}
}
