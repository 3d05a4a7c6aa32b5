package cluster

import (
	"context"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-sockaddr"
	"github.com/hashicorp/memberlist"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/internal/ratelimit"
)

// DefaultRejoinInterval is how often Run re-resolves DNS and re-joins seeds that are not
// members. 15 s heals a partition or picks up a restarted seed well within a minute while
// costing one DNS query and at most one TCP push/pull per missing seed per round.
const DefaultRejoinInterval = 15 * time.Second

// leaveTimeout bounds how long a stopping node waits for its leave message to be gossiped.
// Leave returns as soon as one peer has it (about one GossipInterval); when it times out the
// others still notice through probing, only later, so a short bound keeps shutdown quick.
const leaveTimeout = 5 * time.Second

// lookupTimeout bounds one round of DNS resolution so a dead resolver cannot stall rejoins.
const lookupTimeout = 10 * time.Second

// Member is one node of the cluster as its metadata advertises it.
type Member struct {
	Name         string // KURA_NODE_NAME, unique in the cluster; peers are keyed by it
	Region       string // KURA_REGION
	Tenant       string // KURA_TENANT_ID; only members of one tenant form a cluster
	URL          string // public HTTP URL (KURA_NODE_URL); may be empty
	InternalAddr string // host:port of the internal gRPC plane
	GossipAddr   string // host:port memberlist reaches it on
}

// Tuning holds the memberlist timings Kura exposes. A zero field takes the value of
// memberlist's LAN preset (ProbeInterval 1s, ProbeTimeout 500ms, GossipInterval 200ms,
// PushPullInterval 30s, SuspicionMult 4); tests shrink them to converge in milliseconds.
type Tuning struct {
	ProbeInterval    time.Duration
	ProbeTimeout     time.Duration
	GossipInterval   time.Duration
	PushPullInterval time.Duration
	SuspicionMult    int
}

// Config configures New.
type Config struct {
	// Self describes this node: Name, Region, Tenant, URL and InternalAddr. GossipAddr is
	// filled in by New. An InternalAddr whose host is empty or unspecified (0.0.0.0, ::) is
	// advertised with this node's gossip IP instead, since peers cannot dial a wildcard.
	Self Member
	// BindAddr is the IP memberlist listens on (KURA_BIND_ADDRESS); empty means 0.0.0.0.
	BindAddr string
	// BindPort is the gossip port, TCP and UDP (KURA_GOSSIP_PORT); 0 picks a free port.
	BindPort int
	// AdvertiseAddr is the IP (or IP:port) peers reach this node on. Empty: BindAddr, unless
	// that is unspecified, then a private IP of this host (memberlist's choice).
	AdvertiseAddr string
	// Seeds are gossip addresses to join, host:port (a bare host uses BindPort).
	Seeds []string
	// DNSName is resolved on every rejoin round: A/AAAA records become host:BindPort seeds,
	// SRV records target:port seeds. SRV is tried first when the name starts with "_", and
	// as a fallback when A/AAAA give nothing (and the other way round).
	DNSName string
	// DNSServer is the host:port of the DNS server to ask; empty uses the system resolver.
	DNSServer string
	// GossipKey (16, 24 or 32 bytes) encrypts and authenticates all gossip; nil disables it.
	GossipKey []byte
	// RejoinInterval defaults to DefaultRejoinInterval.
	RejoinInterval time.Duration
	// Tuning overrides memberlist timings; the zero value is the LAN preset.
	Tuning Tuning
	// Logger receives the cluster's logs and memberlist's own; nil discards them.
	Logger *slog.Logger
	// Registerer receives the kura_cluster_* metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
}

// Cluster is this node's membership in the cluster. All methods are safe for concurrent use.
type Cluster struct {
	cfg      Config
	self     Member
	selfAddr netip.AddrPort // our gossip address, to skip ourselves among seeds
	selfMeta []byte
	ml       *memberlist.Memberlist
	resolver *net.Resolver
	logger   *slog.Logger
	mlLog    *logWriter
	metrics  *metrics
	rejects  *ratelimit.PerKey // admission refusals, per node and reason
	notices  *ratelimit.PerKey // per-round join and DNS warnings

	// mu guards the peer view and the subscriber set. memberlist calls the event delegate
	// while holding its own node lock, so nothing here calls into memberlist under mu.
	mu      sync.Mutex
	peers   map[string]Member
	subs    map[*subscription]struct{}
	halted  bool
	running bool

	haltOnce sync.Once
}

