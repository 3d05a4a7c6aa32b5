package cluster

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

// dnsServer is a tiny authoritative DNS server over UDP on 127.0.0.1 that answers A, AAAA
// and SRV questions from records the test sets (and changes) while it runs.
type dnsServer struct {
	conn    *net.UDPConn
	queries atomic.Int64
	done    chan struct{}

	mu   sync.Mutex
	addr map[string][]netip.Addr             // name → A/AAAA
	srv  map[string][]dnsmessage.SRVResource // name → SRV
}

func startDNSServer(t *testing.T) *dnsServer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatalf("listen for DNS: %v", err)
	}
	s := &dnsServer{conn: conn, done: make(chan struct{}), addr: map[string][]netip.Addr{}, srv: map[string][]dnsmessage.SRVResource{}}
	go s.serve(t)
	t.Cleanup(func() {
		_ = conn.Close()
		<-s.done
	})
	return s
}

func (s *dnsServer) Addr() string { return s.conn.LocalAddr().String() }

func fqdn(name string) string {
	name = strings.ToLower(name)
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

func (s *dnsServer) setAddrs(name string, ips ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []netip.Addr
	for _, ip := range ips {
		out = append(out, netip.MustParseAddr(ip))
	}
	s.addr[fqdn(name)] = out
}

func (s *dnsServer) setSRV(name string, targets map[string]uint16) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []dnsmessage.SRVResource
	for target, port := range targets {
		out = append(out, dnsmessage.SRVResource{Priority: 10, Weight: 10, Port: port, Target: dnsmessage.MustNewName(fqdn(target))})
	}
	s.srv[fqdn(name)] = out
}

func (s *dnsServer) serve(t *testing.T) {
	defer close(s.done)
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDP(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("DNS server read: %v", err)
			}
			return
		}
		resp, err := s.answer(buf[:n])
		if err != nil {
			t.Errorf("DNS server: %v", err)
			continue
		}
		s.queries.Add(1)
		if _, err := s.conn.WriteToUDP(resp, from); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Errorf("DNS server write: %v", err)
		}
	}
}

func (s *dnsServer) answer(req []byte) ([]byte, error) {
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
	addrs, haveAddr := s.addr[name]
	srvs, haveSRV := s.srv[name]
	s.mu.Unlock()

	rcode := dnsmessage.RCodeSuccess
	if !haveAddr && !haveSRV {
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
	case dnsmessage.TypeAAAA:
		for _, ip := range addrs {
			if ip.Is6() {
				if err := b.AAAAResource(rh, dnsmessage.AAAAResource{AAAA: ip.As16()}); err != nil {
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
