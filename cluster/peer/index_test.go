package peer

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// Digests, listings (with paging, bucket filters and evicted stubs) and tombstones arrive
// exactly as the peer's index returns them.
func TestIndexRoundTrips(t *testing.T) {
	for _, tc := range []struct {
		name    string
		backend func(t *testing.T) Backend
	}{
		{"disk", func(t *testing.T) Backend { return diskStore(t) }},
		{"memory", func(t *testing.T) Backend { return storagetest.NewMemory() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			backend := tc.backend(t)
			p := startPlane(t, backend, ServerConfig{}, ClientConfig{})
			ctx := testCtx(t)

			const n = 25
			for i := range n {
				body := fmt.Appendf(nil, "object %d", i)
				k := key(storage.KindGradle, fmt.Sprintf("obj-%02d", i))
				if i%5 == 0 {
					k.Kind = storage.KindKeyValue
				}
				if _, err := p.client.PushObject(ctx, p.addr, infoFor(k, body, version(i+1)), bytes.NewReader(body)); err != nil {
					t.Fatal(err)
				}
			}
			stub := infoFor(key(storage.KindXcode, "evicted-elsewhere"), []byte("gone"), version(100))
			if err := backend.ApplyStub(ctx, stub); err != nil {
				t.Fatal(err)
			}
			ts := storage.Tombstone{Tenant: "acme", Namespace: "old", Version: version(7)}
			if err := p.client.PushTombstone(ctx, p.addr, ts); err != nil {
				t.Fatal(err)
			}

			wantDigests, wantObjects, err := backend.BucketDigests(ctx, storage.DigestBucketBits)
			if err != nil {
				t.Fatal(err)
			}
			digests, objects, err := p.client.BucketDigests(ctx, p.addr, storage.DigestBucketBits)
			if err != nil {
				t.Fatalf("BucketDigests: %v", err)
			}
			if !bytes.Equal(digests, wantDigests) || objects != wantObjects || objects != n+1 {
				t.Fatalf("BucketDigests: %d bytes, %d objects; want the index's %d bytes, %d objects (%d)", len(digests), objects, len(wantDigests), wantObjects, n+1)
			}

			want, _, err := backend.ListObjects(ctx, storage.DigestBucketBits, nil, nil, 1000)
			if err != nil {
				t.Fatal(err)
			}
			got := listAll(t, p, nil, 4)
			if !slices.Equal(got, want) || len(got) != n+1 {
				t.Fatalf("paged listing (%d) differs from the index's (%d)", len(got), len(want))
			}
			var sawStub bool
			for _, o := range got {
				if o.Info.Key == stub.Key {
					sawStub = o.Evicted && o.Info == stub
				} else if o.Evicted {
					t.Fatalf("%s listed as evicted", o.Info.Key)
				}
			}
			if !sawStub {
				t.Fatal("the evicted stub did not arrive as Evicted with its Info")
			}

			// A bucket filter returns exactly the objects of those buckets.
			buckets := []uint32{0, 3, 512, 1023}
			wantSome, _, err := backend.ListObjects(ctx, storage.DigestBucketBits, buckets, nil, 1000)
			if err != nil {
				t.Fatal(err)
			}
			if gotSome := listAll(t, p, buckets, 2); !slices.Equal(gotSome, wantSome) {
				t.Fatalf("filtered listing %v, want %v", gotSome, wantSome)
			}

			tombs, err := p.client.ListTombstones(ctx, p.addr)
			if err != nil || !slices.Equal(tombs, []storage.Tombstone{ts}) {
				t.Fatalf("ListTombstones = %v, %v; want [%v]", tombs, err, ts)
			}

			// Bucket counts the index does not support come back as its error.
			if _, _, err := p.client.BucketDigests(ctx, p.addr, storage.DigestBucketBits+1); !errors.Is(err, storage.ErrInvalidKey) {
				t.Fatalf("BucketDigests(unsupported bits) = %v, want ErrInvalidKey from the index", err)
			}
			if _, _, err := p.client.BucketDigests(ctx, p.addr, MaxBucketBits+1); !errors.Is(err, ErrMalformed) {
				t.Fatalf("BucketDigests(too many bits) = %v, want ErrMalformed", err)
			}
		})
	}
}

func listAll(t *testing.T, p *plane, buckets []uint32, limit int) []storage.ObjectSummary {
	t.Helper()
	var all []storage.ObjectSummary
	var token []byte
	for pages := 0; ; pages++ {
		if pages > 1000 {
			t.Fatal("listing never ends")
		}
		page, next, err := p.client.ListObjects(testCtx(t), p.addr, storage.DigestBucketBits, buckets, token, limit)
		if err != nil {
			t.Fatalf("ListObjects: %v", err)
		}
		if len(page) > limit {
			t.Fatalf("page of %d, limit %d", len(page), limit)
		}
		all = append(all, page...)
		if next == nil {
			return all
		}
		token = next
	}
}