// New validates cfg, binds the gossip listeners and starts memberlist's background work.
// It does not contact any seed yet: Run does. Call Run, or Close when Run will never run.
func New(cfg Config) (*Cluster, error) {
	bindIP, err := cfg.normalize()
	if err != nil {
		return nil, fmt.Errorf("cluster config: %w", err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "cluster")

	c := &Cluster{
		logger:  logger,
		metrics: newMetrics(),
		rejects: ratelimit.NewPerKey(logRepeatWindow, nil),
		notices: ratelimit.NewPerKey(logRepeatWindow, nil),
		peers:   make(map[string]Member),
		subs:    make(map[*subscription]struct{}),
	}
	c.resolver = newResolver(cfg.DNSServer)
	c.mlLog = &logWriter{logger: logger.With("source", "memberlist")}
	mlLogger := log.New(c.mlLog, "", 0)

	transport, adv, err := c.bindSelf(&cfg, bindIP, mlLogger)
	if err != nil {
		return nil, err
	}
	c.cfg = cfg

	c.ml, err = memberlist.Create(c.memberlistConfig(transport, adv, mlLogger))
	if err != nil {
		_ = transport.Shutdown()
		return nil, fmt.Errorf("start memberlist: %w", err)
	}
	if cfg.Registerer != nil {
		if err := c.metrics.register(cfg.Registerer, c); err != nil {
			_ = c.ml.Shutdown()
			return nil, fmt.Errorf("register cluster metrics: %w", err)
		}
	}
	logger.Info("gossip listening", "node", c.self.Name, "gossip_addr", c.self.GossipAddr,
		"internal_addr", c.self.InternalAddr, "region", c.self.Region, "encrypted", len(cfg.GossipKey) > 0)
	return c, nil
}

// normalize checks cfg, fills in the defaults it allows to be left out and returns the
// parsed bind address.
func (cfg *Config) normalize() (netip.Addr, error) {
	if err := validateSelf(cfg.Self); err != nil {
		return netip.Addr{}, err
	}
	if n := len(cfg.GossipKey); n != 0 && n != 16 && n != 24 && n != 32 {
		return netip.Addr{}, fmt.Errorf("gossip key is %d bytes; AES needs 16, 24 or 32", n)
	}
	if cfg.BindPort < 0 || cfg.BindPort > 65535 {
		return netip.Addr{}, fmt.Errorf("gossip port %d out of range", cfg.BindPort)
	}
	if cfg.BindAddr == "" {
		cfg.BindAddr = "0.0.0.0"
	}
	bindIP, err := netip.ParseAddr(cfg.BindAddr)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bind address %q is not an IP", cfg.BindAddr)
	}
	for _, s := range cfg.Seeds {
		if _, _, err := splitSeed(s, 1); err != nil {
			return netip.Addr{}, fmt.Errorf("seed %q: %w", s, err)
		}
	}
	if cfg.RejoinInterval <= 0 {
		cfg.RejoinInterval = DefaultRejoinInterval
	}
	return bindIP, nil
}

// bindSelf binds the gossip transport and settles this node's advertised address and
// metadata (c.self, c.selfAddr, c.selfMeta). We bind the transport ourselves so the
// advertised address (and with it the metadata that names our internal plane) is known
// before memberlist first announces us. cfg.BindPort becomes the port actually bound.
func (c *Cluster) bindSelf(cfg *Config, bindIP netip.Addr, mlLogger *log.Logger) (*memberlist.NetTransport, netip.AddrPort, error) {
	transport, err := bindTransport(cfg.BindAddr, cfg.BindPort, mlLogger)
	if err != nil {
		return nil, netip.AddrPort{}, fmt.Errorf("bind gossip on %s: %w", net.JoinHostPort(cfg.BindAddr, strconv.Itoa(cfg.BindPort)), err)
	}
	cfg.BindPort = transport.GetAutoBindPort()
	advIP, advPort, err := advertise(cfg.AdvertiseAddr, bindIP, cfg.BindPort)
	if err != nil {
		_ = transport.Shutdown()
		return nil, netip.AddrPort{}, fmt.Errorf("cluster config: %w", err)
	}
	self := cfg.Self
	c.selfAddr = netip.AddrPortFrom(advIP, uint16(advPort))
	self.GossipAddr = c.selfAddr.String()
	if host, port, err := net.SplitHostPort(self.InternalAddr); err == nil && unspecifiedHost(host) {
		self.InternalAddr = net.JoinHostPort(advIP.String(), port)
	}
	c.self = self
	c.selfMeta, err = encodeMeta(self)
	if err != nil {
		_ = transport.Shutdown()
		return nil, netip.AddrPort{}, fmt.Errorf("cluster config: %w", err)
	}
	return transport, c.selfAddr, nil
}

