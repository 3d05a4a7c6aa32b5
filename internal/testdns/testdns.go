// Package testdns is a tiny authoritative DNS server on 127.0.0.1 for tests of DNS discovery
// (KURA_DISCOVERY_DNS_NAME with KURA_DISCOVERY_DNS_SERVER). The cluster package's tests and the
// e2e suite share it. It is test support only; nothing in the kura binary imports it.
package testdns

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

// Server is a tiny authoritative DNS server on 127.0.0.1 UDP for KURA_DISCOVERY_DNS_SERVER.
// It answers A questions for the names given to SetA and SRV questions for the names given to
// SetSRV, from records the test may change while it runs (a node started before the records
// exist must find its peers once they appear: kura re-resolves periodically). Unknown names
// are NXDOMAIN; a known name asked for another type is an empty NOERROR answer (AAAA, say).
type Server struct {
	conn    *net.UDPConn
	done    chan struct{}
	queries atomic.Int64 // questions answered, every type

	mu  sync.Mutex
	a   map[string][]netip.Addr
	srv map[string][]dnsmessage.SRVResource
}

// Start starts a server; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen for DNS on 127.0.0.1: %v", err)
	}
	s := &Server{conn: conn, done: make(chan struct{}), a: map[string][]netip.Addr{}, srv: map[string][]dnsmessage.SRVResource{}}
	// The serving goroutine is owned by the test: closing the socket in cleanup ends it.
	go s.serve(t)
	t.Cleanup(func() {
		_ = conn.Close()
		<-s.done
	})
	return s
}

// Addr is host:port for KURA_DISCOVERY_DNS_SERVER.
func (s *Server) Addr() string { return s.conn.LocalAddr().String() }

// Queries is how many questions the server has answered so far.
func (s *Server) Queries() int64 { return s.queries.Load() }

func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// SetA sets the A records of name.
func (s *Server) SetA(name string, ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var addrs []netip.Addr
	for _, ip := range ips {
		addrs = append(addrs, netip.MustParseAddr(ip))
	}
	s.a[fqdn(name)] = addrs
}

// SetSRV sets the SRV records of name: one per target name and port.
func (s *Server) SetSRV(name string, targets []Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var records []dnsmessage.SRVResource
	for _, tg := range targets {
		records = append(records, dnsmessage.SRVResource{Priority: 10, Weight: 10, Port: tg.Port, Target: dnsmessage.MustNewName(fqdn(tg.Host))})
	}
	s.srv[fqdn(name)] = records
}

// Target is one SRV record's target.
type Target struct {
	Host string
	Port uint16
}

func (s *Server) serve(t testing.TB) {
	defer close(s.done)
	buf := make([]byte, 4096)
	for {
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("test DNS server: read: %v", err)
			}
			return
		}
		resp, err := s.answer(buf[:n])
		if err != nil {
			// A malformed question gets no answer; the resolver retries or gives up.
			t.Logf("test DNS server: cannot answer a query: %v", err)
			continue
		}
		s.queries.Add(1)
		if _, err := s.conn.WriteToUDP(resp, from); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("test DNS server: write: %v", err)
		}
	}
}

func (s *Server) answer(req []byte) ([]byte, error) {
	var p dnsmessage.Parser
	h, err := p.Start(req)
	if err != nil {
		return nil, err
	}
	q, err := p.Question()
	if err != nil {
		return nil, err
	}
	name := strings.ToLower(q.Name.String())
	s.mu.Lock()
	addrs, haveA := s.a[name]
	srvs, haveSRV := s.srv[name]
	s.mu.Unlock()

	rcode := dnsmessage.RCodeSuccess
	if !haveA && !haveSRV {
		rcode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, RCode: rcode,
	})
	b.EnableCompression()
	if err := b.StartQuestions(); err != nil {
		return nil, err
	}
	if err := b.Question(q); err != nil {
		return nil, err
	}
	if err := b.StartAnswers(); err != nil {
		return nil, err
	}
	// TTL 1 s: kura re-resolves on every rejoin, and nothing should cache stale answers.
	rh := dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: 1}
	switch q.Type {
	case dnsmessage.TypeA:
		for _, ip := range addrs {
			if ip.Is4() {
				if err := b.AResource(rh, dnsmessage.AResource{A: ip.As4()}); err != nil {
					return nil, err
				}
			}
		}
	case dnsmessage.TypeSRV:
		for _, r := range srvs {
			if err := b.SRVResource(rh, r); err != nil {
				return nil, err
			}
		}
	}
	return b.Finish()
}
