package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kuracache/kura/internal/ratelimit"
)

func validMeta(t testing.TB) []byte {
	b, err := encodeMeta(Member{Name: "n1", Region: "eu", Tenant: "acme", URL: "http://n1:4000", InternalAddr: "10.0.0.1:7443"})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDecodeMeta(t *testing.T) {
	good := validMeta(t)
	got, err := decodeMeta("n1", good)
	if err != nil {
		t.Fatalf("decode valid metadata: %v", err)
	}
	want := Member{Name: "n1", Region: "eu", Tenant: "acme", URL: "http://n1:4000", InternalAddr: "10.0.0.1:7443"}
	if got != want {
		t.Fatalf("decoded %+v, want %+v", got, want)
	}
	// A later format version with extra fields still decodes (rolling upgrades).
	if _, err := decodeMeta("n1", []byte(`{"v":2,"name":"n1","region":"eu","tenant":"acme","internal":"h:1","zone":"z"}`)); err != nil {
		t.Errorf("newer version with extra field: %v", err)
	}

	for _, tc := range []struct {
		name, node, meta, wantErr string
	}{
		{"missing", "n1", ``, "no metadata"},
		{"not json", "n1", `hello`, "undecodable"},
		{"trailing data", "n1", `{"v":1,"name":"n1","region":"eu","tenant":"acme","internal":"h:1"}{}`, "trailing"},
		{"wrong types", "n1", `{"v":"1"}`, "undecodable"},
		{"no version", "n1", `{"name":"n1","region":"eu","tenant":"acme","internal":"h:1"}`, "version 0"},
		{"other name", "n2", `{"v":1,"name":"n1","region":"eu","tenant":"acme","internal":"h:1"}`, `names node "n1"`},
		{"no tenant", "n1", `{"v":1,"name":"n1","region":"eu","internal":"h:1"}`, "no tenant"},
		{"no region", "n1", `{"v":1,"name":"n1","tenant":"acme","internal":"h:1"}`, "no region"},
		{"no internal", "n1", `{"v":1,"name":"n1","region":"eu","tenant":"acme"}`, "internal address"},
		{"bad port", "n1", `{"v":1,"name":"n1","region":"eu","tenant":"acme","internal":"h:99999"}`, "internal address"},
		{"too big", "n1", `{"v":1,"name":"n1","pad":"` + strings.Repeat("x", memberlist.MetaMaxSize) + `"}`, "over the"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decodeMeta(tc.node, []byte(tc.meta))
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeMeta(f *testing.F) {
	f.Add("n1", validMeta(f))
	f.Add("n1", []byte(`{"v":1}`))
	f.Add("x", []byte(`{"v":9,"name":"x","region":"r","tenant":"t","internal":"[::1]:1"}`))
	f.Add("", []byte{0xff, 0x00})
	f.Fuzz(func(t *testing.T, name string, b []byte) {
		m, err := decodeMeta(name, b)
		if err != nil {
			return
		}
		// Whatever decodes is a valid member that re-encodes to the same member.
		if validateSelf(m) != nil {
			t.Fatalf("decoded an invalid member %+v", m)
		}
		again, err := encodeMeta(m)
		if err != nil {
			return // re-encoding may escape characters past the size limit
		}
		m2, err := decodeMeta(name, again)
		if err != nil || m2 != m {
			t.Fatalf("round trip: %+v -> %+v, %v", m, m2, err)
		}
	})
}

func TestEncodeMetaRespectsLimit(t *testing.T) {
	m := Member{Name: "n", Region: "eu", Tenant: "acme", URL: "http://" + strings.Repeat("a", 500), InternalAddr: "h:1"}
	if _, err := encodeMeta(m); err == nil || !strings.Contains(err.Error(), "limit") {
		t.Fatalf("oversized metadata: err = %v", err)
	}
	b := validMeta(t)
	var w map[string]any
	if err := json.Unmarshal(b, &w); err != nil || w["v"] != float64(metaVersion) {
		t.Fatalf("metadata %s lacks the format version", b)
	}
}

func TestAdmission(t *testing.T) {
	c := &Cluster{self: Member{Name: "me", Tenant: "acme"}, metrics: newMetrics(), rejects: ratelimit.NewPerKey(logRepeatWindow, nil),
		logger: slog.New(slog.DiscardHandler)}
	a := (*admission)(c)
	ok := &memberlist.Node{Name: "n1", Meta: validMeta(t)}
	if err := a.NotifyAlive(ok); err != nil {
		t.Errorf("same tenant refused: %v", err)
	}
	other, _ := encodeMeta(Member{Name: "n2", Region: "eu", Tenant: "globex", InternalAddr: "h:1"})
	foreign := &memberlist.Node{Name: "n2", Meta: other}
	if err := a.NotifyAlive(foreign); err == nil || !strings.Contains(err.Error(), errAdmission) {
		t.Errorf("other tenant admitted: %v", err)
	}
	if err := a.NotifyAlive(&memberlist.Node{Name: "bare"}); err == nil {
		t.Error("node without metadata admitted")
	}
	if err := a.NotifyMerge([]*memberlist.Node{ok}); err != nil {
		t.Errorf("merge with a same-tenant cluster refused: %v", err)
	}
	if err := a.NotifyMerge([]*memberlist.Node{ok, foreign}); err == nil {
		t.Error("merge with a cluster holding a foreign node accepted")
	}
	tenant := testutil.ToFloat64(c.metrics.rejections.WithLabelValues("tenant"))
	meta := testutil.ToFloat64(c.metrics.rejections.WithLabelValues("metadata"))
	if tenant != 2 || meta != 1 {
		t.Errorf("rejections tenant=%v metadata=%v, want 2 and 1", tenant, meta)
	}
}

func TestSubscriptionCoalesces(t *testing.T) {
	s := newSubscription(0)
	a1 := Member{Name: "a", URL: "v1"}
	a2 := Member{Name: "a", URL: "v2"}
	b := Member{Name: "b"}
	s.push(Event{Joined, a1})
	s.push(Event{Joined, b})
	s.push(Event{Updated, a2}) // not yet delivered: stays a join, with the new metadata
	s.push(Event{Left, b})     // latest state of b wins, in b's place
	go s.deliver()
	defer s.stop()

	want := []Event{{Joined, a2}, {Left, b}}
	for _, w := range want {
		select {
		case got := <-s.out:
			if got != w {
				t.Fatalf("got %+v, want %+v", got, w)
			}
		case <-time.After(waitDeadline):
			t.Fatalf("no event, want %+v", w)
		}
	}
	// Later pushes wake the delivery goroutine.
	s.push(Event{Joined, b})
	select {
	case got := <-s.out:
		if got != (Event{Joined, b}) {
			t.Fatalf("got %+v", got)
		}
	case <-time.After(waitDeadline):
		t.Fatal("no event after a later push")
	}
	s.stop()
	if _, ok := <-s.out; ok {
		t.Fatal("channel still open after stop")
	}
}

func TestSubscriptionNeverBlocksPush(t *testing.T) {
	s := newSubscription(1)
	go s.deliver()
	defer s.stop()
	// Nobody reads: pushes for 10 peers, many times each, must return and stay bounded.
	for i := range 10_000 {
		s.push(Event{Updated, Member{Name: string(rune('a' + i%10))}})
	}
	s.mu.Lock()
	n := len(s.pending)
	s.mu.Unlock()
	if n > 10 {
		t.Fatalf("%d pending events for 10 peers", n)
	}
}

func TestSplitSeed(t *testing.T) {
	for _, tc := range []struct {
		in   string
		host string
		port int
		bad  bool
	}{
		{"10.0.0.1:7946", "10.0.0.1", 7946, false},
		{"kura-0.kura:8000", "kura-0.kura", 8000, false},
		{"kura-0.kura", "kura-0.kura", 7000, false},
		{"[::1]:9", "::1", 9, false},
		{"[::1]", "::1", 7000, false},
		{"::1", "::1", 7000, false},
		{"", "", 0, true},
		{":7946", "", 0, true},
		{"host:0", "", 0, true},
		{"host:http", "", 0, true},
		{"a:b:c", "", 0, true},
	} {
		host, port, err := splitSeed(tc.in, 7000)
		if tc.bad != (err != nil) || host != tc.host || port != tc.port {
			t.Errorf("splitSeed(%q) = %q, %d, %v", tc.in, host, port, err)
		}
	}
}

func TestAdvertise(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, tc := range []struct {
		configured string
		bind       netip.Addr
		want       string
		bad        bool
	}{
		{"", lo, "127.0.0.1:7946", false},
		{"10.1.2.3", lo, "10.1.2.3:7946", false},
		{"10.1.2.3:9000", lo, "10.1.2.3:9000", false},
		{"[fd00::1]:9000", lo, "[fd00::1]:9000", false},
		{"0.0.0.0", lo, "", true},
		{"kura.example", lo, "", true},
		{"10.1.2.3:0", lo, "", true},
	} {
		ip, port, err := advertise(tc.configured, tc.bind, 7946)
		if tc.bad {
			if err == nil {
				t.Errorf("advertise(%q) accepted", tc.configured)
			}
			continue
		}
		if err != nil || netip.AddrPortFrom(ip, uint16(port)).String() != tc.want {
			t.Errorf("advertise(%q) = %v:%d, %v; want %s", tc.configured, ip, port, err, tc.want)
		}
	}
}

func TestLogWriterLevels(t *testing.T) {
	var buf bytes.Buffer
	w := &logWriter{logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	for _, line := range []string{
		"[DEBUG] memberlist: Stream connection from=1.2.3.4",
		"[INFO] memberlist: Marking n1 as failed",
		"[WARN] memberlist: Refuting a suspect message",
		"[ERR] memberlist: Failed to send ping",
		"[ERR] memberlist: Failed push/pull merge: kura admission: node x belongs to tenant y",
		"Err: Could not set the deadline",
	} {
		if _, err := w.Write([]byte(line + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	got := strings.Split(strings.TrimSpace(buf.String()), "\n")
	wantLevels := []string{"DEBUG", "DEBUG", "WARN", "WARN", "DEBUG", "WARN"}
	if len(got) != len(wantLevels) {
		t.Fatalf("got %d lines: %q", len(got), got)
	}
	for i, l := range got {
		if !strings.Contains(l, "level="+wantLevels[i]) || strings.Contains(l, "memberlist: ") || strings.Contains(l, "[") {
			t.Errorf("line %d = %q, want level %s without the prefixes", i, l, wantLevels[i])
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	base := func() Config { return testConfig("node-a", "eu") }
	for _, tc := range []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no name", func(c *Config) { c.Self.Name = "" }, "node name"},
		{"no tenant", func(c *Config) { c.Self.Tenant = "" }, "tenant"},
		{"no region", func(c *Config) { c.Self.Region = "" }, "region"},
		{"bad internal", func(c *Config) { c.Self.InternalAddr = "nowhere" }, "internal address"},
		{"short key", func(c *Config) { c.GossipKey = []byte("short") }, "gossip key"},
		{"bad port", func(c *Config) { c.BindPort = 70000 }, "port"},
		{"bad bind", func(c *Config) { c.BindAddr = "localhost" }, "not an IP"},
		{"bad seed", func(c *Config) { c.Seeds = []string{"host:port"} }, "seed"},
		{"bad advertise", func(c *Config) { c.AdvertiseAddr = "::" }, "advertise"},
		{"huge metadata", func(c *Config) { c.Self.URL = strings.Repeat("u", 600) }, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base()
			tc.mutate(&cfg)
			c, err := New(cfg)
			if err == nil {
				_ = c.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestNewFillsAddresses(t *testing.T) {
	cfg := testConfig("node-a", "eu")
	cfg.Self.InternalAddr = "0.0.0.0:7443" // a wildcard listener cannot be dialled by peers
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	self := c.Self()
	if self.InternalAddr != "127.0.0.1:7443" {
		t.Errorf("InternalAddr = %q, want the gossip IP with the configured port", self.InternalAddr)
	}
	if ap, err := netip.ParseAddrPort(self.GossipAddr); err != nil || ap.Addr() != netip.MustParseAddr("127.0.0.1") || ap.Port() == 0 {
		t.Errorf("GossipAddr = %q", self.GossipAddr)
	}
	if got := c.Members(); len(got) != 1 || got[0] != self {
		t.Errorf("Members() before any join = %+v", got)
	}
	if len(c.Peers()) != 0 {
		t.Errorf("Peers() before any join = %+v", c.Peers())
	}
}

func TestLifecycle(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := testConfig("node-a", "eu")
	cfg.Registerer = reg
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	// A second Cluster on the same registry fails cleanly (and leaks nothing: goleak).
	cfg2 := testConfig("node-b", "eu")
	cfg2.Registerer = reg
	if c2, err := New(cfg2); err == nil {
		_ = c2.Close()
		t.Fatal("two clusters registered the same metrics")
	}

	events, cancel := c.Subscribe(4)
	defer cancel()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, ok := <-events; ok {
		t.Fatal("subscription still open after Close")
	}
	cancel() // after the cluster closed it: harmless
	late, lateCancel := c.Subscribe(1)
	defer lateCancel()
	if _, ok := <-late; ok {
		t.Fatal("subscription after Close delivered an event")
	}
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("Run after Close succeeded")
	}
}
