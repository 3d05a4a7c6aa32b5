package httpapi

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

// TestMetroChunkedGzipRoundTrip mimics metro-cache's HttpStore: a gzip stream sent chunked
// without Content-Length, read back byte for byte with no Content-Encoding.
func TestMetroChunkedGzipRoundTrip(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
	_, _ = zw.Write(append([]byte{0}, []byte(strings.Repeat("module.exports=1;", 5000))...))
	_ = zw.Close()
	key := strings.Repeat("0a1b2c3d", 9) // 72 hex chars, like real Metro keys
	pr, pw := io.Pipe()
	go func() {
		// Several writes so the body really arrives as several chunks.
		data := gz.Bytes()
		for len(data) > 0 {
			n := min(len(data), 100)
			if _, err := pw.Write(data[:n]); err != nil {
				return
			}
			data = data[n:]
		}
		_ = pw.Close()
	}()
	expect(t, h.do("PUT", "/api/metro/cache/"+key, pr, "Authorization", "Bearer tok"), http.StatusOK, "")
	r := h.do("GET", "/api/metro/cache/"+key, nil)
	if r.status != http.StatusOK || !bytes.Equal(r.body, gz.Bytes()) {
		t.Fatalf("GET: %d, %d bytes, want the %d stored bytes", r.status, len(r.body), gz.Len())
	}
	if ce := r.header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("Content-Encoding = %q, Metro must get the gzip bytes verbatim", ce)
	}
	if !h.stored(storage.Key{Tenant: testTenant, Namespace: "metro", Kind: storage.KindMetro, Name: key}) {
		t.Fatal("not stored under KURA_TENANT_ID/metro")
	}
	// Existing key: 200 again, first writer wins.
	expect(t, h.do("PUT", "/api/metro/cache/"+key, "different"), http.StatusOK, "")
	r = h.do("GET", "/api/metro/cache/"+key, nil)
	if !bytes.Equal(r.body, gz.Bytes()) {
		t.Fatal("an existing Metro entry was overwritten")
	}
	expectEmpty404(t, h.do("GET", "/api/metro/cache/abcdef", nil))
}

func TestMetroParamsAndKeys(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/api/metro/cache/abc?tenant_id=acme&namespace_id=rn", "scoped"), http.StatusOK, "")
	expect(t, h.do("GET", "/api/metro/cache/abc?tenant_id=acme&namespace_id=rn", nil), http.StatusOK, "scoped")
	expect(t, h.do("GET", "/api/metro/cache/abc?account_handle=acme&project_handle=rn", nil), http.StatusOK, "scoped")
	expectEmpty404(t, h.do("GET", "/api/metro/cache/abc", nil))
	expectEmpty404(t, h.do("GET", "/api/metro/cache/abc?tenant_id=acme", nil)) // namespace defaults to metro
	expect(t, h.do("PUT", "/api/metro/cache/ABCDEF0", "odd length, upper case"), http.StatusOK, "")
	for _, bad := range []string{"xyz", "abc-def", "ab%20cd"} {
		expectMessage(t, h.do("PUT", "/api/metro/cache/"+bad, "x"), http.StatusBadRequest, "Invalid cache_key")
	}
	expectMessage(t, h.do("GET", "/api/metro/cache/abc?tenant_id=a%00b", nil), http.StatusBadRequest, "Invalid tenant_id")
}
