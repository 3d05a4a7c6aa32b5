package config

import "strings"

// Usage is the body of `kura --help`: how values are written, then every variable grouped
// like docs/contract.md §1, with its default (or the rule deriving it) and its meaning.
func Usage() string {
	var b strings.Builder
	// No title or usage line: cmd/kura prints those (with the version) above this text.
	b.WriteString(`Kura is configured only through KURA_* environment variables. Every variable has a
default, so kura with none set starts a working single node. An empty value means the
default. Values marked auto are derived at startup from the host (file-descriptor limit,
memory limit, CPU count) and also accept the literal value auto. Sizes are bytes,
optionally with a KiB, MiB, GiB or TiB suffix; *_MS values are milliseconds; booleans
are true/false, 1/0, yes/no or on/off. Every invalid setting is reported at once and
kura exits non-zero; the effective values are logged at startup.
`)
	for _, g := range variables {
		b.WriteString("\n")
		b.WriteString(g.title)
		b.WriteString("\n")
		for _, v := range g.vars {
			b.WriteString("  ")
			b.WriteString(v.name)
			b.WriteString(" = ")
			b.WriteString(v.def)
			b.WriteString("\n      ")
			b.WriteString(v.meaning)
			b.WriteString("\n")
		}
	}
	return b.String()
}
