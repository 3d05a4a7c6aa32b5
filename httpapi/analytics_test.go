package httpapi

import (
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/analytics"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// fakeRecorder collects analytics events.
type fakeRecorder struct {
	mu     sync.Mutex
	events []analytics.Event
}

func (f *fakeRecorder) Record(e analytics.Event) {
	f.mu.Lock()
	f.events = append(f.events, e)
	f.mu.Unlock()
}

// expect waits until the recorder holds as many events as want (a download is recorded after
// its body was sent, so the client can see the answer first), then requires exactly want and
// forgets them.
func (f *fakeRecorder) expect(t *testing.T, step string, want ...analytics.Event) {
	t.Helper()
	count := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.events)
	}
	testsupport.WaitFor(t, step+": analytics events", 5*time.Second, func() bool { return count() >= len(want) })
	f.mu.Lock()
	got := f.events
	f.events = nil
	f.mu.Unlock()
	if len(got) == 0 && len(want) == 0 {
		return
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s: analytics events\n got %+v\nwant %+v", step, got, want)
	}
}

func xcodeEvent(a analytics.Action, id string, size int64) analytics.Event {
	return analytics.Event{Pipeline: analytics.Xcode, TenantID: "acme", NamespaceID: "ios", Action: a, Size: size, Key: id}
}

func gradleEvent(a analytics.Action, key string, size int64) analytics.Event {
	return analytics.Event{Pipeline: analytics.Gradle, TenantID: "acme", NamespaceID: "android", Action: a, Size: size, Key: key}
}

// TestAnalyticsXcodeEvents: a stored upload and a complete download are recorded with the
// stored size; an existing key, a 304, a miss, a 413 and a denial are not.
func TestAnalyticsXcodeEvents(t *testing.T) {
	rec := &fakeRecorder{}
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		if r.NamespaceID == "forbidden" {
			return policy.Decision{Status: http.StatusForbidden}
		}
		return policy.Decision{Allowed: true}
	}}
	h := newHarness(t, harnessOpts{events: rec, guard: g, limits: func(l *limits) { l.xcode = 64 }})
	const path = "/api/cache/cas/cas-1?tenant_id=acme&namespace_id=ios"
	body := "xcode-binary"

	expect(t, h.do("POST", path, body), http.StatusNoContent, "")
	rec.expect(t, "first upload", xcodeEvent(analytics.Upload, "cas-1", int64(len(body))))

	expect(t, h.do("POST", path, "another body"), http.StatusNoContent, "")
	rec.expect(t, "upload of an existing id (body not read)")

	r := h.do("GET", path, nil)
	expect(t, r, http.StatusOK, body)
	rec.expect(t, "download", xcodeEvent(analytics.Download, "cas-1", int64(len(body))))

	expect(t, h.do("GET", path, nil, "If-None-Match", r.header.Get("ETag")), http.StatusNotModified, "")
	expectEmpty404(t, h.do("GET", "/api/cache/cas/missing?tenant_id=acme&namespace_id=ios", nil))
	expectMessage(t, h.do("POST", "/api/cache/cas/big?tenant_id=acme&namespace_id=ios", strings.Repeat("x", 65)), http.StatusRequestEntityTooLarge, "")
	if r := h.do("POST", "/api/cache/cas/x?tenant_id=acme&namespace_id=forbidden", "data"); r.status != http.StatusForbidden {
		t.Fatalf("denied upload = %s", r)
	}
	rec.expect(t, "304, miss, 413 and denial")

	// The legacy query names reach the event as tenant and namespace.
	expect(t, h.do("POST", "/api/cache/cas/cas-2?account_handle=acme&project_handle=ios", "abc"), http.StatusNoContent, "")
	rec.expect(t, "upload through the legacy aliases", xcodeEvent(analytics.Upload, "cas-2", 3))
}