// memberlistConfig is the LAN preset with Kura's identity, transport, logger, tuning, key
// and delegates. c.cfg and c.self are set.
func (c *Cluster) memberlistConfig(transport *memberlist.NetTransport, adv netip.AddrPort, mlLogger *log.Logger) *memberlist.Config {
	cfg := c.cfg
	mc := memberlist.DefaultLANConfig()
	// Peers are identified by KURA_NODE_NAME (the preset would use the hostname).
	mc.Name = c.self.Name
	// Our own transport, bound above, so the advertised address was known for the metadata.
	mc.Transport = transport
	mc.BindAddr = cfg.BindAddr
	mc.BindPort = cfg.BindPort
	// Explicit, because the preset's AdvertisePort is the constant 7946 whatever we bind.
	mc.AdvertiseAddr = adv.Addr().String()
	mc.AdvertisePort = int(adv.Port())
	// Into slog instead of the preset's stderr (see logWriter for the level mapping).
	mc.Logger = mlLogger
	// Kura's tuning knobs; zero keeps the LAN preset (see Tuning).
	t := cfg.Tuning
	if t.ProbeInterval > 0 {
		mc.ProbeInterval = t.ProbeInterval
	}
	if t.ProbeTimeout > 0 {
		mc.ProbeTimeout = t.ProbeTimeout
	}
	if t.GossipInterval > 0 {
		mc.GossipInterval = t.GossipInterval
	}
	if t.PushPullInterval > 0 {
		mc.PushPullInterval = t.PushPullInterval
	}
	if t.SuspicionMult > 0 {
		mc.SuspicionMult = t.SuspicionMult
	}
	// The keyring encrypts and authenticates every packet and stream; with the LAN preset's
	// GossipVerifyIncoming/Outgoing (true) a node without the key can neither read us nor be
	// read, so it never joins.
	if len(cfg.GossipKey) > 0 {
		mc.SecretKey = slices.Clone(cfg.GossipKey)
	}
	// Admission: the alive delegate vets every node before it enters the member map (gossip,
	// push/pull and join alike); the merge delegate refuses a join with a cluster that holds
	// any node we would not admit, on both sides of the join.
	mc.Delegate = (*delegate)(c)
	mc.Events = (*events)(c)
	mc.Alive = (*admission)(c)
	mc.Merge = (*admission)(c)
	// Lifeguard (awareness, suspicion with confirmations, buddy probes) stays at the preset:
	// AwarenessMaxMultiplier 8, SuspicionMaxTimeoutMult 6, IndirectChecks 3.
	return mc
}

// bindTransport binds memberlist's TCP+UDP transport. Port 0 asks the kernel for a TCP port
// and then binds UDP on the same number, which can collide; like memberlist we retry a few
// times in that case.
func bindTransport(addr string, port int, logger *log.Logger) (*memberlist.NetTransport, error) {
	attempts := 1
	if port == 0 {
		attempts = 10
	}
	var err error
	for range attempts {
		var t *memberlist.NetTransport
		t, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{addr}, BindPort: port, Logger: logger,
		})
		if err == nil {
			return t, nil
		}
	}
	return nil, err
}

