package config

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// parser reads variables from a snapshot of the environment and collects problems instead
// of stopping at the first one.
type parser struct {
	env      map[string]string
	read     map[string]bool // every name looked up, for the Usage consistency test
	problems []Problem
}

func newParser(environ []string) *parser {
	env := make(map[string]string, len(environ))
	for _, kv := range environ {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		// Last one wins, as with exec.Cmd's Env and `env A=1 A=2`.
		env[k] = v
	}
	return &parser{env: env, read: make(map[string]bool)}
}

func (p *parser) problem(name, format string, args ...any) {
	p.problems = append(p.problems, Problem{Variable: name, Message: fmt.Sprintf(format, args...)})
}

// failed reports whether any of names already has a problem. Relations between variables
// are only checked when both sides parsed; otherwise the first problem already names the
// variable and a second one would blame a default.
func (p *parser) failed(names ...string) bool {
	for _, pr := range p.problems {
		for _, n := range names {
			if pr.Variable == n {
				return true
			}
		}
	}
	return false
}

// get returns the trimmed value; an empty value counts as unset, so `KURA_X=` in a compose
// file or chart means "use the default".
func (p *parser) get(name string) (string, bool) {
	p.read[name] = true
	v := strings.TrimSpace(p.env[name])
	return v, v != ""
}

// getAuto is get for variables with a derived default: "auto" also means unset.
func (p *parser) getAuto(name string) (string, bool) {
	v, ok := p.get(name)
	if ok && strings.EqualFold(v, "auto") {
		return "", false
	}
	return v, ok
}

func (p *parser) str(name, def string) string {
	if v, ok := p.get(name); ok {
		return v
	}
	return def
}

func (p *parser) port(name string, def int) int {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 65535 {
		p.problem(name, "%q is not a port number (1..65535)", v)
		return def
	}
	return n
}

// count parses a whole number ≥ lo, or returns def when unset. autoCount returns 0 (derive
// it) when unset or "auto".
func (p *parser) count(name string, def, lo int) int {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	return p.parseCount(name, v, def, lo)
}

func (p *parser) autoCount(name string, lo int) int {
	v, ok := p.getAuto(name)
	if !ok {
		return 0
	}
	return p.parseCount(name, v, 0, lo)
}

func (p *parser) parseCount(name, v string, def, lo int) int {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		p.problem(name, "%q is not a whole number", v)
		return def
	}
	if n < int64(lo) {
		p.problem(name, "must be at least %d, got %d", lo, n)
		return def
	}
	if n > math.MaxInt32 {
		p.problem(name, "%d is too large (at most %d)", n, math.MaxInt32)
		return def
	}
	return int(n)
}

func (p *parser) size(name string, def, lo int64) int64 {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	return p.parseSize(name, v, def, lo)
}

func (p *parser) autoSize(name string, lo int64) int64 {
	v, ok := p.getAuto(name)
	if !ok {
		return 0
	}
	return p.parseSize(name, v, 0, lo)
}

func (p *parser) parseSize(name, v string, def, lo int64) int64 {
	n, err := parseBytes(v)
	if err != nil {
		p.problem(name, "%q is not a byte size (a whole number of bytes, optionally with a KiB, MiB, GiB or TiB suffix)", v)
		return def
	}
	if n < lo {
		p.problem(name, "must be at least %s, got %s", formatBytes(lo), formatBytes(n))
		return def
	}
	return n
}

var byteUnits = []struct {
	suffix string
	mult   int64
}{{"KiB", KiB}, {"MiB", MiB}, {"GiB", GiB}, {"TiB", TiB}}

// parseBytes accepts "1048576", "512MiB" or "2 GiB". Only binary suffixes are accepted: a
// bare "MB" is ambiguous (10^6 or 2^20) and a silent 5% error in a memory budget is worse
// than a clear startup error.
func parseBytes(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range byteUnits {
		if rest, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = strings.TrimSpace(rest), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse byte size %q: %w", s, err)
	}
	if n > math.MaxInt64/mult || n < math.MinInt64/mult {
		return 0, fmt.Errorf("byte size %q overflows", s)
	}
	return n * mult, nil
}

// formatBytes renders n exactly, in the largest binary unit that divides it.
func formatBytes(n int64) string {
	for i := len(byteUnits) - 1; i >= 0; i-- {
		u := byteUnits[i]
		if n != 0 && n%u.mult == 0 {
			return fmt.Sprintf("%d %s", n/u.mult, u.suffix)
		}
	}
	if n == 1 || n == -1 {
		return fmt.Sprintf("%d byte", n)
	}
	return fmt.Sprintf("%d bytes", n)
}

// duration parses a whole number of unit (time.Millisecond for *_MS, time.Second for
// *_SECONDS) that must be at least lo.
func (p *parser) duration(name string, def time.Duration, unit time.Duration, lo int64) time.Duration {
	v, ok := p.get(name)
	if !ok {
		return def
	}
	unitName := "milliseconds"
	if unit == time.Second {
		unitName = "seconds"
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		p.problem(name, "%q is not a whole number of %s", v, unitName)
		return def
	}
	if n < lo {
		least := unitName
		if lo == 1 {
			least = strings.TrimSuffix(unitName, "s")
		}
		p.problem(name, "must be at least %d %s, got %d", lo, least, n)
		return def
	}
	// A week bounds every timeout and TTL Kura has; it also keeps the Duration from overflowing.
	const most = 7 * 24 * time.Hour
	if n > int64(most/unit) {
		p.problem(name, "%d is too long (at most %d)", n, int64(most/unit))
		return def
	}
	return time.Duration(n) * unit
}

// boolean parses the usual spellings; set reports whether the variable was given.
func (p *parser) boolean(name string, def bool) (value, set bool) {
	v, ok := p.get(name)
	if !ok {
		return def, false
	}
	switch strings.ToLower(v) {
	case "1", "true", "yes", "on":
		return true, true
	case "0", "false", "no", "off":
		return false, true
	}
	p.problem(name, "%q is not a boolean (true/false, 1/0, yes/no, on/off)", v)
	return def, true
}

// identifier checks an operator-chosen label (tenant, region, node name): it travels in
// gossip metadata, metric labels and storage keys, so it must be short, printable and
// free of whitespace.
func (p *parser) identifier(name, v string, maxLen int) {
	switch {
	case !utf8.ValidString(v):
		p.problem(name, "%q is not valid UTF-8", v)
	case len(v) > maxLen:
		p.problem(name, "is %d bytes long, at most %d allowed", len(v), maxLen)
	case strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		p.problem(name, "%q contains whitespace or control characters", v)
	}
}

// httpURL parses an absolute http(s) URL with a host and no query or fragment, returning
// it without a trailing slash (callers append paths).
func httpURL(v string) (string, error) {
	u, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("%q is not a URL: %w", v, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("%q must be an http:// or https:// URL", v)
	}
	if u.Hostname() == "" {
		return "", fmt.Errorf("%q has no host", v)
	}
	if port := u.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("%q has port %q, not a port number (1..65535)", v, port)
		}
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q must not have a query or fragment", v)
	}
	return strings.TrimRight(u.String(), "/"), nil
}

// validHostname accepts DNS names (letters, digits, '-', and '_' for SRV labels such as
// _gossip._tcp.kura, optional trailing dot) and IP literals.
func validHostname(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return false
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return false
			}
		}
	}
	return true
}
