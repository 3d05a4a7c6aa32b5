package httpapi

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

// rangeSurface is one GET surface: the path that reads key.
type rangeSurface struct {
	name string
	key  storage.Key
	path string
}

// rangeSurfaces lists every GET surface that serves a stored body, each with the key its
// path reads, for a body whose SHA-256 is sum (the Bazel CAS names blobs by it).
func rangeSurfaces(sum string) []rangeSurface {
	k := func(tenant, ns string, kind storage.Kind, name string) storage.Key {
		return storage.Key{Tenant: tenant, Namespace: ns, Kind: kind, Name: name}
	}
	metroKey := strings.Repeat("ab", 36)
	return []rangeSurface{
		{"xcode", k("acme", "ios", storage.KindXcode, "cas1"), "/api/cache/cas/cas1?tenant_id=acme&namespace_id=ios"},
		{"keyvalue", k("acme", "ios", storage.KindKeyValue, "kv1"), "/api/cache/keyvalue/kv1?tenant_id=acme&namespace_id=ios"},
		{"gradle query", k("acme", "android", storage.KindGradle, "g1"), "/api/cache/gradle/g1?tenant_id=acme&namespace_id=android"},
		{"gradle path", k("acme", "android", storage.KindGradle, "g2"), "/api/cache/gradle/acme/android/g2"},
		{"module", k("acme", "ios", storage.KindModule, "builds/h1/n1"), "/api/cache/module/x?tenant_id=acme&namespace_id=ios&hash=h1&name=n1"},
		{"nx", k(testTenant, nxNamespace, storage.KindNx, "123"), "/v1/cache/123"},
		{"nx scoped", k("acme", "web", storage.KindNx, "456"), "/api/nx/acme/web/v1/cache/456"},
		{"metro", k(testTenant, metroNamespace, storage.KindMetro, metroKey), "/api/metro/cache/" + metroKey},
		{"bazel cas", k(testTenant, bazelNamespace, storage.KindCAS, sum), "/cas/" + sum},
		{"bazel cas namespaced", k(testTenant, "proj", storage.KindCAS, sum), "/proj/cas/" + sum},
		{"bazel ac", k(testTenant, bazelNamespace, storage.KindAC, strings.Repeat("c", 64)), "/ac/" + strings.Repeat("c", 64)},
		{"objects", k("acme", "cpp", storage.KindObjects, "ab/cdef"), "/api/cache/objects/acme/cpp/ab/cdef"},
	}
}

