package app

import (
	"crypto/tls"
	"fmt"
	"net"
	"time"

	"github.com/kuracache/kura/internal/certs"
)

// publicCertReload is how often a handshake on the public listeners looks for a rotated
// certificate at most: a rotation is served within seconds, and a busy listener stats the
// files a few times a minute, not per connection.
const publicCertReload = 5 * time.Second

// publicTLS builds the TLS configurations of the public listeners from KURA_PUBLIC_TLS_*:
// HTTPS on KURA_PORT (HTTP/1.1, which every build client speaks) and TLS on KURA_GRPC_PORT
// (h2). With a client CA, every client must present a certificate that chains to it. Every
// handshake uses the current files, so a rotated certificate is served without a restart.
func (a *App) publicTLS() (httpTLS, grpcTLS *tls.Config, err error) {
	pt := a.cfg.PublicTLS
	src, err := certs.Load(certs.Files{CertPath: pt.CertPath, KeyPath: pt.KeyPath, CAPath: pt.ClientCAPath},
		certs.Options{Label: "public TLS", Interval: publicCertReload, Logger: a.logger.With("component", "tls")})
	if err != nil {
		return nil, nil, fmt.Errorf("load the public TLS files (KURA_PUBLIC_TLS_*): %w", err)
	}
	forProtocol := func(alpn string) *tls.Config {
		return &tls.Config{
			MinVersion: tls.VersionTLS12,
			GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
				m := src.Current()
				c := &tls.Config{
					MinVersion:   tls.VersionTLS12,
					Certificates: []tls.Certificate{*m.Cert},
					NextProtos:   []string{alpn},
				}
				if m.Pool != nil {
					c.ClientAuth = tls.RequireAndVerifyClientCert
					c.ClientCAs = m.Pool
				}
				return c, nil
			},
		}
	}
	m := src.Current()
	a.logger.Info("public TLS on", "certificate", m.Cert.Leaf.Subject.CommonName,
		"dns_names", m.Cert.Leaf.DNSNames, "not_after", m.Cert.Leaf.NotAfter,
		"client_certificates_required", m.Pool != nil)
	return forProtocol("http/1.1"), forProtocol("h2"), nil
}

// tlsListener wraps ln so every accepted connection is served over TLS.
func tlsListener(ln net.Listener, cfg *tls.Config) net.Listener {
	if cfg == nil {
		return ln
	}
	return tls.NewListener(ln, cfg)
}
