package config

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Retention by age: objects not used (read, vouched for, written) for longer than the
// maximum age are removed by each node's retention sweep (storage/local, RetentionOptions).
const (
	EnvRetentionMaxAge = "KURA_RETENTION_MAX_AGE"
	// EnvRetentionMaxAgePrefix + RetentionEnvName(namespace) overrides the age of one
	// namespace (or of every namespace with the same env form).
	EnvRetentionMaxAgePrefix = "KURA_RETENTION_MAX_AGE_"
	EnvRetentionFile         = "KURA_RETENTION_FILE"
)

// Bounds of a retention age. Below a second the sweep could not keep up with the rule; the
// upper bound keeps the Duration far from overflowing (about 290 years is the limit).
const (
	MinRetentionAge = time.Second
	MaxRetentionAge = 100 * 365 * 24 * time.Hour
)

// Bounds of the derived sweep interval: a twentieth of the shortest age (an object goes at
// most 5% late), at least every second, at most every five minutes.
const (
	minRetentionSweep = time.Second
	maxRetentionSweep = 5 * time.Minute
)

// maxRetentionFileBytes caps the retention file read at startup: it lists namespaces, not data.
const maxRetentionFileBytes = 1 << 20

// RetentionConfig is retention by age. The zero value is off.
type RetentionConfig struct {
	// MaxAge applies to namespaces without an override (KURA_RETENTION_MAX_AGE); 0: kept.
	MaxAge time.Duration
	// ByEnvName holds the KURA_RETENTION_MAX_AGE_<NAMESPACE> overrides, keyed by the env form
	// of the namespace (RetentionEnvName).
	ByEnvName map[string]time.Duration
	// ByNamespace holds the overrides of KURA_RETENTION_FILE, keyed by the exact namespace.
	ByNamespace map[string]time.Duration
	// File is KURA_RETENTION_FILE as given (empty: none).
	File string
	// SweepInterval is derived from the shortest age: see minRetentionSweep.
	SweepInterval time.Duration
}

// Enabled reports whether any namespace has a maximum age.
func (r RetentionConfig) Enabled() bool { return r.shortest() > 0 }

// MaxAgeFor returns the maximum age of a namespace's objects (0: kept however old): the
// file's entry for exactly that namespace, else the env override of its env form, else
// MaxAge.
func (r RetentionConfig) MaxAgeFor(namespace string) time.Duration {
	if a, ok := r.ByNamespace[namespace]; ok {
		return a
	}
	if len(r.ByEnvName) > 0 {
		if a, ok := r.ByEnvName[RetentionEnvName(namespace)]; ok {
			return a
		}
	}
	return r.MaxAge
}

func (r RetentionConfig) shortest() time.Duration {
	s := r.MaxAge
	for _, m := range []map[string]time.Duration{r.ByEnvName, r.ByNamespace} {
		for _, a := range m {
			if a > 0 && (s == 0 || a < s) {
				s = a
			}
		}
	}
	return s
}

// RetentionEnvName is the env form of a namespace: upper-cased, every character other than
// A–Z and 0–9 replaced by "_" ("web-app.v2" → "WEB_APP_V2"), so that
// KURA_RETENTION_MAX_AGE_WEB_APP_V2 names it. Namespaces that differ only in those characters
// share the form; KURA_RETENTION_FILE tells them apart.
func RetentionEnvName(namespace string) string {
	b := make([]byte, 0, len(namespace))
	for i := 0; i < len(namespace); i++ {
		c := namespace[i]
		switch {
		case c >= 'a' && c <= 'z':
			b = append(b, c-'a'+'A')
		case c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
			b = append(b, c)
		default:
			// A multi-byte UTF-8 character becomes one "_" per byte; the form only has to
			// be the same every time.
			b = append(b, '_')
		}
	}
	return string(b)
}

// parseRetentionAge reads a maximum age: a Go duration (90m, 72h, 1h30m), a whole number of
// days (30d), or 0 / off for "kept however old".
func parseRetentionAge(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if v == "0" || strings.EqualFold(v, "off") {
		return 0, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n < 0 || n > int64(MaxRetentionAge/(24*time.Hour)) {
			return 0, fmt.Errorf("%q is not a whole number of days (0 to %d)", v, int64(MaxRetentionAge/(24*time.Hour)))
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		d, err = time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("%q is not a duration (a Go duration such as 90m or 72h, a number of days such as 30d, or 0 / off)", v)
		}
	}
	switch {
	case d == 0:
		return 0, nil
	case d < MinRetentionAge:
		return 0, fmt.Errorf("%s is shorter than %s (use 0 or off to keep objects however old)", d, MinRetentionAge)
	case d > MaxRetentionAge:
		return 0, fmt.Errorf("%s is longer than %s", d, MaxRetentionAge)
	}
	return d, nil
}