// TestRangesOnEveryGETSurface: 206 with Content-Range and the exact bytes, 416 past the end,
// If-Range by strong ETag, multi-range and malformed headers answered in full, and
// Accept-Ranges on full answers; on the real disk store, so only the range is read.
func TestRangesOnEveryGETSurface(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true})
	body := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	size := len(body)
	raw := sha256.Sum256(body)
	sum := hex.EncodeToString(raw[:])
	etag := `"` + sum + `"`
	cases := []struct {
		name, rng, ifRange string
		status             int
		want               string // body, or "" for a 416
		contentRange       string
	}{
		{"closed", "bytes=2-5", "", 206, "2345", "bytes 2-5/36"},
		{"open", "bytes=30-", "", 206, "uvwxyz", "bytes 30-35/36"},
		{"suffix", "bytes=-4", "", 206, "wxyz", "bytes 32-35/36"},
		{"suffix longer than body", "bytes=-100", "", 206, string(body), "bytes 0-35/36"},
		{"end past size", "bytes=34-1000", "", 206, "yz", "bytes 34-35/36"},
		{"first byte", "bytes=0-0", "", 206, "0", "bytes 0-0/36"},
		{"last byte", "bytes=35-35", "", 206, "z", "bytes 35-35/36"},
		{"spaces and case", "Bytes = 1-2", "", 206, "12", "bytes 1-2/36"},
		{"unsatisfiable", "bytes=36-", "", 416, "", "bytes */36"},
		{"unsatisfiable closed", "bytes=100-200", "", 416, "", "bytes */36"},
		{"if-range match", "bytes=0-1", etag, 206, "01", "bytes 0-1/36"},
		{"if-range other etag", "bytes=0-1", `"feed"`, 200, string(body), ""},
		{"if-range weak", "bytes=0-1", "W/" + etag, 200, string(body), ""},
		{"if-range date", "bytes=0-1", "Wed, 21 Oct 2015 07:28:00 GMT", 200, string(body), ""},
		{"multi-range served whole", "bytes=0-1,4-5", "", 200, string(body), ""},
		{"reversed ignored", "bytes=5-2", "", 200, string(body), ""},
		{"other unit ignored", "items=0-1", "", 200, string(body), ""},
		{"malformed ignored", "bytes=a-b", "", 200, string(body), ""},
		{"no range", "", "", 200, string(body), ""},
	}
	for _, sf := range rangeSurfaces(sum) {
		if _, err := h.store.Put(context.Background(), sf.key, bytes.NewReader(body), storage.PutOptions{Size: int64(size)}); err != nil {
			t.Fatalf("seed %s: %v", sf.name, err)
		}
		for _, tc := range cases {
			t.Run(sf.name+"/"+tc.name, func(t *testing.T) {
				var hdr []string
				if tc.rng != "" {
					hdr = append(hdr, "Range", tc.rng)
				}
				if tc.ifRange != "" {
					hdr = append(hdr, "If-Range", tc.ifRange)
				}
				r := h.do("GET", sf.path, nil, hdr...)
				if r.status != tc.status {
					t.Fatalf("status = %d, want %d (%q)", r.status, tc.status, r.body)
				}
				if got := r.header.Get("Content-Range"); got != tc.contentRange {
					t.Fatalf("Content-Range = %q, want %q", got, tc.contentRange)
				}
				if tc.status == 416 {
					expectMessage(t, r, 416, "Range not satisfiable")
					return
				}
				if string(r.body) != tc.want {
					t.Fatalf("body = %q, want %q", r.body, tc.want)
				}
				if cl := r.header.Get("Content-Length"); cl != strconv.Itoa(len(tc.want)) {
					t.Fatalf("Content-Length = %q, want %d", cl, len(tc.want))
				}
				if r.header.Get("Accept-Ranges") != "bytes" || r.header.Get("ETag") != etag {
					t.Fatalf("Accept-Ranges %q, ETag %q", r.header.Get("Accept-Ranges"), r.header.Get("ETag"))
				}
			})
		}
	}
}

// TestRangesHEADAndEmpty: HEAD ignores Range and says Accept-Ranges; the empty blob has no
// satisfiable range.
func TestRangesHEADAndEmpty(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	sum := sha256.Sum256([]byte("abc"))
	hexSum := hex.EncodeToString(sum[:])
	expect(t, h.do("PUT", "/cas/"+hexSum, "abc"), http.StatusOK, "")
	r := h.do("HEAD", "/cas/"+hexSum, nil, "Range", "bytes=0-0")
	if r.status != 200 || r.header.Get("Accept-Ranges") != "bytes" || r.header.Get("Content-Length") != "3" || r.header.Get("Content-Range") != "" {
		t.Fatalf("HEAD = %d %v", r.status, r.header)
	}
	empty := sha256.Sum256(nil)
	r = h.do("GET", "/cas/"+hex.EncodeToString(empty[:]), nil, "Range", "bytes=0-")
	if r.status != 416 || r.header.Get("Content-Range") != "bytes */0" {
		t.Fatalf("empty blob range = %d %v", r.status, r.header)
	}
	expect(t, h.do("GET", "/cas/"+hex.EncodeToString(empty[:]), nil), http.StatusOK, "")
	// If-None-Match comes before Range: a matching ETag is 304 even for a range past the end.
	r = h.do("GET", "/cas/"+hexSum, nil, "Range", "bytes=10-", "If-None-Match", `"`+hexSum+`"`)
	if r.status != http.StatusNotModified {
		t.Fatalf("If-None-Match with an unsatisfiable range = %d, want 304", r.status)
	}
	expect(t, h.do("GET", "/cas/"+hexSum, nil, "Range", "bytes=1-", "If-None-Match", `"other"`), http.StatusPartialContent, "bc")
	// A miss stays a plain 404 whatever the range.
	expectEmpty404(t, h.do("GET", "/cas/"+strings.Repeat("0", 64), nil, "Range", "bytes=0-1"))
}

