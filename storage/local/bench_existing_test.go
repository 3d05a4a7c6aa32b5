package local

import (
	"bytes"
	"context"
	"crypto/sha256"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// BenchmarkPutExistingImmutable is the write of a key the store already holds: a client's own
// (local) and a peer's later replicated copy. Both are answered from the manifest cache without
// reading the body, after the conflict rule decided the stored copy stays.
func BenchmarkPutExistingImmutable(b *testing.B) {
	s := benchStore(b)
	key := storage.Key{Tenant: "bench", Namespace: "ns", Kind: storage.KindGradle, Name: "existing"}
	body := storagetest.Bytes(3, 1<<10)
	res, err := s.Put(context.Background(), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))})
	if err != nil || !res.Created {
		b.Fatal(res, err)
	}
	other := sha256.Sum256([]byte("another body"))
	for _, c := range []struct {
		name string
		opts storage.PutOptions
	}{
		{"local", storage.PutOptions{Size: 1 << 10}},
		{"replicated-later", storage.PutOptions{Size: 1 << 10, Version: res.Info.Version + 1, ExpectedSHA256: &other}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				r, err := s.Put(context.Background(), key, bytes.NewReader(body), c.opts)
				if err != nil || r.Created {
					b.Fatal(r, err)
				}
			}
		})
	}
}
