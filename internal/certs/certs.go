package certs

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Files names the PEM files of one TLS identity. CAPath is optional.
type Files struct {
	CertPath, KeyPath, CAPath string
}

// Material is what a handshake uses: the certificate (with its chain and parsed Leaf) and the
// CA pool (nil when Files has no CA).
type Material struct {
	Cert *tls.Certificate
	Pool *x509.CertPool
}

// Options tune a Source.
type Options struct {
	// Label starts every error message ("internal TLS", "public TLS").
	Label string
	// Interval is how often a handshake looks at the files for a change at most; between
	// looks the loaded material is used as is.
	Interval time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// Check validates loaded material beyond what every identity needs (key usages, a chain
	// to the CA); its errors are reported with the others.
	Check func(m Material, now time.Time) error
	// Logger reports reloads: INFO when new material is in use, WARN (once per change of
	// the files) when changed files do not load. Nil: discard.
	Logger *slog.Logger
}

// Source holds the current material and reloads it when the files change. It is safe for
// concurrent use.
type Source struct {
	files Files
	opts  Options

	mu      sync.Mutex
	current Material
	stamps  [3]fileStamp
	checked time.Time
	// failed are the stamps of files that changed but did not load, so a broken rotation is
	// reported once rather than at every look.
	failed [3]fileStamp
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// Load reads and checks the files once, reporting every problem it can see: an unreadable
// file, a key that does not match the certificate, an expired certificate, no certificate in
// the CA file, and whatever opts.Check finds.
func Load(files Files, opts Options) (*Source, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Label == "" {
		opts.Label = "TLS"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Source{files: files, opts: opts}
	stamps, err := s.stat()
	if err != nil {
		return nil, err
	}
	m, err := s.load(s.opts.Now())
	if err != nil {
		return nil, err
	}
	s.current, s.stamps, s.checked = m, stamps, s.opts.Now()
	return s, nil
}

func (s *Source) paths() []string {
	p := []string{s.files.CertPath, s.files.KeyPath}
	if s.files.CAPath != "" {
		p = append(p, s.files.CAPath)
	}
	return p
}

func (s *Source) stat() ([3]fileStamp, error) {
	var stamps [3]fileStamp
	for i, p := range s.paths() {
		fi, err := os.Stat(p)
		if err != nil {
			return stamps, fmt.Errorf("%s: %w", s.opts.Label, err)
		}
		stamps[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return stamps, nil
}

// Current returns the material to use for a handshake, reloading it first when the files
// changed since the last look. A rotation that does not load (a half-written file) keeps the
// previous material; a later look tries again.
func (s *Source) Current() Material {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	if now.Sub(s.checked) < s.opts.Interval {
		return s.current
	}
	s.checked = now
	stamps, err := s.stat()
	if err != nil || stamps == s.stamps || stamps == s.failed {
		return s.current
	}
	m, err := s.load(now)
	if err != nil {
		s.failed = stamps
		s.opts.Logger.Warn("changed TLS files do not load; still serving the previous certificate",
			"tls", s.opts.Label, "error", err)
		return s.current
	}
	s.current, s.stamps = m, stamps
	s.opts.Logger.Info("TLS certificate reloaded", "tls", s.opts.Label,
		"subject", m.Cert.Leaf.Subject.String(), "not_after", m.Cert.Leaf.NotAfter)
	return s.current
}

// load reads and cross-checks the files, reporting every problem found.
func (s *Source) load(now time.Time) (Material, error) {
	label := s.opts.Label
	var errs []error
	var m Material
	if s.files.CAPath != "" {
		pool, err := loadCA(label, s.files.CAPath)
		if err != nil {
			errs = append(errs, err)
		}
		m.Pool = pool
	}
	cert, err := tls.LoadX509KeyPair(s.files.CertPath, s.files.KeyPath)
	if err != nil {
		errs = append(errs, fmt.Errorf("%s: load certificate %s with key %s: %w", label, s.files.CertPath, s.files.KeyPath, err))
		return Material{}, errors.Join(errs...)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			errs = append(errs, fmt.Errorf("%s: parse certificate %s: %w", label, s.files.CertPath, err))
			return Material{}, errors.Join(errs...)
		}
	}
	if now.After(cert.Leaf.NotAfter) {
		errs = append(errs, fmt.Errorf("%s: certificate %s expired at %s", label, s.files.CertPath, cert.Leaf.NotAfter.UTC().Format(time.RFC3339)))
	}
	m.Cert = &cert
	if len(errs) == 0 && s.opts.Check != nil {
		if err := s.opts.Check(m, now); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return Material{}, errors.Join(errs...)
	}
	return m, nil
}

// Chain returns the certificate's parsed chain: the leaf, then the intermediates it carries.
func (m Material) Chain() []*x509.Certificate {
	chain := []*x509.Certificate{m.Cert.Leaf}
	for _, der := range m.Cert.Certificate[1:] {
		if c, err := x509.ParseCertificate(der); err == nil {
			chain = append(chain, c)
		}
	}
	return chain
}

// loadCA reads a PEM bundle of CA certificates; a file without any is an error.
func loadCA(label, path string) (*x509.CertPool, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: read CA file: %w", label, err)
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
			return nil, fmt.Errorf("%s: parse CA certificate in %s: %w", label, path, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("%s: no PEM certificate in CA file %s", label, path)
	}
	return pool, nil
}
