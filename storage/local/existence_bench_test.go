package local

import (
	"fmt"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

// BenchmarkFindMissing is FindMissing of 1,000 CAS keys (64-hex names, 500 stored) answered
// from the existence index and, for comparison, from the manifests (cache, then Pebble), which
// is how every call was answered before the index.
//
//	go test -run '^$' -bench 'FindMissing$' -benchmem ./storage/local/
func BenchmarkFindMissing(b *testing.B) {
	s := benchStore(b)
	waitExistence(b, s)
	keys := make([]storage.Key, 1000)
	for i := range keys {
		keys[i] = storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindCAS, Name: fmt.Sprintf("%064x", i)}
		if i%2 == 0 {
			if _, err := s.Put(ctx(b), keys[i], strings.NewReader(keys[i].Name), storage.PutOptions{Size: 64}); err != nil {
				b.Fatal(err)
			}
		}
	}
	for _, c := range []struct {
		name string
		find func([]storage.Key) ([]storage.Key, error)
	}{
		{"index", func(k []storage.Key) ([]storage.Key, error) { return s.FindMissing(ctx(b), k) }},
		{"manifests", s.findMissingStored},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if m, err := c.find(keys); err != nil || len(m) != 500 {
					b.Fatalf("FindMissing: %d missing, %v", len(m), err)
				}
			}
		})
	}
}
