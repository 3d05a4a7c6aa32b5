package peer

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"
)

// certReloadInterval is how often a handshake looks at the three files for a rotated
// certificate or CA (cert-manager rewrites the mounted Secret in place), so a long-running
// node never outlives its certificate. Between checks the loaded material is used as is.
const certReloadInterval = time.Minute

// LoadTLS builds the internal plane's mutual-TLS configurations from the three
// KURA_INTERNAL_TLS_* files: the node's certificate both serves (server) and is presented
// when dialling (client), and every peer's certificate must chain to the CA. The server
// requires and verifies client certificates; both sides use TLS 1.2 or later.
//
// Hostname verification is deliberately replaced by chain verification: a client accepts
// any server certificate issued by the cluster CA, whatever its SANs. Peers are dialled at
// the internal address they advertise in gossip (a pod IP that changes on every restart),
// which certificates usually do not list, and the CA is dedicated to the internal plane, so
// holding a certificate it issued is what makes a node a member. Use a CA that signs
// nothing else.
//
// The files are checked for changes at most every minute during handshakes and reloaded
// when they change; a rotation that fails to load keeps the previous material. LoadTLS
// itself reports every problem it can see at startup: unreadable files, no certificate in
// the CA file, a key that does not match, an expired certificate, a certificate not issued
// by the CA or lacking server or client authentication usage.
func LoadTLS(caPath, certPath, keyPath string) (server, client *tls.Config, err error) {
	src := &tlsSource{caPath: caPath, certPath: certPath, keyPath: keyPath, interval: certReloadInterval, now: time.Now}
	if err := src.init(); err != nil {
		return nil, nil, err
	}
	return src.serverConfig(), src.clientConfig(), nil
}

// tlsSource holds the current certificate and CA pool and reloads them when the files change.
type tlsSource struct {
	caPath, certPath, keyPath string
	interval                  time.Duration
	now                       func() time.Time

	mu      sync.Mutex
	cert    *tls.Certificate
	pool    *x509.CertPool
	stamps  [3]fileStamp
	checked time.Time
}

type fileStamp struct {
	mod  time.Time
	size int64
}

func (s *tlsSource) init() error {
	stamps, err := s.stat()
	if err != nil {
		return err
	}
	cert, pool, err := loadMaterial(s.caPath, s.certPath, s.keyPath, s.now())
	if err != nil {
		return err
	}
	s.cert, s.pool, s.stamps, s.checked = cert, pool, stamps, s.now()
	return nil
}

func (s *tlsSource) stat() ([3]fileStamp, error) {
	var stamps [3]fileStamp
	for i, p := range []string{s.caPath, s.certPath, s.keyPath} {
		fi, err := os.Stat(p)
		if err != nil {
			return stamps, fmt.Errorf("internal TLS: %w", err)
		}
		stamps[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return stamps, nil
}

// current returns the material to use for a handshake, reloading it first when the files
// changed since the last look.
func (s *tlsSource) current() (*tls.Certificate, *x509.CertPool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if now.Sub(s.checked) < s.interval {
		return s.cert, s.pool
	}
	s.checked = now
	stamps, err := s.stat()
	if err != nil || stamps == s.stamps {
		return s.cert, s.pool
	}
	cert, pool, err := loadMaterial(s.caPath, s.certPath, s.keyPath, now)
	if err != nil {
		// Half-written files during a rotation land here; the next look retries.
		return s.cert, s.pool
	}
	s.cert, s.pool, s.stamps = cert, pool, stamps
	return s.cert, s.pool
}

func (s *tlsSource) serverConfig() *tls.Config {
	cert, pool := s.current()
	base := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		Certificates: []tls.Certificate{*cert},
	}
	// Each handshake gets the current material; the fields above describe the startup state.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := s.current()
		return &tls.Config{
			MinVersion:   tls.VersionTLS12,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			Certificates: []tls.Certificate{*cert},
			NextProtos:   []string{"h2"}, // gRPC requires ALPN h2; credentials.NewTLS adds it only to base
		}, nil
	}
	return base
}

func (s *tlsSource) clientConfig() *tls.Config {
	_, pool := s.current()
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    pool,
		// Hostname checks are off on purpose (see LoadTLS); VerifyConnection verifies the
		// full chain against the CA instead, on every handshake.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, _ := s.current()
			return cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			_, pool := s.current()
			return verifyChain(cs.PeerCertificates, pool, x509.ExtKeyUsageServerAuth, s.now())
		},
	}
}

// verifyChain checks that certs[0] chains to pool (certs[1:] as intermediates) for usage.
func verifyChain(certs []*x509.Certificate, pool *x509.CertPool, usage x509.ExtKeyUsage, now time.Time) error {
	if len(certs) == 0 {
		return errors.New("internal TLS: peer presented no certificate")
	}
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}})
	if err != nil {
		return fmt.Errorf("internal TLS: peer certificate %q not accepted: %w", certs[0].Subject.CommonName, err)
	}
	return nil
}

// loadMaterial reads and cross-checks the three files, reporting every problem found.
func loadMaterial(caPath, certPath, keyPath string, now time.Time) (*tls.Certificate, *x509.CertPool, error) {
	var errs []error
	pool, err := loadCA(caPath)
	if err != nil {
		errs = append(errs, err)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		errs = append(errs, fmt.Errorf("internal TLS: load certificate %s with key %s: %w", certPath, keyPath, err))
		return nil, nil, errors.Join(errs...)
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			errs = append(errs, fmt.Errorf("internal TLS: parse certificate %s: %w", certPath, err))
			return nil, nil, errors.Join(errs...)
		}
		cert.Leaf = leaf
	}
	if now.After(leaf.NotAfter) {
		errs = append(errs, fmt.Errorf("internal TLS: certificate %s expired at %s", certPath, leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	if len(leaf.ExtKeyUsage) > 0 && !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		for _, u := range []struct {
			usage x509.ExtKeyUsage
			name  string
		}{{x509.ExtKeyUsageServerAuth, "server"}, {x509.ExtKeyUsageClientAuth, "client"}} {
			if !slices.Contains(leaf.ExtKeyUsage, u.usage) {
				errs = append(errs, fmt.Errorf("internal TLS: certificate %s lacks the %s-authentication usage; the same certificate serves and dials", certPath, u.name))
			}
		}
	}
	if pool != nil && len(errs) == 0 {
		chain := []*x509.Certificate{leaf}
		for _, der := range cert.Certificate[1:] {
			if c, err := x509.ParseCertificate(der); err == nil {
				chain = append(chain, c)
			}
		}
		if err := verifyChain(chain, pool, x509.ExtKeyUsageAny, now); err != nil {
			errs = append(errs, fmt.Errorf("internal TLS: certificate %s is not issued by the CA in %s: %w", certPath, caPath, err))
		}
	}
	if len(errs) > 0 {
		return nil, nil, errors.Join(errs...)
	}
	return &cert, pool, nil
}

func loadCA(path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("internal TLS: read CA file: %w", err)
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("internal TLS: parse CA certificate in %s: %w", path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("internal TLS: no PEM certificate in CA file %s", path)
	}
	return pool, nil
}