// advertise picks the address peers reach us on: the configured one, else the bind IP, else
// (wildcard bind) a private IP of this host, as memberlist does for 0.0.0.0.
func advertise(configured string, bindIP netip.Addr, port int) (netip.Addr, int, error) {
	if configured != "" {
		host, p := configured, port
		if h, ps, err := net.SplitHostPort(configured); err == nil {
			n, err := strconv.Atoi(ps)
			if err != nil || n < 1 || n > 65535 {
				return netip.Addr{}, 0, fmt.Errorf("advertise address %q has an invalid port", configured)
			}
			host, p = h, n
		}
		ip, err := netip.ParseAddr(host)
		if err != nil || ip.IsUnspecified() {
			return netip.Addr{}, 0, fmt.Errorf("advertise address %q is not a usable IP", configured)
		}
		return ip.Unmap(), p, nil
	}
	if !bindIP.IsUnspecified() {
		return bindIP.Unmap(), port, nil
	}
	s, err := sockaddr.GetPrivateIP()
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("find a private IP to advertise: %w", err)
	}
	if s == "" {
		return netip.Addr{}, 0, errors.New("no private IP to advertise on this host; set an advertise address")
	}
	ip, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("parse private IP %q: %w", s, err)
	}
	return ip.Unmap(), port, nil
}

func unspecifiedHost(host string) bool {
	if host == "" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsUnspecified()
}

// Run joins the seeds and DNS results at once, then re-resolves and re-joins those that are
// not members every RejoinInterval, so a restarted seed or a healed partition comes back
// without an operator. When ctx is done it leaves the cluster (bounded), shuts memberlist
// down, closes every subscription and returns nil. Shutdown may wait for one join attempt
// already in flight.
func (c *Cluster) Run(ctx context.Context) error {
	c.mu.Lock()
	if c.halted || c.running {
		c.mu.Unlock()
		return errors.New("cluster: Run called twice or after Close")
	}
	c.running = true
	c.mu.Unlock()

	defer c.halt(true)
	c.joinRound(ctx)
	t := time.NewTicker(c.cfg.RejoinInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			c.joinRound(ctx)
		}
	}
}

// Close shuts memberlist down without a leave message and closes every subscription. It is
// for a Cluster whose Run never started (Run does this itself on return) and is idempotent.
func (c *Cluster) Close() error {
	c.halt(false)
	return nil
}

// halt stops gossip once: graceful announces our departure first so peers drop us at once
// rather than after failure detection.
func (c *Cluster) halt(graceful bool) {
	c.haltOnce.Do(func() {
		if graceful {
			if err := c.ml.Leave(leaveTimeout); err != nil {
				c.logger.Warn("leaving the cluster", "err", err)
			}
		}
		// memberlist's timers race its own shutdown and report sends on closed sockets;
		// from here on its complaints are expected, so they go to debug.
		c.mlLog.quiet.Store(true)
		if err := c.ml.Shutdown(); err != nil {
			c.logger.Warn("shutting memberlist down", "err", err)
		}
		c.mu.Lock()
		c.halted = true
		clear(c.peers) // a stopped node is a member of nothing
		subs := make([]*subscription, 0, len(c.subs))
		for s := range c.subs {
			subs = append(subs, s)
		}
		clear(c.subs)
		c.mu.Unlock()
		for _, s := range subs {
			s.stop()
		}
		c.logger.Info("left the cluster", "node", c.self.Name, "graceful", graceful)
	})
}

// joinRound resolves every seed source and joins each address that is not already a live
// member, one at a time, so that once the first join has merged a cluster's state the rest
// are usually found to be members and skipped.
func (c *Cluster) joinRound(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	candidates := c.candidates(lctx)
	cancel()

	attempted, joined := 0, 0
	var lastErr error
	for _, addr := range candidates {
		if ctx.Err() != nil || c.isHalted() {
			// A stopped memberlist could still dial out and announce itself as alive.
			return
		}
		if c.isMemberAddr(addr) {
			continue
		}
		attempted++
		if _, err := c.ml.Join([]string{addr.String()}); err != nil {
			c.metrics.joinAttempts.WithLabelValues("failure").Inc()
			err = firstError(err)
			lastErr = err
			c.logger.Debug("join attempt failed", "seed", addr.String(), "err", err)
			continue
		}
		joined++
		c.metrics.joinAttempts.WithLabelValues("success").Inc()
		c.logger.Info("joined the cluster through a seed", "seed", addr.String())
	}
	if attempted > 0 && joined == 0 && len(c.Peers()) == 0 && c.notices.Allow("isolated") {
		c.logger.Warn("not joined to any peer yet; will retry", "seeds_tried", attempted,
			"retry_in", c.cfg.RejoinInterval.String(), "last_err", lastErr)
	}
}

