package reapi

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/kuracache/kura/storage"
)

// maxResourceNameBytes bounds a ByteStream resource name: an instance name of at most
// storage.MaxIdentifierBytes plus the fixed parts and some optional metadata.
const maxResourceNameBytes = 4 * storage.MaxIdentifierBytes

// reservedSegments may not appear in an instance name (REAPI: "a path segment cannot equal
// any of the following keywords"), which is what makes resource names parseable.
var reservedSegments = map[string]bool{
	"blobs": true, "uploads": true, "actions": true, "actionResults": true,
	"operations": true, "capabilities": true, "compressed-blobs": true,
}

// digestFunctionSegments are the lowercase DigestFunction names a resource name may carry
// before the hash. blake3 selects BLAKE3; sha256 is accepted too although the REAPI says
// clients omit it; the others get a precise error.
var digestFunctionSegments = map[string]bool{
	"sha256": true, "sha1": true, "md5": true, "vso": true, "sha384": true, "sha512": true,
	"murmur3": true, "sha256tree": true, "blake3": true, "gitsha1": true,
}

// resourceName is a parsed ByteStream resource name.
type resourceName struct {
	instance   string // as sent; "" when absent
	uploadID   string // Write only
	compressor repb.Compressor_Value
	digest     digest
}

// String renders the canonical form (without optional metadata; with the digest-function
// segment only for BLAKE3, as the REAPI's grammar has it).
func (r resourceName) String(write bool) string {
	var b strings.Builder
	if r.instance != "" {
		b.WriteString(r.instance)
		b.WriteByte('/')
	}
	if write {
		b.WriteString("uploads/")
		b.WriteString(r.uploadID)
		b.WriteByte('/')
	}
	if r.compressor == repb.Compressor_IDENTITY {
		b.WriteString("blobs/")
	} else {
		b.WriteString("compressed-blobs/")
		b.WriteString(strings.ToLower(r.compressor.String()))
		b.WriteByte('/')
	}
	b.WriteString(r.digest.fn.namePrefix())
	b.WriteString(r.digest.hex())
	b.WriteByte('/')
	b.WriteString(strconv.FormatInt(r.digest.size, 10))
	return b.String()
}

// parseReadResourceName parses `[{instance}/]blobs/[{digest_function}/]{hash}/{size}` and
// `[{instance}/]compressed-blobs/{compressor}/[{digest_function}/]{hash}/{size}`.
func parseReadResourceName(name string) (resourceName, error) {
	segs, err := splitResourceName(name)
	if err != nil {
		return resourceName{}, err
	}
	i := indexOfAny(segs, "blobs", "compressed-blobs")
	if i < 0 {
		return resourceName{}, fmt.Errorf("%w: resource name %q: expected [{instance}/]blobs/{hash}/{size} or [{instance}/]compressed-blobs/zstd/{hash}/{size}",
			errInvalidArgument, truncate(name))
	}
	var r resourceName
	if r.instance, err = instanceFromSegments(name, segs[:i]); err != nil {
		return resourceName{}, err
	}
	rest, err := r.parseBlobPart(name, segs[i:])
	if err != nil {
		return resourceName{}, err
	}
	if len(rest) != 0 {
		return resourceName{}, fmt.Errorf("%w: resource name %q: unexpected %q after the size",
			errInvalidArgument, truncate(name), truncate(strings.Join(rest, "/")))
	}
	return r, nil
}

// parseWriteResourceName parses `[{instance}/]uploads/{uuid}/blobs/[{digest_function}/]{hash}/{size}[/{metadata}…]`
// and the `compressed-blobs/{compressor}/…` form. The upload id is taken as an opaque token
// (the REAPI asks clients for a UUID but servers gain nothing by rejecting other ids), and
// the optional metadata is ignored.
func parseWriteResourceName(name string) (resourceName, error) {
	segs, err := splitResourceName(name)
	if err != nil {
		return resourceName{}, err
	}
	i := indexOfAny(segs, "uploads")
	if i < 0 || i+2 >= len(segs) {
		return resourceName{}, fmt.Errorf("%w: resource name %q: expected [{instance}/]uploads/{uuid}/blobs/{hash}/{size} or [{instance}/]uploads/{uuid}/compressed-blobs/zstd/{hash}/{size}",
			errInvalidArgument, truncate(name))
	}
	var r resourceName
	if r.instance, err = instanceFromSegments(name, segs[:i]); err != nil {
		return resourceName{}, err
	}
	r.uploadID = segs[i+1]
	if reservedSegments[r.uploadID] {
		return resourceName{}, fmt.Errorf("%w: resource name %q: the upload id is missing after uploads/",
			errInvalidArgument, truncate(name))
	}
	if _, err := r.parseBlobPart(name, segs[i+2:]); err != nil {
		return resourceName{}, err
	}
	return r, nil
}

