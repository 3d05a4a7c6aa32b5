package httpapi

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/uuid"

	"github.com/kuracache/kura/policy"
	"github.com/kuracache/kura/storage"
)

func startUpload(t *testing.T, h *harness, query string) *string {
	t.Helper()
	r := h.do("POST", "/api/cache/module/start?"+query, nil)
	expect(t, r, http.StatusOK, "-")
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("start Content-Type = %q", ct)
	}
	var out map[string]*string
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("start body %q: %v", r.body, err)
	}
	id, ok := out["upload_id"]
	if !ok || len(out) != 1 {
		t.Fatalf("start body %q lacks exactly upload_id", r.body)
	}
	return id
}

func TestModuleMultipartFlow(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	q := "tenant_id=acme&namespace_id=ios&hash=hash-1&name=Module.framework.zip&cache_category=builds"
	id := startUpload(t, h, q)
	if id == nil || *id == "" {
		t.Fatal("start returned no upload id for a new artifact")
	}
	part1 := strings.Repeat("1", 3000)
	part2 := strings.Repeat("2", 1000)
	expect(t, h.do("POST", "/api/cache/module/part?upload_id="+*id+"&part_number=2", "stale"), http.StatusNoContent, "")
	expect(t, h.do("POST", "/api/cache/module/part?upload_id="+*id+"&part_number=1", part1), http.StatusNoContent, "")
	// Re-sending a part number replaces it; chunked parts are fine.
	expect(t, h.do("POST", "/api/cache/module/part?upload_id="+*id+"&part_number=2", strings.NewReader(part2)), http.StatusNoContent, "")
	// Not yet complete: nothing to read.
	expectEmpty404(t, h.do("HEAD", "/api/cache/module/x?"+q, nil))
	expectMessage(t, h.do("POST", "/api/cache/module/complete?upload_id="+*id, `{"parts":[2,1]}`), http.StatusBadRequest, "Parts mismatch or missing parts")
	expectMessage(t, h.do("POST", "/api/cache/module/complete?upload_id="+*id, `{"parts":[1]}`), http.StatusBadRequest, "Parts mismatch or missing parts")
	expect(t, h.do("POST", "/api/cache/module/complete?upload_id="+*id, `{"parts":[1,2]}`), http.StatusNoContent, "")

	r := h.do("HEAD", "/api/cache/module/anything?"+q, nil)
	expect(t, r, http.StatusNoContent, "")
	r = h.do("GET", "/api/cache/module/anything?"+q, nil)
	expect(t, r, http.StatusOK, part1+part2)
	if !h.stored(storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "builds/hash-1/Module.framework.zip"}) {
		t.Fatal("artifact not stored under {cache_category}/{hash}/{name}")
	}
	// cache_category defaults to builds; aliases work.
	expect(t, h.do("GET", "/api/cache/module/x?account_handle=acme&project_handle=ios&hash=hash-1&name=Module.framework.zip", nil), http.StatusOK, part1+part2)
	// An existing artifact: upload_id null.
	if id := startUpload(t, h, q); id != nil {
		t.Fatalf("start for an existing artifact returned %q, want null", *id)
	}
	// The completed upload is gone.
	expectMessage(t, h.do("POST", "/api/cache/module/part?upload_id="+*id+"&part_number=3", "x"), http.StatusNotFound, "Upload not found")
	expectMessage(t, h.do("POST", "/api/cache/module/complete?upload_id="+*id, `{"parts":[1,2]}`), http.StatusNotFound, "Upload not found")
	// Another category is another artifact.
	expectEmpty404(t, h.do("GET", "/api/cache/module/x?"+strings.Replace(q, "builds", "tests", 1), nil))
	expectEmpty404(t, h.do("HEAD", "/api/cache/module/x?"+strings.Replace(q, "acme", "other", 1), nil))
	// GET /api/cache/module/start is the read route with id "start", not the POST-only start.
	expect(t, h.do("GET", "/api/cache/module/start?"+q, nil), http.StatusOK, part1+part2)
}

