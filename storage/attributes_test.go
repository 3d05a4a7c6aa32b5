package storage

import (
	"errors"
	"strings"
	"testing"
)

func TestAttributesCanonicalRoundTrip(t *testing.T) {
	a, err := NewAttributes(map[string]string{"turbo.tag": "c2ln", "turbo.duration-ms": "1234", "unset": ""})
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewAttributes(map[string]string{"turbo.duration-ms": "1234", "turbo.tag": "c2ln"})
	if err != nil {
		t.Fatal(err)
	}
	// Equal sets are equal values whatever the map order, and an empty value is no attribute.
	if a != b || a.Get("turbo.tag") != "c2ln" || a.Get("turbo.duration-ms") != "1234" || a.Get("unset") != "" {
		t.Fatalf("a=%v b=%v", a.Map(), b.Map())
	}
	var names []string
	for n := range a.All() {
		names = append(names, n)
	}
	if strings.Join(names, ",") != "turbo.duration-ms,turbo.tag" {
		t.Fatalf("All yields %v, want sorted names", names)
	}
	back, err := ParseAttributes(a.Encoded())
	if err != nil || back != a {
		t.Fatalf("ParseAttributes(Encoded) = %v, %v", back.Map(), err)
	}
	zero, err := NewAttributes(nil)
	if err != nil || !zero.IsZero() || zero.Encoded() != nil || zero.Map() != nil {
		t.Fatalf("empty attributes: %v %v", zero, err)
	}
	if z, err := ParseAttributes(nil); err != nil || !z.IsZero() {
		t.Fatalf("ParseAttributes(nil) = %v, %v", z, err)
	}
}

func TestAttributesRejectBadInput(t *testing.T) {
	many := map[string]string{}
	for i := range MaxAttributes + 1 {
		many[string(rune('a'+i))] = "v"
	}
	for name, m := range map[string]map[string]string{
		"too many":        many,
		"uppercase name":  {"Tag": "v"},
		"long name":       {strings.Repeat("n", MaxAttributeNameBytes+1): "v"},
		"empty name":      {"": "v"},
		"newline value":   {"tag": "a\r\nX-Injected: 1"},
		"nul value":       {"tag": "a\x00"},
		"invalid utf-8":   {"tag": "\xff"},
		"too many bytes":  {"tag": strings.Repeat("v", MaxAttributesBytes)},
		"space in a name": {"a b": "v"},
	} {
		if _, err := NewAttributes(m); !errors.Is(err, ErrInvalidAttributes) || !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidAttributes", name, err)
		}
	}
	good, _ := NewAttributes(map[string]string{"a": "1", "b": "2"})
	enc := good.Encoded()
	for name, b := range map[string][]byte{
		"truncated":      enc[:len(enc)-1],
		"trailing bytes": append(append([]byte{}, enc...), 0),
		"zero count":     {0},
		"unsorted":       {2, 1, 'b', 1, '2', 1, 'a', 1, '1'},
		"duplicate":      {2, 1, 'a', 1, '2', 1, 'a', 1, '1'},
		"empty value":    {1, 1, 'a', 0},
		"bad name":       {1, 1, 'A', 1, '1'},
		"huge length":    {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
	} {
		if _, err := ParseAttributes(b); !errors.Is(err, ErrInvalidAttributes) {
			t.Errorf("%s: err = %v, want ErrInvalidAttributes", name, err)
		}
	}
}

func FuzzParseAttributes(f *testing.F) {
	good, _ := NewAttributes(map[string]string{"turbo.duration-ms": "12", "turbo.tag": "abc"})
	f.Add(good.Encoded())
	f.Add([]byte{1, 1, 'a', 1, '1'})
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAttributes(b)
		if err != nil {
			return
		}
		// Whatever parses is canonical: it encodes back to the same bytes and rebuilds equal.
		if string(a.Encoded()) != string(b) {
			t.Fatalf("re-encoding %x gave %x", b, a.Encoded())
		}
		again, err := NewAttributes(a.Map())
		if err != nil || again != a {
			t.Fatalf("NewAttributes(Map) = %v, %v", again.Map(), err)
		}
	})
}
