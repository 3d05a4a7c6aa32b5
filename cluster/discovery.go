package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// newResolver returns the system resolver, or Go's resolver sending every query to server
// (host:port) when one is configured. Seeds and the discovery name share it, so a test (or
// an operator) pointing at one DNS server sees consistent answers.
func newResolver(server string) *net.Resolver {
	if server == "" {
		return net.DefaultResolver
	}
	var d net.Dialer
	return &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, server)
		},
	}
}

// splitSeed splits a seed into host and port; a seed without a port gets defPort.
func splitSeed(s string, defPort int) (string, int, error) {
	if s == "" {
		return "", 0, errors.New("empty seed")
	}
	host, ps, err := net.SplitHostPort(s)
	if err != nil {
		// A bare host, bare IPv6 literal or bracketed IPv6 literal without a port.
		host = strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")
		if strings.Contains(host, ":") {
			if _, perr := netip.ParseAddr(host); perr != nil {
				return "", 0, fmt.Errorf("not host:port: %w", err)
			}
		}
		return host, defPort, nil
	}
	if host == "" {
		return "", 0, errors.New("empty host")
	}
	port, err := strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("port %q is not in 1-65535", ps)
	}
	return host, port, nil
}

// resolveSeed turns a seed into gossip addresses: an IP literal as is, a name through DNS
// on every call so a seed whose address changed (a rescheduled pod) is found again.
func (c *Cluster) resolveSeed(ctx context.Context, seed string) ([]netip.AddrPort, error) {
	host, port, err := splitSeed(seed, c.cfg.BindPort)
	if err != nil {
		return nil, err
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return []netip.AddrPort{netip.AddrPortFrom(ip.Unmap(), uint16(port))}, nil
	}
	ips, err := c.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", host, err)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(port)))
	}
	return out, nil
}

// discover resolves the discovery name. A/AAAA records name nodes that gossip on our own
// port (one cluster shares its port layout); SRV records carry their port. A name starting
// with "_" is an SRV name by convention, so SRV goes first; either kind is the fallback of
// the other when it yields nothing.
func (c *Cluster) discover(ctx context.Context, name string) ([]netip.AddrPort, error) {
	lookups := []func(context.Context, string) ([]netip.AddrPort, error){c.lookupAddrs, c.lookupSRV}
	if strings.HasPrefix(name, "_") {
		lookups[0], lookups[1] = lookups[1], lookups[0]
	}
	var errs []error
	for _, lookup := range lookups {
		aps, err := lookup(ctx, name)
		if len(aps) > 0 {
			return aps, nil
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		return nil, nil
	}
	return nil, errors.Join(errs...)
}

func (c *Cluster) lookupAddrs(ctx context.Context, name string) ([]netip.AddrPort, error) {
	ips, err := c.resolver.LookupNetIP(ctx, "ip", name)
	if err != nil {
		return nil, fmt.Errorf("A/AAAA %s: %w", name, err)
	}
	out := make([]netip.AddrPort, 0, len(ips))
	for _, ip := range ips {
		out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(c.cfg.BindPort)))
	}
	return out, nil
}

func (c *Cluster) lookupSRV(ctx context.Context, name string) ([]netip.AddrPort, error) {
	_, srvs, err := c.resolver.LookupSRV(ctx, "", "", name)
	if err != nil && len(srvs) == 0 {
		return nil, fmt.Errorf("SRV %s: %w", name, err)
	}
	var out []netip.AddrPort
	var errs []error
	for _, srv := range srvs {
		if srv.Port == 0 {
			continue
		}
		target := strings.TrimSuffix(srv.Target, ".")
		if ip, err := netip.ParseAddr(target); err == nil {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), srv.Port))
			continue
		}
		ips, err := c.resolver.LookupNetIP(ctx, "ip", srv.Target)
		if err != nil {
			errs = append(errs, fmt.Errorf("SRV target %s: %w", srv.Target, err))
			continue
		}
		for _, ip := range ips {
			out = append(out, netip.AddrPortFrom(ip.Unmap(), srv.Port))
		}
	}
	if len(out) == 0 && len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return out, nil
}