func TestModuleErrors(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	q := "tenant_id=acme&namespace_id=ios&hash=h&name=n"
	id := *startUpload(t, h, q)
	cases := []struct {
		name, method, path, body string
		status                   int
		msg                      string
	}{
		{"start missing tenant", "POST", "/api/cache/module/start?namespace_id=ios&hash=h&name=n", "", 400, "Missing tenant_id"},
		{"start missing namespace", "POST", "/api/cache/module/start?tenant_id=a&hash=h&name=n", "", 400, "Missing namespace_id"},
		{"start missing hash", "POST", "/api/cache/module/start?tenant_id=a&namespace_id=n&name=n", "", 400, "Missing hash"},
		{"start missing name", "POST", "/api/cache/module/start?tenant_id=a&namespace_id=n&hash=h", "", 400, "Missing name"},
		{"start slash in hash", "POST", "/api/cache/module/start?tenant_id=a&namespace_id=n&hash=a/b&name=n", "", 400, "Invalid hash"},
		{"start slash in category", "POST", "/api/cache/module/start?tenant_id=a&namespace_id=n&hash=h&name=n&cache_category=a/b", "", 400, "Invalid cache_category"},
		{"head missing hash", "HEAD", "/api/cache/module/x?tenant_id=a&namespace_id=n&name=n", "", 400, ""},
		{"get missing name", "GET", "/api/cache/module/x?tenant_id=a&namespace_id=n&hash=h", "", 400, "Missing name"},
		{"part missing upload", "POST", "/api/cache/module/part?part_number=1", "x", 400, "Missing upload_id"},
		{"part unknown upload", "POST", "/api/cache/module/part?upload_id=nope&part_number=1", "x", 404, "Upload not found"},
		{"part number missing", "POST", "/api/cache/module/part?upload_id=" + id, "x", 400, "Invalid part_number"},
		{"part number zero", "POST", "/api/cache/module/part?upload_id=" + id + "&part_number=0", "x", 400, "Invalid part_number"},
		{"part number text", "POST", "/api/cache/module/part?upload_id=" + id + "&part_number=one", "x", 400, "Invalid part_number"},
		{"part number negative", "POST", "/api/cache/module/part?upload_id=" + id + "&part_number=-1", "x", 400, "Invalid part_number"},
		{"part number too big", "POST", "/api/cache/module/part?upload_id=" + id + "&part_number=10001", "x", 400, "Invalid part_number"},
		{"complete missing upload", "POST", "/api/cache/module/complete", `{"parts":[]}`, 400, "Missing upload_id"},
		{"complete unknown upload", "POST", "/api/cache/module/complete?upload_id=nope", `{"parts":[1]}`, 404, "Upload not found"},
		{"complete bad json", "POST", "/api/cache/module/complete?upload_id=" + id, `{"parts":`, 400, "Invalid completion payload"},
		{"complete no parts", "POST", "/api/cache/module/complete?upload_id=" + id, `{}`, 400, "Invalid completion payload"},
		{"complete strings", "POST", "/api/cache/module/complete?upload_id=" + id, `{"parts":["1"]}`, 400, "Invalid completion payload"},
		{"complete extra", "POST", "/api/cache/module/complete?upload_id=" + id, `{"parts":[],"x":1}`, 400, "Invalid completion payload"},
		{"complete mismatch", "POST", "/api/cache/module/complete?upload_id=" + id, `{"parts":[1]}`, 400, "Parts mismatch or missing parts"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body any
			if c.body != "" {
				body = c.body
			}
			r := h.do(c.method, c.path, body)
			if c.method == "HEAD" {
				expect(t, r, c.status, "")
				return
			}
			expectMessage(t, r, c.status, c.msg)
		})
	}
}

func TestModulePartLimits(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	id := *startUpload(t, h, "tenant_id=acme&namespace_id=ios&hash=h&name=n")
	path := "/api/cache/module/part?upload_id=" + id + "&part_number="
	// Declared 10 MiB + 1: refused before reading.
	resp := h.rawRequest("POST "+path+"1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10485761\r\n", nil)
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("declared oversize part: status = %d", resp.StatusCode)
	}
	if body, _ := io.ReadAll(resp.Body); !strings.Contains(string(body), "Part exceeds 10MB limit") {
		t.Fatalf("declared oversize part: body %q", body)
	}
	// Chunked 10 MiB + 1: refused while streaming.
	expectMessage(t, h.do("POST", path+"1", io.LimitReader(zeroes{}, storage.MaxPartBytes+1)), http.StatusRequestEntityTooLarge, "Part exceeds 10MB limit")
	// Exactly 10 MiB is a valid part.
	expect(t, h.do("POST", path+"1", io.LimitReader(zeroes{}, storage.MaxPartBytes)), http.StatusNoContent, "")
	expect(t, h.do("POST", "/api/cache/module/complete?upload_id="+id, `{"parts":[1]}`), http.StatusNoContent, "")
	r := h.do("HEAD", "/api/cache/module/x?tenant_id=acme&namespace_id=ios&hash=h&name=n", nil)
	expect(t, r, http.StatusNoContent, "")
}

// TestModuleTotalTooLarge: the running total is enforced by storage.Multipart (2 GiB); the
// API answers its ErrUploadTooLarge with 422.
func TestModuleTotalTooLarge(t *testing.T) {
	h, fs := newFaultHarness(t, harnessOpts{})
	id := *startUpload(t, h, "tenant_id=acme&namespace_id=ios&hash=h&name=n")
	fs.set(func(f *faultStore) { f.partErr = storage.ErrUploadTooLarge })
	expectMessage(t, h.do("POST", "/api/cache/module/part?upload_id="+id+"&part_number=7", "x"), http.StatusUnprocessableEntity, "Total upload size exceeds 2GB limit")
	fs.set(func(f *faultStore) { f.partErr = nil; f.doneErr = storage.ErrUploadTooLarge })
	expectMessage(t, h.do("POST", "/api/cache/module/complete?upload_id="+id, `{"parts":[]}`), http.StatusUnprocessableEntity, "Total upload size exceeds 2GB limit")
}