// parseBlobPart parses `blobs/…/{hash}/{size}` or `compressed-blobs/{compressor}/…` and
// returns the segments after the size.
func (r *resourceName) parseBlobPart(name string, segs []string) ([]string, error) {
	switch {
	case len(segs) > 0 && segs[0] == "blobs":
		r.compressor = repb.Compressor_IDENTITY
		segs = segs[1:]
	case len(segs) > 1 && segs[0] == "compressed-blobs":
		c, err := parseCompressor(segs[1])
		if err != nil {
			return nil, fmt.Errorf("resource name %q: %w", truncate(name), err)
		}
		r.compressor = c
		segs = segs[2:]
	default:
		return nil, fmt.Errorf("%w: resource name %q: expected blobs/{hash}/{size} or compressed-blobs/zstd/{hash}/{size} after the instance name",
			errInvalidArgument, truncate(name))
	}
	fn := fnSHA256
	if len(segs) > 0 && digestFunctionSegments[segs[0]] {
		switch segs[0] {
		case "sha256":
		case "blake3":
			fn = fnBLAKE3
		default:
			return nil, fmt.Errorf("%w: resource name %q: digest function %s is not supported; this server uses sha256 and blake3",
				errInvalidArgument, truncate(name), segs[0])
		}
		segs = segs[1:]
	}
	if len(segs) < 2 {
		return nil, fmt.Errorf("%w: resource name %q: expected {hash}/{size}", errInvalidArgument, truncate(name))
	}
	size, err := parseSize(segs[1])
	if err != nil {
		return nil, fmt.Errorf("resource name %q: %w", truncate(name), err)
	}
	if r.digest, err = fn.newDigest(segs[0], size); err != nil {
		return nil, fmt.Errorf("resource name %q: %w", truncate(name), err)
	}
	return segs[2:], nil
}

// parseCompressor accepts the compressors of compressed-blobs resource names.
func parseCompressor(s string) (repb.Compressor_Value, error) {
	switch s {
	case "zstd":
		return repb.Compressor_ZSTD, nil
	case "identity":
		return 0, fmt.Errorf("%w: compressor identity is not allowed in compressed-blobs; use blobs/", errInvalidArgument)
	case "deflate", "brotli":
		return 0, fmt.Errorf("%w: compressor %s is not supported; this server supports zstd", errInvalidArgument, s)
	}
	return 0, fmt.Errorf("%w: unknown compressor %q", errInvalidArgument, truncate(s))
}

// parseSize accepts a decimal size: digits only (no sign, no spaces), fitting an int64.
func parseSize(s string) (int64, error) {
	if s == "" || len(s) > 19 {
		return 0, fmt.Errorf("%w: size %q is not a decimal byte count", errInvalidArgument, truncate(s))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, fmt.Errorf("%w: size %q is not a decimal byte count", errInvalidArgument, truncate(s))
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: size %q: %v", errInvalidArgument, s, err)
	}
	return n, nil
}

// splitResourceName checks the name as a whole and splits it into non-empty segments.
func splitResourceName(name string) ([]string, error) {
	switch {
	case name == "":
		return nil, fmt.Errorf("%w: resource name is empty", errInvalidArgument)
	case len(name) > maxResourceNameBytes:
		return nil, fmt.Errorf("%w: resource name is longer than %d bytes", errInvalidArgument, maxResourceNameBytes)
	case !utf8.ValidString(name):
		return nil, fmt.Errorf("%w: resource name is not valid UTF-8", errInvalidArgument)
	case strings.IndexByte(name, 0) >= 0:
		return nil, fmt.Errorf("%w: resource name contains a NUL byte", errInvalidArgument)
	}
	segs := strings.Split(name, "/")
	for _, s := range segs {
		if s == "" {
			return nil, fmt.Errorf("%w: resource name %q has an empty path segment", errInvalidArgument, truncate(name))
		}
	}
	return segs, nil
}

// instanceFromSegments joins the instance segments and validates the result.
func instanceFromSegments(name string, segs []string) (string, error) {
	for _, s := range segs {
		if reservedSegments[s] {
			return "", fmt.Errorf("%w: resource name %q: %q is a reserved word and cannot be part of an instance name",
				errInvalidArgument, truncate(name), s)
		}
	}
	instance := strings.Join(segs, "/")
	if instance != "" {
		if err := storage.ValidateIdentifier("instance_name", instance); err != nil {
			return "", fmt.Errorf("%w: %v", errInvalidArgument, err)
		}
	}
	return instance, nil
}

// namespaceOf validates an instance_name field and returns the namespace it selects. The rules
// are those of resource names, so every instance usable in one RPC is usable in all of them.
func namespaceOf(instance string) (string, error) {
	if instance == "" {
		return DefaultNamespace, nil
	}
	if len(instance) > storage.MaxIdentifierBytes {
		return "", fmt.Errorf("%w: instance_name is longer than %d bytes", errInvalidArgument, storage.MaxIdentifierBytes)
	}
	segs, err := splitResourceName(instance)
	if err != nil {
		return "", fmt.Errorf("instance_name: %w", err)
	}
	if _, err := instanceFromSegments(instance, segs); err != nil {
		return "", fmt.Errorf("instance_name: %w", err)
	}
	return instance, nil
}

// namespace of a parsed resource name.
func (r resourceName) namespace() string {
	if r.instance == "" {
		return DefaultNamespace
	}
	return r.instance
}

func indexOfAny(segs []string, words ...string) int {
	for i, s := range segs {
		for _, w := range words {
			if s == w {
				return i
			}
		}
	}
	return -1
}
