package config

import (
	"net"
	"strconv"
)

// pprof reads KURA_PPROF_ADDRESS: an IP literal and a port, like every other listener of the
// node (a hostname would be resolved at bind time and could land on a public interface). The
// profiling handlers expose goroutine stacks and heap contents, so they get a listener of their
// own and may never share a port with the public, REAPI, gossip or internal listeners; binding
// it to loopback or a private interface is the operator's part (README, Profiling). It needs
// the four ports, so listeners runs first.
func (p *parser) pprof(c *Config) {
	v, ok := p.get(EnvPprofAddress)
	if !ok {
		return
	}
	host, portStr, err := net.SplitHostPort(v)
	if err != nil {
		p.problem(EnvPprofAddress, "%q is not ip:port (e.g. 127.0.0.1:6060)", v)
		return
	}
	if net.ParseIP(host) == nil {
		p.problem(EnvPprofAddress, "%q: the host must be an IP address (e.g. 127.0.0.1:6060), not %q", v, host)
		return
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		p.problem(EnvPprofAddress, "%q: %q is not a port number (1..65535)", v, portStr)
		return
	}
	for _, l := range []struct {
		name string
		port int
	}{{EnvPort, c.Port}, {EnvGRPCPort, c.GRPCPort}, {EnvGossipPort, c.GossipPort}, {EnvInternalPort, c.InternalPort}} {
		if port == l.port {
			p.problem(EnvPprofAddress, "port %d is already %s's; the profiling listener needs its own port", port, l.name)
			return
		}
	}
	c.PprofAddress = net.JoinHostPort(host, portStr)
}
