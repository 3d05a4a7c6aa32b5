package reapi

import (
	"strings"
	"testing"
	"unicode/utf8"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"

	"github.com/kuracache/kura/storage"
)

const hashA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

func TestParseReadResourceName(t *testing.T) {
	for _, c := range []struct {
		name, instance string
		compressor     repb.Compressor_Value
		size           int64
	}{
		{"blobs/" + hashA + "/0", "", repb.Compressor_IDENTITY, 0},
		{"blobs/" + hashA + "/123", "", repb.Compressor_IDENTITY, 123},
		{"inst1/blobs/" + hashA + "/5", "inst1", repb.Compressor_IDENTITY, 5},
		{"a/b/c/blobs/" + hashA + "/5", "a/b/c", repb.Compressor_IDENTITY, 5},
		{"compressed-blobs/zstd/" + hashA + "/7", "", repb.Compressor_ZSTD, 7},
		{"x/compressed-blobs/zstd/sha256/" + hashA + "/7", "x", repb.Compressor_ZSTD, 7},
		{"blobs/sha256/" + hashA + "/9223372036854775807", "", repb.Compressor_IDENTITY, 1<<63 - 1},
	} {
		r, err := parseReadResourceName(c.name)
		if err != nil {
			t.Errorf("%q: %v", c.name, err)
			continue
		}
		if r.instance != c.instance || r.compressor != c.compressor || r.digest.size != c.size || r.digest.hex() != hashA {
			t.Errorf("%q parsed as %+v", c.name, r)
		}
	}
	for _, bad := range []string{
		"", "/", "blobs", "blobs/" + hashA, "blobs/" + hashA + "/", "blobs/" + hashA + "/1/x", "/blobs/" + hashA + "/1",
		"blobs//" + hashA + "/1", "blobs/" + hashA + "/-1", "blobs/" + hashA + "/9223372036854775808", "blobs/" + hashA + "/ 1",
		"blobs/" + strings.ToUpper(hashA) + "/1", "blobs/" + hashA + "0/1", "blobs/sha384/" + hashA + "/1",
		"compressed-blobs/zstd", "compressed-blobs/lz4/" + hashA + "/1", "compressed-blobs/identity/" + hashA + "/1",
		"uploads/u/blobs/" + hashA + "/1", "actionResults/blobs/" + hashA + "/1", "in\x00st/blobs/" + hashA + "/1",
		"in\xffst/blobs/" + hashA + "/1", strings.Repeat("a/", 600) + "blobs/" + hashA + "/1",
		strings.Repeat("x", maxResourceNameBytes+1),
	} {
		if r, err := parseReadResourceName(bad); err == nil {
			t.Errorf("%q accepted as %+v", bad, r)
		}
	}
}

func TestParseWriteResourceName(t *testing.T) {
	for _, c := range []struct {
		name, instance, upload string
		compressor             repb.Compressor_Value
	}{
		{"uploads/0f9b6a9e-4c7f-4f43-9a55-6a8c1c2d9b10/blobs/" + hashA + "/1", "", "0f9b6a9e-4c7f-4f43-9a55-6a8c1c2d9b10", repb.Compressor_IDENTITY},
		{"inst1/uploads/u1/blobs/" + hashA + "/1", "inst1", "u1", repb.Compressor_IDENTITY},
		{"i/j/uploads/u1/compressed-blobs/zstd/" + hashA + "/1/meta/data", "i/j", "u1", repb.Compressor_ZSTD},
		{"uploads/u1/blobs/sha256/" + hashA + "/1/x", "", "u1", repb.Compressor_IDENTITY},
	} {
		r, err := parseWriteResourceName(c.name)
		if err != nil {
			t.Errorf("%q: %v", c.name, err)
			continue
		}
		if r.instance != c.instance || r.uploadID != c.upload || r.compressor != c.compressor || r.digest.hex() != hashA || r.digest.size != 1 {
			t.Errorf("%q parsed as %+v", c.name, r)
		}
	}
	for _, bad := range []string{
		"", "uploads", "uploads/u", "uploads/u/blobs", "uploads/u/blobs/" + hashA, "uploads/blobs/" + hashA + "/1",
		"blobs/" + hashA + "/1", "uploads/u/" + hashA + "/1", "uploads/u/compressed-blobs/zstd/" + hashA,
		"uploads/u/blobs/" + hashA + "/1/", "x/blobs/uploads/u/blobs/" + hashA + "/1", "uploads/u/blobs/md5/" + hashA + "/1",
	} {
		if r, err := parseWriteResourceName(bad); err == nil {
			t.Errorf("%q accepted as %+v", bad, r)
		}
	}
}