// TestModuleGuardSeesUploadIdentity: parts and completions are authorized against the tenant,
// namespace and key their upload was started with (storage.Multipart.UploadKey), never against
// what the query claims, on the in-memory and on the real disk store.
func TestModuleGuardSeesUploadIdentity(t *testing.T) {
	for _, disk := range []bool{false, true} {
		name := "memory"
		if disk {
			name = "disk"
		}
		t.Run(name, func(t *testing.T) { testModuleGuardSeesUploadIdentity(t, disk) })
	}
}

func testModuleGuardSeesUploadIdentity(t *testing.T, disk bool) {
	var locked atomic.Value // the tenant whose writes the policy refuses ("" for none)
	locked.Store("")
	g := &recordingGuard{decide: func(r policy.Request) policy.Decision {
		if r.TenantID == locked.Load().(string) {
			return policy.Decision{Status: http.StatusForbidden, Message: "tenant locked"}
		}
		return policy.Decision{Allowed: true}
	}}
	h := newHarness(t, harnessOpts{guard: g, disk: disk})
	id := *startUpload(t, h, "account_handle=acme&project_handle=ios&hash=h1&name=App.zip&cache_category=tests")
	key := storage.Key{Tenant: "acme", Namespace: "ios", Kind: storage.KindModule, Name: "tests/h1/App.zip"}
	partPath := "/api/cache/module/part?upload_id=" + id + "&part_number="
	completePath := "/api/cache/module/complete?upload_id=" + id
	saw := func(route string) {
		t.Helper()
		got := g.last(t)
		if got.Query.Get(paramUploadID) != id {
			t.Fatalf("guard query %v lacks the upload id", got.Query)
		}
		got.Headers, got.Query = nil, nil
		want := policy.Request{Transport: "http", Route: route, Method: http.MethodPost, Operation: OpWrite, TenantID: key.Tenant,
			NamespaceID: key.Namespace, Producer: "module", ArtifactClass: "blob", ArtifactKey: key.Name}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("guard request\n got %+v\nwant %+v", got, want)
		}
	}

	// Tuist may send no tenant with a part: the guard still sees the upload's identity.
	expect(t, h.do("POST", partPath+"1", "one-"), http.StatusNoContent, "")
	saw("/api/cache/module/part")
	// Naming the upload's own tenant and namespace (here by their legacy aliases) is fine.
	expect(t, h.do("POST", partPath+"2&account_handle=acme&project_handle=ios", "two"), http.StatusNoContent, "")
	saw("/api/cache/module/part")

	// A query naming another tenant or namespace finds no upload (tenant isolation), and an
	// unknown id none either; the policy is not asked about a request that names no real upload.
	before := g.count()
	for _, q := range []string{"&tenant_id=evil", "&namespace_id=android", "&account_handle=evil", "&tenant_id=acme&namespace_id=android"} {
		expectMessage(t, h.do("POST", partPath+"3"+q, "x"), http.StatusNotFound, "Upload not found")
		expectMessage(t, h.do("POST", completePath+q, `{"parts":[1,2]}`), http.StatusNotFound, "Upload not found")
	}
	unknown := uuid.NewString()
	expectMessage(t, h.do("POST", "/api/cache/module/part?upload_id="+unknown+"&part_number=1", "x"), http.StatusNotFound, "Upload not found")
	expectMessage(t, h.do("POST", "/api/cache/module/complete?upload_id="+unknown, `{"parts":[1]}`), http.StatusNotFound, "Upload not found")
	if n := g.count(); n != before {
		t.Fatalf("the guard was asked %d times about requests naming no real upload", n-before)
	}

	// A policy that locks tenant acme refuses its parts and its completion although the
	// requests name no tenant; the refused part's body is never read.
	locked.Store("acme")
	resp := h.rawRequest("POST "+partPath+"3 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n", nil)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("part of a locked tenant: status %d, want 403", resp.StatusCode)
	}
	saw("/api/cache/module/part")
	expectMessage(t, h.do("POST", completePath, `{"parts":[1,2]}`), http.StatusForbidden, "tenant locked")
	saw("/api/cache/module/complete")
	if h.stored(key) {
		t.Fatal("a refused completion stored the artifact")
	}

	// Unlocked, the upload completes with the parts that were accepted.
	locked.Store("")
	expect(t, h.do("POST", completePath, `{"parts":[1,2]}`), http.StatusNoContent, "")
	saw("/api/cache/module/complete")
	expect(t, h.do("GET", "/api/cache/module/x?tenant_id=acme&namespace_id=ios&hash=h1&name=App.zip&cache_category=tests", nil), http.StatusOK, "one-two")
	// Completed: gone for parts and completions alike.
	expectMessage(t, h.do("POST", partPath+"3", "x"), http.StatusNotFound, "Upload not found")
	expectMessage(t, h.do("POST", completePath, `{"parts":[1,2]}`), http.StatusNotFound, "Upload not found")
}
