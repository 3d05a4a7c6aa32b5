package app

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"google.golang.org/grpc/stats"

	"github.com/kuracache/kura/cluster"
	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/httpapi"
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/outbox"
	"github.com/kuracache/kura/outbox/antientropy"
)

// buildPeerClient loads the internal plane's TLS files and builds its client, which the
// outbox pushes with, so the outbox can exist before the store. It returns the server half's
// configuration, which buildCluster serves the store with.
func (a *App) buildPeerClient() (peer.ServerConfig, error) {
	cfg := a.cfg
	var serverTLS, clientTLS *tls.Config
	if cfg.InternalTLS.Enabled() {
		var err error
		serverTLS, clientTLS, err = peer.LoadTLS(cfg.InternalTLS.CACertPath, cfg.InternalTLS.CertPath, cfg.InternalTLS.KeyPath)
		if err != nil {
			return peer.ServerConfig{}, fmt.Errorf("load the internal plane's TLS files: %w", err)
		}
	}
	a.warnIfInternalPlaneOpen()
	// Tracing: pushes and read-throughs made inside a trace carry it to the peer.
	var clientStats, serverStats []stats.Handler
	if c, srv := telemetry.InternalPlaneHandlers(a.tracing.Provider()); c != nil {
		clientStats, serverStats = []stats.Handler{c}, []stats.Handler{srv}
	}
	// The gossip key also keys the internal plane's credential, with mTLS on too: a leaked
	// certificate alone, or a leaked gossip key alone, then does not open the plane.
	a.peerClient = peer.NewClient(peer.ClientConfig{
		TLS:           clientTLS,
		PlaneKey:      cfg.GossipKey,
		Logger:        a.logger.With("component", "peer-client"),
		Registerer:    a.registry,
		StatsHandlers: clientStats,
	})
	return peer.ServerConfig{
		TLS:              serverTLS,
		PlaneKey:         cfg.GossipKey,
		MaxKeyValueBytes: cfg.MaxKeyValueBytes,
		Logger:           a.logger.With("component", "peer-server"),
		Registerer:       a.registry,
		StatsHandlers:    serverStats,
	}, nil
}

// buildCluster creates the internal plane's server, membership and the anti-entropy sweeper
// around the already opened store. Nothing runs until Run.
func (a *App) buildCluster(peerServerCfg peer.ServerConfig) error {
	cfg := a.cfg
	a.peerServer = peer.NewServer(peerServerCfg, a.store)

	// The internal listener is bound before gossip starts so the address members advertise is
	// the one really bound (a wildcard host is replaced by the gossip IP in cluster).
	var err error
	if a.internalLn, err = listen(cfg.BindAddress, cfg.InternalPort, "KURA_INTERNAL_PORT"); err != nil {
		return err
	}
	_, internalPort, err := net.SplitHostPort(a.internalLn.Addr().String())
	if err != nil {
		return fmt.Errorf("internal listener address: %w", err)
	}

	seeds := make([]string, 0, len(cfg.Peers))
	for _, p := range cfg.Peers {
		seeds = append(seeds, p.Addr())
	}
	a.cluster, err = cluster.New(cluster.Config{
		Self: cluster.Member{
			Name:         cfg.NodeName,
			Region:       cfg.Region,
			Tenant:       cfg.TenantID,
			URL:          cfg.NodeURL,
			InternalAddr: net.JoinHostPort(cfg.BindAddress, internalPort),
		},
		BindAddr:       cfg.BindAddress,
		BindPort:       cfg.GossipPort,
		Seeds:          seeds,
		DNSName:        cfg.DiscoveryDNSName,
		DNSServer:      cfg.DiscoveryDNSServer,
		GossipKey:      cfg.GossipKey,
		RejoinInterval: cfg.RejoinInterval,
		Logger:         a.logger,
		Registerer:     a.registry,
	})
	if err != nil {
		return fmt.Errorf("start gossip on %s (KURA_GOSSIP_PORT): %w", cfg.GossipAddr(), err)
	}

	a.sweeper, err = antientropy.New(antientropy.Config{
		Local:            a.store,
		Corrupted:        a.store.Corrupted(),
		Source:           a.peerClient,
		Peers:            peersView{a.cluster},
		SelfRegion:       cfg.Region,
		Interval:         cfg.AntiEntropyInterval,
		MaxKeyValueBytes: cfg.MaxKeyValueBytes,
		Logger:           a.logger,
		Registerer:       a.registry,
	})
	if err != nil {
		return fmt.Errorf("build anti-entropy: %w", err)
	}
	return nil
}

// warnIfInternalPlaneOpen logs, once at startup, that without mTLS and without a gossip key
// anyone who can reach KURA_INTERNAL_PORT can push objects and tombstones into the mesh. It
// is a warning, not an error, so that a single node or a trusted network starts with no
// configuration at all.
func (a *App) warnIfInternalPlaneOpen() {
	if a.cfg.InternalTLS.Enabled() || len(a.cfg.GossipKey) > 0 {
		return
	}
	a.logger.Warn("internal plane is open: anyone who can reach KURA_INTERNAL_PORT can push objects and tombstones into this node; "+
		"close it with KURA_GOSSIP_KEY (the same on every node, e.g. `head -c 32 /dev/urandom | base64`) "+
		"or the three KURA_INTERNAL_TLS_* files (mTLS), or both",
		"port", a.cfg.InternalPort)
}

// followMembership keeps the outbox's replication targets equal to the live peers, and drops
// pooled connections to peers that left.
func (a *App) followMembership(ctx context.Context) error {
	events, unsubscribe := a.cluster.Subscribe(64)
	defer unsubscribe()
	live := map[string]outbox.Target{}
	publish := func() {
		targets := make([]outbox.Target, 0, len(live))
		for _, t := range live {
			targets = append(targets, t)
		}
		a.outbox.SetTargets(targets)
	}
	publish()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-events:
			if !ok {
				return nil
			}
			switch ev.Type {
			case cluster.Joined, cluster.Updated:
				if old, ok := live[ev.Member.Name]; ok && old.Addr != ev.Member.InternalAddr {
					_ = a.peerClient.Forget(old.Addr)
				}
				live[ev.Member.Name] = outbox.Target{Name: ev.Member.Name, Addr: ev.Member.InternalAddr}
			case cluster.Left:
				delete(live, ev.Member.Name)
				_ = a.peerClient.Forget(ev.Member.InternalAddr)
			}
			publish()
		}
	}
}

// membersView feeds /up from gossip.
type membersView struct{ c *cluster.Cluster }

func (m membersView) Members() []httpapi.Member {
	members := m.c.Members()
	out := make([]httpapi.Member, 0, len(members))
	for _, member := range members {
		out = append(out, httpapi.Member{Name: member.Name, Region: member.Region, URL: member.URL})
	}
	return out
}

// peersView gives anti-entropy and read-through the live peers with their internal addresses.
type peersView struct{ c *cluster.Cluster }

func (p peersView) Peers() []antientropy.Peer {
	members := p.c.Peers()
	out := make([]antientropy.Peer, 0, len(members))
	for _, member := range members {
		out = append(out, antientropy.Peer{Name: member.Name, Region: member.Region, Addr: member.InternalAddr})
	}
	return out
}