// TestAnalyticsGradleEvents covers both URL forms, and shows other surfaces record nothing.
func TestAnalyticsGradleEvents(t *testing.T) {
	rec := &fakeRecorder{}
	h := newHarness(t, harnessOpts{events: rec})
	entry := "gradle-entry-bytes"

	expect(t, h.do("PUT", "/api/cache/gradle/k1?tenant_id=acme&namespace_id=android", entry), http.StatusCreated, "")
	rec.expect(t, "query-form upload", gradleEvent(analytics.Upload, "k1", int64(len(entry))))
	// Chunked, as Gradle may send it: the size is what was stored.
	expect(t, h.do("PUT", "/api/cache/gradle/acme/android/k2", io.Reader(strings.NewReader("chunked"))), http.StatusCreated, "")
	rec.expect(t, "path-form chunked upload", gradleEvent(analytics.Upload, "k2", 7))

	expect(t, h.do("GET", "/api/cache/gradle/acme/android/k1", nil), http.StatusOK, entry)
	rec.expect(t, "path-form download", gradleEvent(analytics.Download, "k1", int64(len(entry))))
	expect(t, h.do("GET", "/api/cache/gradle/k2?tenant_id=acme&namespace_id=android", nil), http.StatusOK, "chunked")
	rec.expect(t, "query-form download", gradleEvent(analytics.Download, "k2", 7))

	expect(t, h.do("PUT", "/api/cache/gradle/acme/android/k1", entry), http.StatusCreated, "")
	expectEmpty404(t, h.do("GET", "/api/cache/gradle/acme/android/missing", nil))
	expect(t, h.do("PUT", "/v1/cache/123", "nx"), http.StatusOK, "")
	expect(t, h.do("GET", "/v1/cache/123", nil), http.StatusOK, "nx")
	rec.expect(t, "existing entry, miss, and Nx traffic")
}

// racingStore answers Stat with "not found", as if the key did not exist yet, so the handler
// goes on to Put, where an identical write turns out to have won: drain says whether that Put
// reads the body first (as a store that only learns at commit does).
type racingStore struct {
	*storagetest.Memory
	drain bool
}

func (r *racingStore) Stat(context.Context, storage.Key) (storage.Info, error) {
	return storage.Info{}, storage.ErrNotFound
}

func (r *racingStore) Put(ctx context.Context, k storage.Key, body io.Reader, o storage.PutOptions) (storage.PutResult, error) {
	if r.drain {
		if _, err := io.Copy(io.Discard, body); err != nil {
			return storage.PutResult{}, err
		}
	}
	res, err := r.Memory.Put(ctx, k, strings.NewReader(""), storage.PutOptions{})
	if err == nil && res.Created {
		return res, errors.New("racing store: the key should already exist")
	}
	return res, err
}

// TestAnalyticsLostRaceRecordsOnlyAReceivedBody: an upload that lost the race to an identical
// write counts (with the stored size) only when its body was received in full.
func TestAnalyticsLostRaceRecordsOnlyAReceivedBody(t *testing.T) {
	for _, drain := range []bool{true, false} {
		rec := &fakeRecorder{}
		h := newHarness(t, harnessOpts{events: rec, wrap: func(m *storagetest.Memory) (storage.Store, storage.Multipart) {
			return &racingStore{Memory: m, drain: drain}, m
		}})
		k := xcodeKey("acme", "ios", "won")
		if _, err := h.mem.Put(context.Background(), k, strings.NewReader("winner!"), storage.PutOptions{Size: 7}); err != nil {
			t.Fatal(err)
		}
		expect(t, h.do("POST", "/api/cache/cas/won?tenant_id=acme&namespace_id=ios", "loser's body"), http.StatusNoContent, "")
		if drain {
			rec.expect(t, "body received", xcodeEvent(analytics.Upload, "won", int64(len("winner!"))))
		} else {
			rec.expect(t, "body not read")
		}
	}
}

// TestAnalyticsDownloadCutShortIsNotRecorded: a download aborted mid-stream is not a transfer.
func TestAnalyticsDownloadCutShortIsNotRecorded(t *testing.T) {
	rec := &fakeRecorder{}
	h, fs := newFaultHarness(t, harnessOpts{events: rec})
	body := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	expect(t, h.do("POST", "/api/cache/cas/big?tenant_id=acme&namespace_id=ios", body), http.StatusNoContent, "")
	rec.expect(t, "upload", xcodeEvent(analytics.Upload, "big", int64(len(body))))
	fs.set(func(f *faultStore) {
		f.reader = func(r storage.Reader) storage.Reader { return &corruptAfter{Reader: r, n: 100 << 10} }
	})
	resp, err := h.client.Get(h.base + "/api/cache/cas/big?tenant_id=acme&namespace_id=ios")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	// The handler has finished once the read error is counted; only then is "no event" proven.
	testsupport.WaitFor(t, "the aborted read to be counted", 5*time.Second, func() bool {
		return counterValue(t, h.srv.metrics.reads, "xcode", "xcode", "blob", "error") == 1
	})
	rec.expect(t, "download cut short")
}
