package storage

import (
	"encoding/binary"
	"errors"
	"fmt"
	"iter"
	"sort"
	"strings"
	"unicode/utf8"
)

// Limits of Attributes. They are small on purpose: attributes travel in every manifest read,
// in every replication header and in the manifest cache, next to a body that may be tiny.
const (
	// MaxAttributes is the most attributes one object may carry.
	MaxAttributes = 8
	// MaxAttributeNameBytes bounds one attribute name.
	MaxAttributeNameBytes = 64
	// MaxAttributesBytes bounds the encoded form of all of an object's attributes.
	MaxAttributesBytes = 2048
)

// ErrInvalidAttributes marks attributes that break the rules above; it wraps ErrInvalidKey so
// front ends answer it as bad client input.
var ErrInvalidAttributes = fmt.Errorf("%w: invalid attributes", ErrInvalidKey)

// Attributes are small named strings stored with an object and served back with it, for
// protocols whose clients attach metadata to a body (Turborepo's task duration and artifact
// signature). They belong to the write that produced the body: an immutable object keeps the
// attributes of its first writer, and they replicate with it.
//
// The value is immutable and comparable (Info stays comparable with ==): it holds the
// canonical encoding, names sorted, so two equal sets are equal values. The zero value holds
// no attribute.
type Attributes struct{ enc string }

// NewAttributes validates m and returns it as Attributes. Names are 1..MaxAttributeNameBytes
// of [a-z0-9._-]; values are valid UTF-8 without NUL or line breaks (they are sent back as
// HTTP headers); the whole set obeys MaxAttributes and MaxAttributesBytes. An empty value
// means the attribute is absent.
func NewAttributes(m map[string]string) (Attributes, error) {
	names := make([]string, 0, len(m))
	for name, v := range m {
		if v != "" {
			names = append(names, name)
		}
	}
	if len(names) == 0 {
		return Attributes{}, nil
	}
	if len(names) > MaxAttributes {
		return Attributes{}, fmt.Errorf("%w: %d attributes, at most %d", ErrInvalidAttributes, len(names), MaxAttributes)
	}
	sort.Strings(names)
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, name := range names {
		if err := validateAttribute(name, m[name]); err != nil {
			return Attributes{}, err
		}
		b = binary.AppendUvarint(b, uint64(len(name)))
		b = append(b, name...)
		b = binary.AppendUvarint(b, uint64(len(m[name])))
		b = append(b, m[name]...)
	}
	if len(b) > MaxAttributesBytes {
		return Attributes{}, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrInvalidAttributes, len(b), MaxAttributesBytes)
	}
	return Attributes{enc: string(b)}, nil
}

func validateAttribute(name, value string) error {
	if name == "" || len(name) > MaxAttributeNameBytes {
		return fmt.Errorf("%w: name %q must have 1 to %d bytes", ErrInvalidAttributes, name, MaxAttributeNameBytes)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Errorf("%w: name %q may hold only a-z, 0-9, '.', '_' and '-'", ErrInvalidAttributes, name)
		}
	}
	if !utf8.ValidString(value) || strings.ContainsAny(value, "\x00\r\n") {
		return fmt.Errorf("%w: value of %q must be valid UTF-8 without NUL or line breaks", ErrInvalidAttributes, name)
	}
	return nil
}

// ParseAttributes decodes the canonical encoding (Encoded) and checks every rule again, so a
// damaged or hostile encoding from disk or a peer never yields attributes NewAttributes would
// refuse.
func ParseAttributes(enc []byte) (Attributes, error) {
	if len(enc) == 0 {
		return Attributes{}, nil
	}
	if len(enc) > MaxAttributesBytes {
		return Attributes{}, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrInvalidAttributes, len(enc), MaxAttributesBytes)
	}
	m := map[string]string{}
	b := enc
	next := func() (string, error) {
		n, k := binary.Uvarint(b)
		if k <= 0 || n > uint64(len(b)-k) {
			return "", errors.New("truncated field")
		}
		v := string(b[k : k+int(n)])
		b = b[k+int(n):]
		return v, nil
	}
	count, k := binary.Uvarint(b)
	if k <= 0 || count == 0 || count > MaxAttributes {
		return Attributes{}, fmt.Errorf("%w: bad attribute count", ErrInvalidAttributes)
	}
	b = b[k:]
	prev := ""
	for i := uint64(0); i < count; i++ {
		name, err := next()
		if err != nil {
			return Attributes{}, fmt.Errorf("%w: %v", ErrInvalidAttributes, err)
		}
		value, err := next()
		if err != nil {
			return Attributes{}, fmt.Errorf("%w: %v", ErrInvalidAttributes, err)
		}
		if i > 0 && name <= prev {
			return Attributes{}, fmt.Errorf("%w: names not in canonical order", ErrInvalidAttributes)
		}
		if value == "" {
			return Attributes{}, fmt.Errorf("%w: empty value of %q", ErrInvalidAttributes, name)
		}
		prev = name
		m[name] = value
	}
	if len(b) != 0 {
		return Attributes{}, fmt.Errorf("%w: %d trailing bytes", ErrInvalidAttributes, len(b))
	}
	return NewAttributes(m)
}

// Encoded returns the canonical encoding (empty for no attributes), which ParseAttributes
// reads back.
func (a Attributes) Encoded() []byte {
	if a.enc == "" {
		return nil
	}
	return []byte(a.enc)
}

// Size is the length of the canonical encoding, for memory accounting.
func (a Attributes) Size() int { return len(a.enc) }

// IsZero reports whether a holds no attribute.
func (a Attributes) IsZero() bool { return a.enc == "" }

// All yields every attribute, names in ascending order.
func (a Attributes) All() iter.Seq2[string, string] {
	return func(yield func(string, string) bool) {
		if a.enc == "" {
			return
		}
		b := []byte(a.enc)
		field := func() string {
			n, k := binary.Uvarint(b)
			v := string(b[k : k+int(n)])
			b = b[k+int(n):]
			return v
		}
		// The encoding was validated when a was built, so it is read without checks.
		count, k := binary.Uvarint(b)
		b = b[k:]
		for range count {
			name := field()
			if !yield(name, field()) {
				return
			}
		}
	}
}

// Get returns the value of name, or "" when absent.
func (a Attributes) Get(name string) string {
	for n, v := range a.All() {
		if n == name {
			return v
		}
	}
	return ""
}

// Map returns the attributes as a new map (nil when there are none).
func (a Attributes) Map() map[string]string {
	var m map[string]string
	for n, v := range a.All() {
		if m == nil {
			m = map[string]string{}
		}
		m[n] = v
	}
	return m
}
