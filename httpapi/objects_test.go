package httpapi

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
)

const objectsBase = "/api/cache/objects/acme/cpp/"

func objectKeyOf(name string) storage.Key {
	return storage.Key{Tenant: "acme", Namespace: "cpp", Kind: storage.KindObjects, Name: name}
}

// TestObjectsLifecycle: the ccache flow on the real disk store: miss, PUT 201, HEAD and GET,
// overwrite (manifests are rewritten), DELETE 204 then 404, and a PUT after the delete.
func TestObjectsLifecycle(t *testing.T) {
	g := &recordingGuard{}
	h := newHarness(t, harnessOpts{guard: g, disk: true})
	// The subdirs layout: two characters, a slash, the rest.
	p := objectsBase + "3f/4ab9c1e2d0ff5a6b7c8d9e0f1a2b3c4d5e6f7a8bR"
	expectEmpty404(t, h.do("GET", p, nil))
	expectEmpty404(t, h.do("HEAD", p, nil))
	expect(t, h.do("PUT", p, "result-v1", "Content-Type", "application/octet-stream"), http.StatusCreated, "")
	req := g.last(t)
	if req.Operation != OpWrite || req.Producer != "ccache" || req.TenantID != "acme" || req.NamespaceID != "cpp" ||
		req.ArtifactKey != "3f/4ab9c1e2d0ff5a6b7c8d9e0f1a2b3c4d5e6f7a8bR" || req.Route != objectsRoute {
		t.Fatalf("guard request = %+v", req)
	}
	r := h.do("HEAD", p, nil)
	expect(t, r, http.StatusOK, "")
	if r.header.Get("Content-Length") != "9" || r.header.Get("Accept-Ranges") != "bytes" {
		t.Fatalf("HEAD headers = %v", r.header)
	}
	if g.last(t).Operation != OpInspect {
		t.Fatalf("HEAD operation = %q", g.last(t).Operation)
	}
	expect(t, h.do("GET", p, nil), http.StatusOK, "result-v1")
	// Mutable: ccache rewrites manifests in place.
	expect(t, h.do("PUT", p, "result-v2"), http.StatusCreated, "")
	expect(t, h.do("GET", p, nil), http.StatusOK, "result-v2")
	// The flat layout is one segment; other tenants and namespaces never see it.
	expect(t, h.do("PUT", objectsBase+"flatkey", "flat"), http.StatusCreated, "")
	expect(t, h.do("GET", objectsBase+"flatkey", nil), http.StatusOK, "flat")
	expectEmpty404(t, h.do("GET", "/api/cache/objects/other/cpp/flatkey", nil))
	expectEmpty404(t, h.do("GET", "/api/cache/objects/acme/c/flatkey", nil))

	expect(t, h.do("DELETE", p, nil), http.StatusNoContent, "")
	if g.last(t).Operation != OpWrite {
		t.Fatalf("DELETE operation = %q", g.last(t).Operation)
	}
	expectEmpty404(t, h.do("GET", p, nil))
	expectEmpty404(t, h.do("HEAD", p, nil))
	expectEmpty404(t, h.do("GET", p, nil, "Range", "bytes=0-1"))
	// The marker is a real, newer write of the key: that is what replicates.
	info, err := h.store.Stat(context.Background(), objectKeyOf("3f/4ab9c1e2d0ff5a6b7c8d9e0f1a2b3c4d5e6f7a8bR"))
	if err != nil || info.ContentType != storage.ObjectDeletedContentType || info.Size != 0 {
		t.Fatalf("marker = %+v, %v", info, err)
	}
	// Deleting what was never stored is still 204 (a peer may hold it).
	expect(t, h.do("DELETE", objectsBase+"never", nil), http.StatusNoContent, "")
	// A write after the delete wins over the marker.
	expect(t, h.do("PUT", p, "result-v3"), http.StatusCreated, "")
	expect(t, h.do("GET", p, nil), http.StatusOK, "result-v3")
	if got := counterValue(t, h.srv.metrics.writes, "objects", "ccache", classBlob, resultDeleted); got != 2 {
		t.Fatalf("deleted writes = %v, want 2", got)
	}
}