func TestNamespaceOf(t *testing.T) {
	for in, want := range map[string]string{"": "default", "default": "default", "ci": "ci", "team/project": "team/project"} {
		if got, err := namespaceOf(in); err != nil || got != want {
			t.Errorf("namespaceOf(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"/", "a/", "/a", "a//b", "blobs", "a/uploads/b", "a\x00", "a\xff", strings.Repeat("n", 1025)} {
		if _, err := namespaceOf(bad); err == nil {
			t.Errorf("namespaceOf(%q) accepted", bad)
		}
	}
}

func TestParseDigest(t *testing.T) {
	if _, err := fnSHA256.parse(nil); err == nil {
		t.Error("nil digest accepted")
	}
	d, err := fnSHA256.parse(&repb.Digest{Hash: hashA, SizeBytes: 0})
	if err != nil || !d.isEmpty() || d.String() != hashA+"/0" {
		t.Fatalf("empty digest: %v %v", d, err)
	}
	for _, bad := range []*repb.Digest{
		{Hash: hashA, SizeBytes: -1}, {Hash: hashA[:63], SizeBytes: 1}, {Hash: hashA + "0", SizeBytes: 1},
		{Hash: strings.ToUpper(hashA), SizeBytes: 1}, {Hash: "g" + hashA[1:], SizeBytes: 1}, {Hash: "", SizeBytes: 0},
	} {
		if _, err := fnSHA256.parse(bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	for f, want := range map[repb.DigestFunction_Value]digestFunction{
		repb.DigestFunction_UNKNOWN: fnSHA256, repb.DigestFunction_SHA256: fnSHA256, repb.DigestFunction_BLAKE3: fnBLAKE3,
	} {
		if got, err := checkDigestFunction(f); err != nil || got != want {
			t.Errorf("%v: got %v, %v; want %v", f, got, err, want)
		}
	}
	for _, f := range []repb.DigestFunction_Value{repb.DigestFunction_SHA1, repb.DigestFunction_SHA256TREE, repb.DigestFunction_MD5, 99} {
		if _, err := checkDigestFunction(f); err == nil {
			t.Errorf("%v accepted", f)
		}
	}
}

// FuzzParseResourceName checks that neither parser panics and that whatever parses has a
// valid digest and namespace and survives a round trip through its canonical form.
func FuzzParseResourceName(f *testing.F) {
	for _, seed := range []string{
		"blobs/" + hashA + "/1", "inst/compressed-blobs/zstd/" + hashA + "/10", "uploads/u/blobs/" + hashA + "/0/meta",
		"a/b/uploads/u/compressed-blobs/zstd/sha256/" + hashA + "/5", "blobs/sha1/" + hashA + "/1", "//", "uploads//blobs",
		"compressed-blobs/identity/" + hashA + "/1", "x/blobs/" + hashA + "/-3",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, name string) {
		for _, write := range []bool{false, true} {
			parse := parseReadResourceName
			if write {
				parse = parseWriteResourceName
			}
			r, err := parse(name)
			if err != nil {
				continue
			}
			if !utf8.ValidString(name) {
				t.Fatalf("invalid UTF-8 accepted: %q", name)
			}
			if r.digest.size < 0 {
				t.Fatalf("%q: negative size", name)
			}
			if err := storage.ValidateIdentifier("namespace", r.namespace()); err != nil {
				t.Fatalf("%q: namespace %q: %v", name, r.namespace(), err)
			}
			if r.compressor != repb.Compressor_IDENTITY && r.compressor != repb.Compressor_ZSTD {
				t.Fatalf("%q: compressor %v", name, r.compressor)
			}
			canonical := r.String(write)
			again, err := parse(canonical)
			if err != nil {
				t.Fatalf("%q: canonical form %q does not parse: %v", name, canonical, err)
			}
			if again != r {
				t.Fatalf("%q: round trip %+v != %+v", name, again, r)
			}
			if _, err := namespaceOf(r.instance); err != nil {
				t.Fatalf("%q: instance %q accepted in a resource name but not as instance_name: %v", name, r.instance, err)
			}
		}
	})
}

// FuzzParseDigest checks the digest rules: exactly 64 lowercase hex digits and a size >= 0.
func FuzzParseDigest(f *testing.F) {
	f.Add(hashA, int64(0))
	f.Add(strings.ToUpper(hashA), int64(1))
	f.Add("abc", int64(-1))
	f.Add(hashA, int64(-9))
	f.Fuzz(func(t *testing.T, hash string, size int64) {
		d, err := fnSHA256.parse(&repb.Digest{Hash: hash, SizeBytes: size})
		valid := len(hash) == 64 && size >= 0 && strings.Trim(hash, "0123456789abcdef") == ""
		if (err == nil) != valid {
			t.Fatalf("fnSHA256.parse(%q, %d) error %v, valid %v", hash, size, err, valid)
		}
		if err == nil && (d.hex() != hash || d.size != size || d.proto().GetHash() != hash) {
			t.Fatalf("round trip of %q/%d gave %s", hash, size, d)
		}
	})
}
