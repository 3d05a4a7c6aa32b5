package httpapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/storage"
)

func TestStoreErrorMapping(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("put acme/ios/xcode/k: %w", err) }
	cases := []struct {
		err    error
		status int
		msg    string
	}{
		{storage.ErrNotFound, 404, ""},
		{storage.ErrCorrupt, 404, ""},
		{fmt.Errorf("%w: key is empty", storage.ErrInvalidKey), 400, "Invalid key: key is empty"},
		{storage.ErrTooLarge, 413, "too large!"},
		{fmt.Errorf("%w: SHA-256 differs", storage.ErrDigestMismatch), 400, "Digest mismatch: SHA-256 differs"},
		{storage.ErrInsufficientStorage, 507, "Insufficient storage: failed to store artifact"},
		{storage.ErrUnavailable, 503, "Storage unavailable: failed to store artifact"},
		{storage.ErrBusy, 503, "Storage busy: failed to store artifact, retry later"},
		{fmt.Errorf("%w: %w", storage.ErrBusy, storage.ErrUnavailable), 503, "Storage busy: failed to store artifact, retry later"},
		{errors.New("EIO on /var/kura/segment-7"), 503, "Storage unavailable: failed to store artifact"},
		{storage.ErrUploadNotFound, 404, "Upload not found"},
		{storage.ErrInvalidPart, 400, "Invalid part_number"},
		{storage.ErrUploadTooLarge, 422, "Total upload size exceeds 2GB limit"},
		{storage.ErrPartsMismatch, 400, "Parts mismatch or missing parts"},
		{context.Canceled, 400, "Request canceled"},
	}
	for _, c := range cases {
		got := storeError("store artifact", "too large!", wrap(c.err))
		if got.status != c.status || got.message != c.msg {
			t.Errorf("%v → %d %q, want %d %q", c.err, got.status, got.message, c.status, c.msg)
		}
		if strings.Contains(got.message, "/var/kura") {
			t.Errorf("internal detail leaked: %q", got.message)
		}
	}
}

func TestWriteFailuresOverHTTP(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	path := "/api/cache/cas/k?tenant_id=a&namespace_id=b"
	fs.set(func(f *faultStore) { f.putErr = storage.ErrInsufficientStorage })
	expectMessage(t, h.do("POST", path, "x"), http.StatusInsufficientStorage, "Insufficient storage")
	fs.set(func(f *faultStore) { f.putErr = storage.ErrUnavailable })
	expectMessage(t, h.do("POST", path, "x"), http.StatusServiceUnavailable, "Storage unavailable")
	fs.set(func(f *faultStore) { f.putErr = storage.ErrBusy })
	busy := h.do("POST", path, "x")
	expectMessage(t, busy, http.StatusServiceUnavailable, "Storage busy: failed to store artifact, retry later")
	if ra := busy.header.Get("Retry-After"); ra != "1" {
		t.Errorf("busy answer Retry-After = %q, want 1", ra)
	}
	fs.set(func(f *faultStore) { f.putErr = nil; f.statErr = storage.ErrUnavailable })
	expectMessage(t, h.do("POST", path, "x"), http.StatusServiceUnavailable, "Storage unavailable: failed to inspect artifact")
	expect(t, h.do("HEAD", "/cas/"+sha("q"), nil), http.StatusServiceUnavailable, "")
	if got := counterValue(t, h.srv.metrics.writes, "xcode", "xcode", "blob", "error"); got != 4 {
		t.Errorf("write errors = %v, want 4", got)
	}
}

// corruptAfter hands out n good bytes, then fails with ErrCorrupt as a checksum failure would.
type corruptAfter struct {
	storage.Reader
	n int64
}

func (c *corruptAfter) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, fmt.Errorf("read block 3: %w", storage.ErrCorrupt)
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.Reader.Read(p)
	c.n -= int64(n)
	return n, err
}

func TestCorruptRecordOnFirstReadIsNotFound(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/v1/cache/1", "payload"), http.StatusOK, "")
	fs.set(func(f *faultStore) {
		f.reader = func(r storage.Reader) storage.Reader { return &corruptAfter{Reader: r} }
	})
	expectEmpty404(t, h.do("GET", "/v1/cache/1", nil))
	if got := counterValue(t, h.srv.metrics.reads, "nx", "nx", "blob", "error"); got != 1 {
		t.Errorf("read errors = %v, want 1", got)
	}
}

func TestCorruptionMidStreamAbortsTheResponse(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	body := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	expect(t, h.do("PUT", "/v1/cache/2", body), http.StatusOK, "")
	fs.set(func(f *faultStore) {
		f.reader = func(r storage.Reader) storage.Reader { return &corruptAfter{Reader: r, n: 100 << 10} }
	})
	resp, err := h.client.Get(h.base + "/v1/cache/2")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != int64(len(body)) {
		t.Fatalf("status %d, length %d", resp.StatusCode, resp.ContentLength)
	}
	got, err := io.ReadAll(resp.Body)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("reading a response cut short: err = %v after %d bytes, want unexpected EOF", err, len(got))
	}
	if len(got) > 100<<10 || body[:len(got)] != string(got) {
		t.Fatalf("client received %d bytes that are not a prefix of the good data", len(got))
	}
	// The server keeps working.
	fs.set(func(f *faultStore) { f.reader = nil })
	expect(t, h.do("GET", "/v1/cache/2", nil), http.StatusOK, body)
}

func TestHandlerPanicIs500(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	fs.set(func(f *faultStore) { f.statPanic = true })
	expectMessage(t, h.do("POST", "/api/cache/cas/p?tenant_id=a&namespace_id=b", "x"), http.StatusInternalServerError, "Internal server error")
	fs.set(func(f *faultStore) { f.statPanic = false })
	expect(t, h.do("POST", "/api/cache/cas/p?tenant_id=a&namespace_id=b", "x"), http.StatusNoContent, "")
}

func TestRouterErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expectEmpty404(t, h.do("GET", "/nothing-here", nil))
	expectEmpty404(t, h.do("GET", "/a/b/c/d/e", nil))
	r := h.do("DELETE", "/v1/cache/1", nil)
	expectMessage(t, r, http.StatusMethodNotAllowed, "Method Not Allowed")
	if r.header.Get("Allow") == "" {
		t.Error("405 without Allow")
	}
}
