package config

import (
	"math/big"
	"net"
	"strconv"
	"strings"
	"testing"
)

// FuzzParsePeers: any KURA_PEERS value either yields problems or peers whose gossip
// address is a well-formed host:port; it never panics.
func FuzzParsePeers(f *testing.F) {
	for _, s := range []string{"a:1", "http://b:4000,c", "[::1]:7946", "::1", ":", "a:b:c", "http://[::1]:80/", " , ,", "ftp://x", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		peers, _ := parsePeers(s, 7946)
		for _, p := range peers {
			host, port, err := net.SplitHostPort(p.Addr())
			if err != nil || host != p.Host || !validHostname(host) {
				t.Fatalf("peer %+v has a bad address %q: %v", p, p.Addr(), err)
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				t.Fatalf("peer %+v has port %q", p, port)
			}
		}
	})
}

// FuzzParseBytes checks parseBytes against an arbitrary-precision oracle: whatever it
// accepts equals number × unit exactly (no silent overflow), and it never panics.
func FuzzParseBytes(f *testing.F) {
	for _, s := range []string{"0", "1", "512KiB", "2 GiB", "-1MiB", "9223372036854775807", "8388607TiB", "8388608TiB", "1e9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseBytes(s)
		if err != nil {
			return
		}
		num, mult := s, int64(1)
		for _, u := range byteUnits {
			if rest, ok := strings.CutSuffix(s, u.suffix); ok {
				num, mult = strings.TrimSpace(rest), u.mult
				break
			}
		}
		want, ok := new(big.Int).SetString(num, 10)
		if !ok {
			t.Fatalf("parseBytes(%q) = %d, but %q is not an integer", s, n, num)
		}
		want.Mul(want, big.NewInt(mult))
		if !want.IsInt64() || want.Int64() != n {
			t.Fatalf("parseBytes(%q) = %d, want %s", s, n, want)
		}
	})
}
