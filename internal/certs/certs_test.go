package certs

import (
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
)

func TestLoadAndReload(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "certs test CA")
	v1 := ca.Issue(t, "v1")
	files := Files{
		CertPath: testsupport.WriteFile(t, dir, "tls.crt", v1.CertPEM),
		KeyPath:  testsupport.WriteFile(t, dir, "tls.key", v1.KeyPEM),
		CAPath:   testsupport.WriteFile(t, dir, "ca.pem", ca.PEM),
	}
	clock := testsupport.NewClock(time.Now())
	var logs testsupport.LockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	src, err := Load(files, Options{Label: "test TLS", Interval: time.Minute, Now: clock.Now, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	if m := src.Current(); m.Cert.Leaf.Subject.CommonName != "v1" || m.Pool == nil || len(m.Chain()) != 1 {
		t.Fatalf("loaded %+v", m)
	}
	v2 := ca.Issue(t, "v2")
	for path, data := range map[string][]byte{files.CertPath: v2.CertPEM, files.KeyPath: v2.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if cn := src.Current().Cert.Leaf.Subject.CommonName; cn != "v1" {
		t.Fatalf("reloaded before the interval: %s", cn)
	}
	clock.Advance(2 * time.Minute)
	if cn := src.Current().Cert.Leaf.Subject.CommonName; cn != "v2" {
		t.Fatalf("after the interval: %s, want v2", cn)
	}
	if l := logs.String(); !strings.Contains(l, "level=INFO msg=\"TLS certificate reloaded\"") || !strings.Contains(l, "CN=v2") {
		t.Errorf("a reload was not logged: %s", l)
	}
	// A half-written rotation keeps the last good material.
	if err := os.WriteFile(files.CertPath, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Minute)
	if cn := src.Current().Cert.Leaf.Subject.CommonName; cn != "v2" {
		t.Fatalf("after a broken rotation: %s, want v2 still", cn)
	}
	// The broken rotation is reported once, not at every look.
	clock.Advance(2 * time.Minute)
	src.Current()
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Errorf("%d WARN lines for one broken rotation, want 1:\n%s", n, logs.String())
	}
	// Fixing the files is picked up.
	v3 := ca.Issue(t, "v3")
	for path, data := range map[string][]byte{files.CertPath: v3.CertPEM, files.KeyPath: v3.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(2 * time.Minute)
	if cn := src.Current().Cert.Leaf.Subject.CommonName; cn != "v3" {
		t.Fatalf("after the fix: %s, want v3", cn)
	}
}

func TestLoadReportsProblems(t *testing.T) {
	dir := t.TempDir()
	ca := testsupport.NewCA(t, "certs test CA")
	leaf := ca.Issue(t, "leaf")
	other := ca.Issue(t, "other")
	cert := testsupport.WriteFile(t, dir, "tls.crt", leaf.CertPEM)
	key := testsupport.WriteFile(t, dir, "tls.key", leaf.KeyPEM)
	for name, c := range map[string]struct {
		files Files
		opts  Options
		want  string
	}{
		"missing file":  {Files{CertPath: dir + "/nope.crt", KeyPath: key}, Options{}, "no such file"},
		"wrong key":     {Files{CertPath: cert, KeyPath: testsupport.WriteFile(t, dir, "other.key", other.KeyPEM)}, Options{}, "load certificate"},
		"empty CA file": {Files{CertPath: cert, KeyPath: key, CAPath: testsupport.WriteFile(t, dir, "empty.pem", []byte("x"))}, Options{}, "no PEM certificate"},
		"expired":       {Files{CertPath: cert, KeyPath: key}, Options{Now: func() time.Time { return time.Now().Add(48 * time.Hour) }}, "expired"},
		"check":         {Files{CertPath: cert, KeyPath: key}, Options{Check: func(Material, time.Time) error { return os.ErrPermission }}, "permission denied"},
	} {
		c.opts.Label = "test TLS"
		_, err := Load(c.files, c.opts)
		// Check's own errors carry its own wording; every other one names the label.
		if err == nil || !strings.Contains(err.Error(), c.want) || (name != "check" && !strings.Contains(err.Error(), "test TLS")) {
			t.Errorf("%s: %v, want an error mentioning %q", name, err, c.want)
		}
	}
}