// TestRangeLargeBodyOnDisk: a range in the middle of a multi-block segment record, sent
// through the sendfile path, is exactly those bytes.
func TestRangeLargeBodyOnDisk(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true})
	body := make([]byte, 3<<20+12345)
	for i := range body {
		body[i] = byte(i*7 + i>>9)
	}
	key := storage.Key{Tenant: "acme", Namespace: "cpp", Kind: storage.KindObjects, Name: "big"}
	if _, err := h.store.Put(context.Background(), key, bytes.NewReader(body), storage.PutOptions{Size: int64(len(body))}); err != nil {
		t.Fatal(err)
	}
	for _, rg := range [][2]int{{0, 99}, {1<<20 - 3, 2<<20 + 5}, {len(body) - 70000, len(body) - 1}, {65535, 65536}} {
		r := h.do("GET", "/api/cache/objects/acme/cpp/big", nil, "Range", fmt.Sprintf("bytes=%d-%d", rg[0], rg[1]))
		if r.status != 206 || !bytes.Equal(r.body, body[rg[0]:rg[1]+1]) {
			t.Fatalf("range %v: status %d, %d bytes, equal=%v", rg, r.status, len(r.body), bytes.Equal(r.body, body[rg[0]:rg[1]+1]))
		}
	}
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
		r  byteRange
	}{
		{"bytes=0-0", true, byteRange{0, 0}},
		{"bytes=5-", true, byteRange{5, -1}},
		{"bytes=-7", true, byteRange{-1, 7}},
		{"bytes=-0", false, byteRange{}},
		{"bytes=9223372036854775807-", true, byteRange{1<<63 - 1, -1}},
		{"bytes=9223372036854775808-", false, byteRange{}},
		{"bytes=+1-2", false, byteRange{}},
		{"bytes=1--2", false, byteRange{}},
		{"bytes=", false, byteRange{}},
		{"bytes=-", false, byteRange{}},
		{"bytes", false, byteRange{}},
		{"bytes=1-2,", false, byteRange{}},
		{"", false, byteRange{}},
		{"bytes=" + strings.Repeat("1", 300) + "-", false, byteRange{}},
	} {
		r, ok := parseRange(tc.in)
		if ok != tc.ok || ok && r != tc.r {
			t.Errorf("parseRange(%q) = %+v %v, want %+v %v", tc.in, r, ok, tc.r, tc.ok)
		}
	}
}

// FuzzParseRange: whatever parses fits every body size into a range inside the body, and the
// store offset it asks for is where that range starts.
func FuzzParseRange(f *testing.F) {
	for _, s := range []string{"bytes=0-0", "bytes=5-", "bytes=-7", "bytes=1-2,3-4", "bytes=9223372036854775807-", "bytes = -1"} {
		f.Add(s, int64(10))
	}
	f.Fuzz(func(t *testing.T, h string, size int64) {
		r, ok := parseRange(h)
		if !ok {
			return
		}
		if r.start < -1 || r.end < -1 || r.start >= 0 && r.end >= 0 && r.end < r.start || r.start < 0 && r.end <= 0 {
			t.Fatalf("parseRange(%q) = %+v", h, r)
		}
		if size < 0 {
			size = -size
		}
		if size < 0 { // math.MinInt64
			return
		}
		start, n, ok := r.fit(size)
		if !ok {
			if size > 0 && (r.start < 0 || r.start < size) {
				t.Fatalf("%+v unsatisfiable for size %d", r, size)
			}
			return
		}
		if start < 0 || n < 1 || start+n > size || start+n < start {
			t.Fatalf("%+v fit(%d) = %d+%d", r, size, start, n)
		}
		off, _ := r.openAt(size)
		if off != start {
			t.Fatalf("%+v openAt(%d) = %d, fit starts at %d", r, size, off, start)
		}
		cr := contentRange(start, n, size)
		if !strings.HasPrefix(cr, "bytes ") {
			t.Fatalf("Content-Range %q", cr)
		}
	})
}