// retention reads KURA_RETENTION_MAX_AGE, its per-namespace env overrides and
// KURA_RETENTION_FILE, and derives the sweep interval.
func (p *parser) retention(c *Config) {
	r := RetentionConfig{}
	if v, ok := p.get(EnvRetentionMaxAge); ok {
		a, err := parseRetentionAge(v)
		if err != nil {
			p.problem(EnvRetentionMaxAge, "%v", err)
		}
		r.MaxAge = a
	}
	var names []string
	for name := range p.env {
		if strings.HasPrefix(name, EnvRetentionMaxAgePrefix) {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	for _, name := range names {
		v, ok := p.get(name)
		if !ok {
			continue
		}
		form := strings.TrimPrefix(name, EnvRetentionMaxAgePrefix)
		if form == "" || strings.Trim(form, "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_") != "" {
			p.problem(name, "the part after %s must be a namespace's env form: upper-case A-Z, 0-9 and _ "+
				"(the namespace upper-cased, every other character replaced by _); list other namespaces in %s",
				EnvRetentionMaxAgePrefix, EnvRetentionFile)
			continue
		}
		a, err := parseRetentionAge(v)
		if err != nil {
			p.problem(name, "%v", err)
			continue
		}
		if r.ByEnvName == nil {
			r.ByEnvName = map[string]time.Duration{}
		}
		r.ByEnvName[form] = a
	}
	if path, ok := p.get(EnvRetentionFile); ok {
		r.File = path
		r.ByNamespace = p.retentionFile(path)
	}
	if s := r.shortest(); s > 0 {
		r.SweepInterval = min(max(s/20, minRetentionSweep), maxRetentionSweep)
	}
	c.Retention = r
}

// retentionFile reads "namespace = age" lines (# starts a comment; blank lines are skipped).
// Every bad line is reported with its number.
func (p *parser) retentionFile(path string) map[string]time.Duration {
	f, err := os.Open(path)
	if err != nil {
		p.problem(EnvRetentionFile, "cannot read %s: %v", path, err)
		return nil
	}
	defer func() { _ = f.Close() }()
	data, err := io.ReadAll(io.LimitReader(f, maxRetentionFileBytes+1))
	if err != nil {
		p.problem(EnvRetentionFile, "cannot read %s: %v", path, err)
		return nil
	}
	if len(data) > maxRetentionFileBytes {
		p.problem(EnvRetentionFile, "%s is larger than %d bytes", path, maxRetentionFileBytes)
		return nil
	}
	out := map[string]time.Duration{}
	firstLine := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), maxRetentionFileBytes)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// The age never contains "=", a namespace might: split at the last one.
		i := strings.LastIndex(line, "=")
		if i < 0 {
			p.problem(EnvRetentionFile, "%s line %d: %q is not \"namespace = age\"", path, n, line)
			continue
		}
		ns, age := strings.TrimSpace(line[:i]), strings.TrimSpace(line[i+1:])
		switch {
		case ns == "":
			p.problem(EnvRetentionFile, "%s line %d: the namespace is empty", path, n)
			continue
		case len(ns) > 1024 || !utf8.ValidString(ns) || strings.ContainsRune(ns, 0):
			p.problem(EnvRetentionFile, "%s line %d: %q is not a namespace id (at most 1024 bytes of UTF-8, no NUL)", path, n, ns)
			continue
		}
		a, err := parseRetentionAge(age)
		if err != nil {
			p.problem(EnvRetentionFile, "%s line %d (%s): %v", path, n, ns, err)
			continue
		}
		if first, dup := firstLine[ns]; dup {
			p.problem(EnvRetentionFile, "%s line %d: namespace %q is already given on line %d", path, n, ns, first)
			continue
		}
		firstLine[ns] = n
		out[ns] = a
	}
	if err := sc.Err(); err != nil {
		p.problem(EnvRetentionFile, "cannot read %s: %v", path, err)
	}
	return out
}
