package config

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// Peer is one KURA_PEERS seed.
type Peer struct {
	Raw  string // the entry as written
	Host string // DNS name or IP literal (no brackets)
	// Port is the peer's gossip port: the one written for host:port entries. A URL names a
	// node's public HTTP endpoint, not its gossip listener, so URL entries and bare hosts
	// use this node's KURA_GOSSIP_PORT (nodes of one cluster share their port layout).
	Port int
	URL  string // set when the entry was a URL (normalized, no trailing slash)
}

// Addr is the gossip address to join, host:port (IPv6 in brackets).
func (p Peer) Addr() string { return net.JoinHostPort(p.Host, strconv.Itoa(p.Port)) }

// parsePeers splits a KURA_PEERS value. Empty entries (a trailing comma) are skipped and
// duplicates (by gossip address) dropped; every malformed entry yields one message.
func parsePeers(value string, gossipPort int) ([]Peer, []string) {
	var (
		peers    []Peer
		problems []string
		seen     = make(map[string]bool)
	)
	for i, raw := range strings.Split(value, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		peer, err := parsePeer(raw, gossipPort)
		if err != nil {
			problems = append(problems, fmt.Sprintf("entry %d %q: %v", i+1, raw, err))
			continue
		}
		if !seen[peer.Addr()] {
			seen[peer.Addr()] = true
			peers = append(peers, peer)
		}
	}
	return peers, problems
}

func parsePeer(raw string, gossipPort int) (Peer, error) {
	if strings.Contains(raw, "://") {
		norm, err := httpURL(raw)
		if err != nil {
			return Peer{}, fmt.Errorf("not a valid peer URL: %w", err)
		}
		u, err := url.Parse(norm)
		if err != nil {
			return Peer{}, fmt.Errorf("reparse %q: %w", norm, err)
		}
		if !validHostname(u.Hostname()) {
			return Peer{}, fmt.Errorf("%q is not a valid host name", u.Hostname())
		}
		return Peer{Raw: raw, Host: u.Hostname(), Port: gossipPort, URL: norm}, nil
	}
	if strings.ContainsAny(raw, "/?#@ \t") {
		return Peer{}, fmt.Errorf("not host:port, a host or an http(s) URL")
	}
	host, portText, err := net.SplitHostPort(raw)
	if err != nil {
		// A bare host (or bare IPv6 literal) joins on the shared gossip port.
		bare := strings.TrimSuffix(strings.TrimPrefix(raw, "["), "]")
		if strings.Contains(bare, ":") && net.ParseIP(bare) == nil {
			return Peer{}, fmt.Errorf("not host:port: %w", err)
		}
		if !validHostname(bare) {
			return Peer{}, fmt.Errorf("%q is not a valid host name", bare)
		}
		return Peer{Raw: raw, Host: bare, Port: gossipPort}, nil
	}
	if host == "" {
		return Peer{}, fmt.Errorf("missing host")
	}
	if !validHostname(host) {
		return Peer{}, fmt.Errorf("%q is not a valid host name", host)
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 {
		return Peer{}, fmt.Errorf("port %q is not a port number (1..65535)", portText)
	}
	return Peer{Raw: raw, Host: host, Port: port}, nil
}
