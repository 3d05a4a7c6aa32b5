package reapi

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"lukechampine.com/blake3"

	"github.com/kuracache/kura/storage"
)

// hashSize is the length of every accepted hash: SHA-256 and BLAKE3 (its default output)
// both have 32 bytes.
const hashSize = sha256.Size

// digestFunction is one of the digest functions this server accepts. The REAPI's
// DigestFunction values are mapped onto it once, at the edge (checkDigestFunction, resource
// names), so handlers never see UNKNOWN or an unsupported value.
type digestFunction uint8

const (
	fnSHA256 digestFunction = iota
	fnBLAKE3
)

// supportedDigestFunctions are advertised in the capabilities, in order of preference.
var supportedDigestFunctions = []repb.DigestFunction_Value{repb.DigestFunction_SHA256, repb.DigestFunction_BLAKE3}

// emptyHashes are the hashes of zero bytes, by digest function: the empty blob is always
// present and never stored.
var emptyHashes = [...][hashSize]byte{fnSHA256: sha256.Sum256(nil), fnBLAKE3: blake3.Sum256(nil)}

func (f digestFunction) String() string {
	if f == fnBLAKE3 {
		return "blake3"
	}
	return "sha256"
}

// newHash returns a hasher of the function.
func (f digestFunction) newHash() hash.Hash {
	if f == fnBLAKE3 {
		return blake3.New(hashSize, nil)
	}
	return sha256.New()
}

// sum hashes data in memory.
func (f digestFunction) sum(data []byte) [hashSize]byte {
	if f == fnBLAKE3 {
		return blake3.Sum256(data)
	}
	return sha256.Sum256(data)
}

// namePrefix is what a blob's or action result's storage name starts with: nothing for
// SHA-256 (the names the Bazel HTTP cache shares), "blake3/" for BLAKE3, so a BLAKE3 object
// and a SHA-256 object with the same hex never collide. A '/' cannot occur in a hex hash, so
// the two name spaces are disjoint.
func (f digestFunction) namePrefix() string {
	if f == fnBLAKE3 {
		return "blake3/"
	}
	return ""
}

// digest is a validated digest of one of the supported functions. Handlers work on it, never
// on the wire strings.
type digest struct {
	fn   digestFunction
	hash [hashSize]byte
	size int64
}

// emptyDigest is the SHA-256 digest of zero bytes.
var emptyDigest = digest{hash: emptyHashes[fnSHA256]}

func (d digest) hex() string { return hex.EncodeToString(d.hash[:]) }

// String is the digest as error messages and logs show it: "{hash}/{size}", with the digest
// function first when it is not SHA-256 (as in resource names).
func (d digest) String() string {
	return d.fn.namePrefix() + d.hex() + "/" + strconv.FormatInt(d.size, 10)
}

func (d digest) isEmpty() bool { return d.size == 0 && d.hash == emptyHashes[d.fn] }

func (d digest) proto() *repb.Digest { return &repb.Digest{Hash: d.hex(), SizeBytes: d.size} }

// storageName is the digest's object name in the store (see namePrefix).
func (d digest) storageName() string { return d.fn.namePrefix() + d.hex() }

// parseHash accepts exactly 64 lowercase hex digits, the REAPI's form of a SHA-256 or BLAKE3
// hash. Upper case is refused rather than folded, so that the name we store under is the name
// the client will ask for and the digests we echo back are the ones it sent.
func parseHash(s string) ([hashSize]byte, error) {
	var h [hashSize]byte
	if len(s) != 2*hashSize {
		return h, fmt.Errorf("%w: hash %q has %d characters; a SHA-256 or BLAKE3 hash has 64",
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

// newDigest validates a hash string and a size of digest function f.
func (f digestFunction) newDigest(hash string, size int64) (digest, error) {
	h, err := parseHash(hash)
	if err != nil {
		return digest{}, err
	}
	if size < 0 {
		return digest{}, fmt.Errorf("%w: digest %s has a negative size %d", errInvalidArgument, hash, size)
	}
	return digest{fn: f, hash: h, size: size}, nil
}

// parse validates a digest of digest function f from a request.
func (f digestFunction) parse(d *repb.Digest) (digest, error) {
	if d == nil {
		return digest{}, fmt.Errorf("%w: digest is missing", errInvalidArgument)
	}
	return f.newDigest(d.GetHash(), d.GetSizeBytes())
}

// checkDigestFunction maps a request's digest_function onto the functions served. UNKNOWN
// (unset) is SHA-256: the REAPI lets the server infer the function from the hash length, both
// functions have 64-digit hashes, and every client that predates the field (Bazel 4.2) means
// SHA-256.
func checkDigestFunction(f repb.DigestFunction_Value) (digestFunction, error) {
	switch f {
	case repb.DigestFunction_UNKNOWN, repb.DigestFunction_SHA256:
		return fnSHA256, nil
	case repb.DigestFunction_BLAKE3:
		return fnBLAKE3, nil
	}
	return 0, fmt.Errorf("%w: digest function %s is not supported; this server uses SHA256 and BLAKE3", errInvalidArgument, f)
}

// casKey and acKey are the storage identities shared with the Bazel HTTP cache (for SHA-256;
// BLAKE3 names carry their prefix, see namePrefix).
func casKey(tenant, namespace string, d digest) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: namespace, Kind: storage.KindCAS, Name: d.storageName()}
}

func acKey(tenant, namespace string, d digest) storage.Key {
	return storage.Key{Tenant: tenant, Namespace: namespace, Kind: storage.KindAC, Name: d.storageName()}
}

// truncate keeps client-supplied strings short in error messages.
func truncate(s string) string {
	const limit = 80
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "…"
}
