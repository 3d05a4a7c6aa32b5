package reapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/kuracache/kura/storage"
)

// digest is a validated SHA-256 digest. Handlers work on it, never on the wire strings.
type digest struct {
	hash [sha256.Size]byte
	size int64
}

// emptyDigest is the digest of zero bytes: always present, never stored.
var emptyDigest = digest{hash: sha256.Sum256(nil)}

func (d digest) hex() string { return hex.EncodeToString(d.hash[:]) }

func (d digest) String() string { return d.hex() + "/" + strconv.FormatInt(d.size, 10) }

func (d digest) isEmpty() bool { return d == emptyDigest }

func (d digest) proto() *repb.Digest { return &repb.Digest{Hash: d.hex(), SizeBytes: d.size} }

// parseHash accepts exactly 64 lowercase hex digits, the REAPI's form of a SHA-256. Upper
// case is refused rather than folded, so that the name we store under is the name the client
// will ask for and the digests we echo back are the ones it sent.
func parseHash(s string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	if len(s) != 2*sha256.Size {
		return h, fmt.Errorf("%w: hash %q has %d characters; a SHA-256 hash has 64 (only SHA-256 is supported)",
			errInvalidArgument, truncate(s), len(s))
	}
	// One table lookup per character (FindMissingBlobs parses thousands per call); an invalid
	// character has a high nibble set, so one OR at the end catches any.
	var bad byte
	for i := range h {
		hi, lo := hexValue[s[2*i]], hexValue[s[2*i+1]]
		bad |= hi | lo
		h[i] = hi<<4 | lo
	}
	if bad > 0xf {
		return h, fmt.Errorf("%w: hash %q is not lowercase hexadecimal", errInvalidArgument, truncate(s))
	}
	return h, nil
}

// hexValue maps a lowercase hex digit to its value and everything else to 0xff.
var hexValue = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c - 'a' + 10)
	}
	return t
}()

// newDigest validates a hash string and a size.
func newDigest(hash string, size int64) (digest, error) {
	h, err := parseHash(hash)
	if err != nil {
		return digest{}, err
	}
	if size < 0 {
		return digest{}, fmt.Errorf("%w: digest %s has a negative size %d", errInvalidArgument, hash, size)
	}
	return digest{hash: h, size: size}, nil
}

// parseDigest validates a digest from a request.
func parseDigest(d *repb.Digest) (digest, error) {
	if d == nil {
		return digest{}, fmt.Errorf("%w: digest is missing", errInvalidArgument)
	}
	return newDigest(d.GetHash(), d.GetSizeBytes())
}

// checkDigestFunction accepts SHA256 and UNKNOWN (unset: the REAPI lets the server infer it
// from the hash length, and only SHA-256 lengths are accepted anyway).
func checkDigestFunction(f repb.DigestFunction_Value) error {
	switch f {
	case repb.DigestFunction_UNKNOWN, repb.DigestFunction_SHA256:
		return nil
	}
	return fmt.Errorf("%w: digest function %s is not supported; this server uses SHA256", errInvalidArgument, f)
}

// casKey and acKey are the storage identities shared with the Bazel HTTP cache.
func casKey(tenant, namespace string, d digest) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: namespace, Kind: storage.KindCAS, Name: d.hex()}
}

func acKey(tenant, namespace string, d digest) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: namespace, Kind: storage.KindAC, Name: d.hex()}
}

// truncate keeps client-supplied strings short in error messages.
func truncate(s string) string {
	const limit = 80
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