// candidates lists the gossip addresses of every seed and DNS record, deduplicated, without
// our own address.
func (c *Cluster) candidates(ctx context.Context) []netip.AddrPort {
	var out []netip.AddrPort
	seen := map[netip.AddrPort]bool{c.selfAddr: true}
	add := func(ap netip.AddrPort) {
		ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		if !seen[ap] {
			seen[ap] = true
			out = append(out, ap)
		}
	}
	for _, s := range c.cfg.Seeds {
		aps, err := c.resolveSeed(ctx, s)
		if err != nil && c.notices.Allow("seed\x00"+s) {
			c.logger.Warn("resolving a seed", "seed", s, "err", err)
		}
		for _, ap := range aps {
			add(ap)
		}
	}
	if c.cfg.DNSName != "" {
		aps, err := c.discover(ctx, c.cfg.DNSName)
		if err != nil && c.notices.Allow("dns") {
			c.logger.Warn("DNS discovery found no seeds", "name", c.cfg.DNSName, "err", err)
		}
		for _, ap := range aps {
			add(ap)
		}
	}
	return out
}

// firstError unwraps the multierror memberlist's Join returns: we join one address at a
// time, so the first error is the whole story and reads better in a log line.
func firstError(err error) error {
	if me, ok := err.(interface{ WrappedErrors() []error }); ok && len(me.WrappedErrors()) > 0 {
		return me.WrappedErrors()[0]
	}
	return err
}

func (c *Cluster) isHalted() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.halted
}

// isMemberAddr reports whether a live member (or we) gossips on addr.
func (c *Cluster) isMemberAddr(addr netip.AddrPort) bool {
	if addr == c.selfAddr {
		return true
	}
	s := addr.String()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, m := range c.peers {
		if m.GossipAddr == s {
			return true
		}
	}
	return false
}

// Self returns this node as it advertises itself.
func (c *Cluster) Self() Member { return c.self }

// Members returns the live members (alive or suspected, not yet declared dead), this node
// included, sorted by Name.
func (c *Cluster) Members() []Member {
	c.mu.Lock()
	out := make([]Member, 0, len(c.peers)+1)
	out = append(out, c.self)
	for _, m := range c.peers {
		out = append(out, m)
	}
	c.mu.Unlock()
	sortMembers(out)
	return out
}

// Peers returns the live members other than this node, sorted by Name.
func (c *Cluster) Peers() []Member {
	c.mu.Lock()
	out := make([]Member, 0, len(c.peers))
	for _, m := range c.peers {
		out = append(out, m)
	}
	c.mu.Unlock()
	sortMembers(out)
	return out
}

// Health is the failure detector's view of each member memberlist knows: "alive",
// "suspect" (missed probes, not yet declared dead), "dead" or "left", by name. After the node
// stopped, it is empty.
func (c *Cluster) Health() map[string]string {
	out := map[string]string{}
	if c.isHalted() {
		return out
	}
	for _, n := range c.ml.Members() {
		out[n.Name] = memberState(n.State)
	}
	return out
}

func memberState(s memberlist.NodeStateType) string {
	switch s {
	case memberlist.StateAlive:
		return "alive"
	case memberlist.StateSuspect:
		return "suspect"
	case memberlist.StateDead:
		return "dead"
	case memberlist.StateLeft:
		return "left"
	default:
		return "unknown"
	}
}

// Member returns the live member called name (this node included).
func (c *Cluster) Member(name string) (Member, bool) {
	if name == c.self.Name {
		return c.self, true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	m, ok := c.peers[name]
	return m, ok
}

func sortMembers(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Name, b.Name) })
}

// memberFromNode decodes an admitted node; admission guarantees its metadata is valid.
func memberFromNode(n *memberlist.Node) (Member, error) {
	m, err := decodeMeta(n.Name, n.Meta)
	if err != nil {
		return Member{}, err
	}
	ip, ok := netip.AddrFromSlice(n.Addr)
	if !ok {
		return Member{}, fmt.Errorf("node %q has no usable address", n.Name)
	}
	m.GossipAddr = netip.AddrPortFrom(ip.Unmap(), n.Port).String()
	return m, nil
}
