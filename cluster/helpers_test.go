package cluster

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

// memberlist's Shutdown does not wait for a probe already in flight: that goroutine waits out
// its ack timeout (at most the probe interval) and then returns by itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}

// testTuning shrinks memberlist's LAN preset about fivefold: fast enough for tests, slow
// enough that -race on two shared cores does not make healthy nodes look dead.
var testTuning = Tuning{
	ProbeInterval:    200 * time.Millisecond,
	ProbeTimeout:     100 * time.Millisecond,
	GossipInterval:   30 * time.Millisecond,
	PushPullInterval: 500 * time.Millisecond,
	SuspicionMult:    2,
}

const (
	testRejoin   = 300 * time.Millisecond
	waitDeadline = 20 * time.Second
)

// testLogger discards logs unless KURA_TEST_LOG is set (then debug to stderr): memberlist
// goroutines may still log briefly after a test ends, where t.Log would panic.
func testLogger(name string) *slog.Logger {
	if os.Getenv("KURA_TEST_LOG") == "" {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test_node", name)
}

func testConfig(name, region string) Config {
	return Config{
		Self: Member{
			Name: name, Region: region, Tenant: "acme",
			URL: "http://" + name + ".test:4000", InternalAddr: "127.0.0.1:" + strconv.Itoa(7000+len(name)),
		},
		BindAddr:       "127.0.0.1",
		RejoinInterval: testRejoin,
		Tuning:         testTuning,
		Logger:         testLogger(name),
	}
}

// node is a running Cluster plus what a test needs to stop and inspect it.
type node struct {
	c        *Cluster
	reg      *prometheus.Registry
	cancel   context.CancelFunc
	done     chan error
	stopOnce sync.Once
}

func startNode(t *testing.T, cfg Config) *node {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Self.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{c: c, reg: reg, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- c.Run(ctx) }()
	t.Cleanup(func() { n.stop(t) })
	return n
}

// stop cancels Run and waits (bounded) for it to return.
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.stopOnce.Do(func() {
		n.cancel()
		select {
		case err := <-n.done:
			if err != nil {
				t.Errorf("Run(%s) returned %v", n.c.Self().Name, err)
			}
		case <-time.After(waitDeadline):
			t.Errorf("Run(%s) did not return after cancel", n.c.Self().Name)
		}
	})
}

func (n *node) name() string { return n.c.Self().Name }
func (n *node) addr() string { return n.c.Self().GossipAddr }

func (n *node) counter(cv *prometheus.CounterVec, label string) float64 {
	return testutil.ToFloat64(cv.WithLabelValues(label))
}

func names(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Name
	}
	return out
}

// sameView checks that every node sees exactly the expected members, with the metadata
// each of them advertises about itself.
func sameView(nodes []*node, expect ...*node) error {
	var want []Member
	for _, n := range expect {
		want = append(want, n.c.Self())
	}
	sortMembers(want)
	for _, n := range nodes {
		got := n.c.Members()
		if !slices.Equal(got, want) {
			return fmt.Errorf("%s sees %v, want %v", n.name(), names(got), names(want))
		}
	}
	return nil
}

// freePort returns a port that is currently free for both TCP and UDP on every given IP.
func freePort(t *testing.T, ips ...string) int {
	t.Helper()
	for range 50 {
		l, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
		if err != nil {
			t.Fatalf("reserve a port: %v", err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		closers := []func() error{l.Close}
		ok := true
		for i, ip := range ips {
			if i > 0 {
				tl, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
				if err != nil {
					ok = false
					break
				}
				closers = append(closers, tl.Close)
			}
			ul, err := net.ListenPacket("udp", net.JoinHostPort(ip, strconv.Itoa(port)))
			if err != nil {
				ok = false
				break
			}
			closers = append(closers, ul.Close)
		}
		for _, c := range closers {
			_ = c()
		}
		if ok {
			return port
		}
	}
	t.Fatalf("no port free on %s", strings.Join(ips, ", "))
	return 0
}

// gauge reads kura_cluster_members{region} from a node's registry (0 when absent).
func membersGauge(t *testing.T, reg *prometheus.Registry, region string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "kura_cluster_members" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "region" && l.GetValue() == region {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return 0
}
