package load

import (
	"crypto/sha256"
	"testing"
)

// The saved-state shortcut must give the digest of the whole blob, and every blob is new.
func TestBlobGenDigestsAreTheBlobsAndUnique(t *testing.T) {
	u := &Uniq{Nonce: [8]byte{1, 2, 3}}
	seen := map[[32]byte]bool{}
	for _, size := range []int{32, 1 << 10, 1<<20 + 7} {
		g := NewBlobGen(u, size, 5)
		for range 3 {
			data, sum := g.Next()
			if len(data) != size || sha256.Sum256(data) != sum {
				t.Fatalf("size %d: digest %x is not the blob's", size, sum)
			}
			if seen[sum] {
				t.Fatalf("size %d: blob %x generated twice", size, sum)
			}
			seen[sum] = true
		}
	}
}
