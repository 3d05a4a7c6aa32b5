package peer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kuracache/kura/internal/certs"
)

// certReloadInterval is how often a handshake looks at the three files for a rotated
// certificate or CA (cert-manager rewrites the mounted Secret in place), so a long-running
// node never outlives its certificate. Between checks the loaded material is used as is.
// Five seconds, as on the public listeners: a rotation is in use within seconds, and the
// internal plane's long-lived connections handshake rarely, so the three stats cost nothing.
const certReloadInterval = 5 * time.Second

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
	src, err := loadSource(caPath, certPath, keyPath, certReloadInterval, time.Now)
	if err != nil {
		return nil, nil, err
	}
	return serverConfig(src), clientConfig(src), nil
}

// loadSource loads the internal plane's identity with its checks: both usages, and a chain to
// the CA.
func loadSource(caPath, certPath, keyPath string, interval time.Duration, now func() time.Time) (*certs.Source, error) {
	return certs.Load(certs.Files{CertPath: certPath, KeyPath: keyPath, CAPath: caPath}, certs.Options{
		Label:    "internal TLS",
		Interval: interval,
		Now:      now,
		Check: func(m certs.Material, now time.Time) error {
			return checkNodeCertificate(m, caPath, certPath, now)
		},
	})
}

func serverConfig(src *certs.Source) *tls.Config {
	m := src.Current()
	base := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    m.Pool,
		Certificates: []tls.Certificate{*m.Cert},
	}
	// Each handshake gets the current material; the fields above describe the startup state.
	base.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		m := src.Current()
		return &tls.Config{
			MinVersion:   tls.VersionTLS12,
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    m.Pool,
			Certificates: []tls.Certificate{*m.Cert},
			NextProtos:   []string{"h2"}, // gRPC requires ALPN h2; credentials.NewTLS adds it only to base
		}, nil
	}
	return base
}

func clientConfig(src *certs.Source) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    src.Current().Pool,
		// Hostname checks are off on purpose (see LoadTLS); VerifyConnection verifies the
		// full chain against the CA instead, on every handshake.
		InsecureSkipVerify: true, //nolint:gosec // replaced by VerifyConnection
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return src.Current().Cert, nil
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyChain(cs.PeerCertificates, src.Current().Pool, x509.ExtKeyUsageServerAuth, time.Now())
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

// checkNodeCertificate requires what the internal plane needs of a node certificate: server
// and client usages (the same certificate serves and dials) and a chain to the cluster CA.
func checkNodeCertificate(m certs.Material, caPath, certPath string, now time.Time) error {
	var errs []error
	leaf := m.Cert.Leaf
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
	if m.Pool != nil && len(errs) == 0 {
		if err := verifyChain(m.Chain(), m.Pool, x509.ExtKeyUsageAny, now); err != nil {
			errs = append(errs, fmt.Errorf("internal TLS: certificate %s is not issued by the CA in %s: %w", certPath, caPath, err))
		}
	}
	return errors.Join(errs...)
}
