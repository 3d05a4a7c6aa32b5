package storage

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// Kind names the protocol family an object belongs to. It is part of the object's identity,
// so a Gradle entry and an Nx entry with the same key never collide.
type Kind string

// The kinds Kura stores. Bazel's HTTP cache and REAPI share KindCAS and KindAC, so a blob
// written by one protocol is readable by the other.
const (
	KindXcode    Kind = "xcode"    // Xcode CAS artifacts (/api/cache/cas)
	KindKeyValue Kind = "keyvalue" // keyvalue documents (/api/cache/keyvalue), kept inline in metadata
	KindGradle   Kind = "gradle"   // Gradle build cache entries
	KindModule   Kind = "module"   // multipart module cache artifacts
	KindNx       Kind = "nx"       // Nx self-hosted cache artifacts
	KindMetro    Kind = "metro"    // Metro HttpStore entries
	KindCAS      Kind = "cas"      // Bazel content-addressable blobs (REAPI and HTTP /cas/)
	KindAC       Kind = "ac"       // Bazel action-cache entries (REAPI and HTTP /ac/)
	KindTurbo    Kind = "turbo"    // Turborepo remote cache artifacts (/v8/artifacts)
	// KindObjects are plain HTTP objects (/api/cache/objects: ccache's flat and subdirs
	// layouts, WebDAV-style clients). They are mutable, and a DELETE is recorded as a newer
	// write of a delete marker (see ObjectDeletedContentType).
	KindObjects Kind = "objects"
)

// ObjectDeletedContentType marks a KindObjects object as deleted. A delete in a leaderless
// cache must replicate and must not be undone by an older copy arriving later, which is what
// a last-writer-wins write already guarantees: the marker is an empty body stored with this
// content type under the deleted key, replicated, compared and evicted like any other write,
// and read as "not found". Clients cannot store it (the objects surface refuses it).
const ObjectDeletedContentType = "application/vnd.kura.deleted"

// Kinds lists every valid kind, in a fixed order (used by namespace clean and metrics).
var Kinds = []Kind{KindXcode, KindKeyValue, KindGradle, KindModule, KindNx, KindMetro, KindCAS, KindAC, KindObjects, KindTurbo}

// Valid reports whether k is one of the kinds above.
func (k Kind) Valid() bool {
	for _, known := range Kinds {
		if k == known {
			return true
		}
	}
	return false
}

// LastWriterWins reports whether a newer write replaces an existing object of this kind.
// Keyvalue documents, action-cache entries and plain objects are mutable (last writer wins,
// by Version): ccache rewrites its manifests in place, and a plain object's DELETE is a newer
// write. Every other kind is immutable: the cluster keeps its first writer (the lowest
// version), and a node's own later writes are no-ops. Replaces applies the rule.
func (k Kind) LastWriterWins() bool { return k == KindKeyValue || k == KindAC || k == KindObjects }

// MaxIdentifierBytes bounds tenant ids, namespace ids and object names.
const MaxIdentifierBytes = 1024

// Key is the full identity of a stored object. Two keys that differ in any field name
// different objects: tenant A can never read tenant B's objects.
type Key struct {
	Tenant    string
	Namespace string
	Kind      Kind
	Name      string
}

// String renders the key for logs; it is not an encoding and is never parsed.
func (k Key) String() string {
	return fmt.Sprintf("%s/%s/%s/%s", k.Tenant, k.Namespace, k.Kind, k.Name)
}

// Validate checks every field; the error wraps ErrInvalidKey and names the bad field.
func (k Key) Validate() error {
	if err := ValidateIdentifier("tenant_id", k.Tenant); err != nil {
		return err
	}
	if err := ValidateIdentifier("namespace_id", k.Namespace); err != nil {
		return err
	}
	if !k.Kind.Valid() {
		return fmt.Errorf("%w: unknown kind %q", ErrInvalidKey, k.Kind)
	}
	return ValidateIdentifier("key", k.Name)
}

// ValidateIdentifier checks one identifier taken from a request: non-empty, at most
// MaxIdentifierBytes, valid UTF-8, no NUL byte. Identifiers are never used as file paths,
// so no further restriction is needed for safety; protocols add their own patterns.
func ValidateIdentifier(field, value string) error {
	switch {
	case value == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidKey, field)
	case len(value) > MaxIdentifierBytes:
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidKey, field, MaxIdentifierBytes)
	case !utf8.ValidString(value):
		return fmt.Errorf("%w: %s is not valid UTF-8", ErrInvalidKey, field)
	case strings.IndexByte(value, 0) >= 0:
		return fmt.Errorf("%w: %s contains a NUL byte", ErrInvalidKey, field)
	}
	return nil
}