// TestObjectsDeleteNotResurrected: a replicated copy older than the delete marker (a push
// still in flight when the DELETE landed) does not bring the object back, while a newer
// one does. This is the last-writer-wins rule the marker relies on.
func TestObjectsDeleteNotResurrected(t *testing.T) {
	h := newHarness(t, harnessOpts{disk: true})
	p := objectsBase + "ab/cd"
	key := objectKeyOf("ab/cd")
	expect(t, h.do("PUT", p, "v1"), http.StatusCreated, "")
	before, err := h.store.Stat(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	expect(t, h.do("DELETE", p, nil), http.StatusNoContent, "")
	marker, err := h.store.Stat(context.Background(), key)
	if err != nil || marker.Version <= before.Version {
		t.Fatalf("marker %+v (%v) not newer than %v", marker, err, before.Version)
	}
	// An older replicated write (its origin's version) is stale.
	_, err = h.store.Put(context.Background(), key, strings.NewReader("late"), storage.PutOptions{Size: 4, Version: before.Version + 1})
	if err == nil {
		if info, _ := h.store.Stat(context.Background(), key); info.ContentType != storage.ObjectDeletedContentType {
			t.Fatalf("an older replicated write resurrected the object: %+v", info)
		}
	}
	expectEmpty404(t, h.do("GET", p, nil))
	// A newer replicated write wins.
	if _, err := h.store.Put(context.Background(), key, strings.NewReader("newer"), storage.PutOptions{Size: 5, Version: marker.Version + 1}); err != nil {
		t.Fatal(err)
	}
	expect(t, h.do("GET", p, nil), http.StatusOK, "newer")
}

func TestObjectsBadInput(t *testing.T) {
	h := newHarness(t, harnessOpts{limits: func(l *limits) { l.blob = 1024 }})
	expectMessage(t, h.do("PUT", objectsBase+strings.Repeat("k", 1025), "x"), http.StatusBadRequest, "Invalid key")
	expectMessage(t, h.do("GET", objectsBase+"a%00b", nil), http.StatusBadRequest, "Invalid key")
	expectMessage(t, h.do("PUT", objectsBase+"a%FFb", "x"), http.StatusBadRequest, "Invalid key")
	expectMessage(t, h.do("GET", "/api/cache/objects/acme/cpp/", nil), http.StatusBadRequest, "Missing key")
	expectMessage(t, h.do("PUT", objectsBase+"marker", "", "Content-Type", storage.ObjectDeletedContentType+"; x=1"),
		http.StatusBadRequest, "Invalid Content-Type")
	// Over the limit, declared and chunked: 413 and nothing stored.
	expectMessage(t, h.do("PUT", objectsBase+"big", strings.Repeat("b", 1025)), http.StatusRequestEntityTooLarge, "Request body exceeds")
	expectMessage(t, h.do("PUT", objectsBase+"bigc", io.LimitReader(zeroes{}, 1025)), http.StatusRequestEntityTooLarge, "Request body exceeds")
	expect(t, h.do("PUT", objectsBase+"exact", io.LimitReader(zeroes{}, 1024)), http.StatusCreated, "")
	for name, want := range map[string]bool{"big": false, "bigc": false, "marker": false, "exact": true} {
		if got := h.stored(objectKeyOf(name)); got != want {
			t.Errorf("%s stored = %v, want %v", name, got, want)
		}
	}
	// An escaped slash is part of the key, not a separator, and names the same object.
	expect(t, h.do("PUT", objectsBase+"x%2Fy", "esc"), http.StatusCreated, "")
	expect(t, h.do("GET", objectsBase+"x/y", nil), http.StatusOK, "esc")
	// The default limit is 2 GiB, checked before reading.
	if MaxBlobBytes != 2<<30 {
		t.Fatalf("MaxBlobBytes = %d", MaxBlobBytes)
	}
}

// TestObjectsReadOnlyToken: reads pass the policy, writes and deletes are refused with 403
// and change nothing.
func TestObjectsReadOnlyToken(t *testing.T) {
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		if r.Operation == OpWrite && firstValue(r.Headers, "authorization") == "Bearer ro" {
			return policy.Decision{Status: http.StatusForbidden, Message: "read-only token"}
		}
		return policy.Decision{Allowed: true}
	}}
	h := newHarness(t, harnessOpts{guard: g})
	expect(t, h.do("PUT", objectsBase+"k", "v", "Authorization", "Bearer rw"), http.StatusCreated, "")
	expect(t, h.do("GET", objectsBase+"k", nil, "Authorization", "Bearer ro"), http.StatusOK, "v")
	expectMessage(t, h.do("PUT", objectsBase+"k", "w", "Authorization", "Bearer ro"), http.StatusForbidden, "read-only token")
	expectMessage(t, h.do("DELETE", objectsBase+"k", nil, "Authorization", "Bearer ro"), http.StatusForbidden, "read-only token")
	expect(t, h.do("GET", objectsBase+"k", nil), http.StatusOK, "v")
}
