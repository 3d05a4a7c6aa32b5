package e2e

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// apiMaxXcodeBytes lowers KURA_MAX_XCODE_BYTES for the smoke test so an over-limit body
// streamed without Content-Length is cheap to send.
const apiMaxXcodeBytes = 2 << 20

// persisted is an object the smoke test wrote; after a restart it must read back the same.
type persisted struct {
	what string
	url  string
	body []byte
}

// TestAPISmoke proves the real binary serves every docs/contract.md §3 surface with the right statuses
// over real HTTP (the httpapi unit tests cover the details), that limits answer 413 without
// storing anything, and that the data survives a graceful restart.
func TestAPISmoke(t *testing.T) {
	t.Parallel()
	node := StartNode(t, NodeOptions{
		Name:     "smoke",
		TenantID: "smoke-tenant",
		Region:   "eu-test",
		Env:      map[string]string{"KURA_MAX_XCODE_BYTES": fmt.Sprint(apiMaxXcodeBytes)},
	})
	base := node.URL()
	rng := rand.New(rand.NewChaCha8([32]byte{'s', 'm', 'o', 'k', 'e'}))
	randomBytes := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	var keep []persisted
	remember := func(what, url string, body []byte) { keep = append(keep, persisted{what, url, body}) }

	t.Run("up", func(t *testing.T) {
		up, err := node.Up(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		want := UpStatus{Status: "ok", TenantID: "smoke-tenant", Region: "eu-test", Node: "smoke", NodeURL: base,
			RingMembers: 1, State: "serving"}
		got := up
		got.ConnectedNodes, got.RingNames, got.Members, got.Nodes = nil, nil, nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Errorf("/up = %+v, want %+v", up, want)
		}
		if !slices.Contains(up.RingNames, "smoke") || !slices.Contains(up.Members, "eu-test") ||
			!slices.Contains(up.Nodes, base) || slices.Contains(up.ConnectedNodes, base) {
			t.Errorf("/up membership lists: ring_members %v, members %v, nodes %v, connected_nodes %v",
				up.RingNames, up.Members, up.Nodes, up.ConnectedNodes)
		}
	})

	t.Run("xcode cas", func(t *testing.T) {
		q := "?tenant_id=acme&namespace_id=ios"
		body := randomBytes(300 << 10)
		u := base + "/api/cache/cas/0~" + hex.EncodeToString(randomBytes(16))
		expectNotFound(t, "GET before upload", do(t, request{Method: "GET", URL: u + q}))
		expectStatus(t, "POST", do(t, request{Method: "POST", URL: u + q, Body: bytes.NewReader(body)}), 204)
		expectBody(t, "GET", do(t, request{Method: "GET", URL: u + q}), body)
		expectBody(t, "GET with account_handle/project_handle", do(t, request{Method: "GET", URL: u + "?account_handle=acme&project_handle=ios"}), body)
		expectStatus(t, "POST of an existing id", do(t, request{Method: "POST", URL: u + q, Body: bytes.NewReader([]byte("other"))}), 204)
		expectBody(t, "GET after the second POST (first writer wins)", do(t, request{Method: "GET", URL: u + q}), body)
		expectNotFound(t, "GET as another tenant", do(t, request{Method: "GET", URL: u + "?tenant_id=other&namespace_id=ios"}))
		expectError(t, "GET without tenant_id", do(t, request{Method: "GET", URL: u + "?namespace_id=ios"}), 400, "Missing tenant_id")
		expectError(t, "GET without namespace_id", do(t, request{Method: "GET", URL: u + "?tenant_id=acme"}), 400, "Missing namespace_id")
		remember("xcode cas", u+q, body)

		// Invalid identifiers are rejected at the edge.
		for name, id := range map[string]string{
			"a key over 1024 bytes": strings.Repeat("k", 1025),
			"a NUL byte":            "bad%00id",
			"invalid UTF-8":         "bad%ffid",
		} {
			got := do(t, request{Method: "POST", URL: base + "/api/cache/cas/" + id + q, Body: strings.NewReader("x")})
			if got.Status != 400 {
				t.Errorf("POST with %s: got %s, want 400", name, got)
			}
		}

		// A body over the limit streamed without Content-Length: 413, nothing stored.
		over := base + "/api/cache/cas/over-limit" + q
		got := do(t, request{Method: "POST", URL: over, Body: io.MultiReader(bytes.NewReader(randomBytes(apiMaxXcodeBytes + 1)))})
		expectStatus(t, "chunked POST over KURA_MAX_XCODE_BYTES", got, 413)
		expectNotFound(t, "GET after the rejected POST", do(t, request{Method: "GET", URL: over}))
	})

	t.Run("keyvalue", func(t *testing.T) {
		q := "?tenant_id=acme&namespace_id=ios"
		casID := "0~" + hex.EncodeToString(randomBytes(16))
		put := func(values ...string) response {
			doc := map[string]any{"cas_id": casID, "entries": []map[string]string{}}
			for _, v := range values {
				doc["entries"] = append(doc["entries"].([]map[string]string), map[string]string{"value": v})
			}
			b, _ := json.Marshal(doc)
			return do(t, request{Method: "PUT", URL: base + "/api/cache/keyvalue" + q, Body: bytes.NewReader(b), Header: map[string]string{"Content-Type": "application/json"}})
		}
		getURL := base + "/api/cache/keyvalue/" + casID + q
		expectNotFound(t, "GET before PUT", do(t, request{Method: "GET", URL: getURL}))
		expectStatus(t, "PUT", put("first"), 204)
		expectStatus(t, "PUT again (last writer wins)", put("second", "third"), 204)
		got := do(t, request{Method: "GET", URL: getURL})
		expectStatus(t, "GET", got, 200)
		if ct := got.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("GET Content-Type = %q, want application/json", ct)
		}
		if values := keyValueValues(t, got.Body); !reflect.DeepEqual(values, []string{"second", "third"}) {
			t.Errorf("GET entries = %v, want the last write [second third]", values)
		}
		keep = append(keep, persisted{what: "keyvalue", url: getURL})

		bad := do(t, request{Method: "PUT", URL: base + "/api/cache/keyvalue" + q, Body: strings.NewReader(`{"cas_id": 7}`)})
		expectError(t, "PUT with a bad shape", bad, 400, "Invalid key-value payload")
		bad = do(t, request{Method: "PUT", URL: base + "/api/cache/keyvalue" + q, Body: strings.NewReader(`{not json`)})
		expectError(t, "PUT with bad JSON", bad, 400, "Invalid key-value payload")

		// Over KURA_MAX_KEYVALUE_BYTES (1 MiB default), streamed without Content-Length.
		bigID := "big-" + casID
		big := fmt.Sprintf(`{"cas_id":%q,"entries":[{"value":%q}]}`, bigID, strings.Repeat("v", 1<<20))
		got = do(t, request{Method: "PUT", URL: base + "/api/cache/keyvalue" + q, Body: io.MultiReader(strings.NewReader(big))})
		expectStatus(t, "chunked PUT over KURA_MAX_KEYVALUE_BYTES", got, 413)
		expectNotFound(t, "GET after the rejected PUT", do(t, request{Method: "GET", URL: base + "/api/cache/keyvalue/" + bigID + q}))
	})

	t.Run("gradle", func(t *testing.T) {
		key := hex.EncodeToString(randomBytes(16))
		body := randomBytes(100 << 10)
		queryURL := base + "/api/cache/gradle/" + key + "?tenant_id=acme&namespace_id=android"
		pathURL := base + "/api/cache/gradle/acme/android/" + key
		expectNotFound(t, "GET before PUT", do(t, request{Method: "GET", URL: queryURL}))
		expectStatus(t, "PUT (query form)", do(t, request{Method: "PUT", URL: queryURL, Body: bytes.NewReader(body)}), 201)
		expectBody(t, "GET (query form)", do(t, request{Method: "GET", URL: queryURL}), body)
		expectBody(t, "GET (path form) of the same tenant/namespace/key", do(t, request{Method: "GET", URL: pathURL}), body)
		remember("gradle", queryURL, body)

		key2 := hex.EncodeToString(randomBytes(16))
		body2 := randomBytes(2 << 10)
		path2 := base + "/api/cache/gradle/acme/android/" + key2
		basic := map[string]string{"Authorization": "Basic ZTJlOmUyZS1zZWNyZXQ="}
		expectStatus(t, "PUT (path form, Basic credentials)", do(t, request{Method: "PUT", URL: path2, Body: bytes.NewReader(body2), Header: basic}), 201)
		expectBody(t, "GET (path form)", do(t, request{Method: "GET", URL: path2, Header: basic}), body2)
		expectNotFound(t, "GET in another namespace", do(t, request{Method: "GET", URL: base + "/api/cache/gradle/acme/other/" + key2}))
		expectError(t, "GET without tenant_id", do(t, request{Method: "GET", URL: base + "/api/cache/gradle/" + key + "?namespace_id=android"}), 400, "Missing tenant_id")
		remember("gradle path form", path2, body2)
	})

	t.Run("module multipart", func(t *testing.T) {
		hash := hex.EncodeToString(randomBytes(16))
		q := "tenant_id=acme&namespace_id=ios&hash=" + hash + "&name=Framework.zip"
		start := func() *string {
			got := do(t, request{Method: "POST", URL: base + "/api/cache/module/start?" + q})
			expectStatus(t, "start", got, 200)
			var body struct {
				UploadID *string `json:"upload_id"`
			}
			if err := json.Unmarshal(got.Body, &body); err != nil {
				t.Fatalf("start: body %s: %v", got, err)
			}
			return body.UploadID
		}
		part := func(id string, number string, body []byte) response {
			return do(t, request{Method: "POST", URL: base + "/api/cache/module/part?upload_id=" + url.QueryEscape(id) + "&part_number=" + number, Body: bytes.NewReader(body)})
		}
		complete := func(id string, parts string) response {
			return do(t, request{Method: "POST", URL: base + "/api/cache/module/complete?upload_id=" + url.QueryEscape(id), Body: strings.NewReader(`{"parts":` + parts + `}`), Header: map[string]string{"Content-Type": "application/json"}})
		}
		artifact := base + "/api/cache/module/any-id?" + q

		expectNotFound(t, "HEAD before upload", do(t, request{Method: "HEAD", URL: artifact}))
		id := start()
		if id == nil || *id == "" {
			t.Fatalf("start: upload_id is null for a new artifact")
		}
		part1 := randomBytes(10 << 20) // exactly the per-part limit
		part2 := randomBytes(1234)
		expectStatus(t, "part 1 (10 MiB)", part(*id, "1", part1), 204)
		expectStatus(t, "part 2", part(*id, "2", []byte("replaced below")), 204)
		expectStatus(t, "part 2 re-sent", part(*id, "2", part2), 204)
		expectError(t, "complete with parts out of order", complete(*id, "[2,1]"), 400, "Parts mismatch or missing parts")
		expectStatus(t, "complete", complete(*id, "[1,2]"), 204)
		expectStatus(t, "HEAD", do(t, request{Method: "HEAD", URL: artifact}), 204)
		whole := append(append([]byte(nil), part1...), part2...)
		expectBody(t, "GET", do(t, request{Method: "GET", URL: artifact}), whole)
		if again := start(); again != nil {
			t.Errorf("start of an existing artifact: upload_id %q, want null", *again)
		}
		remember("module", artifact, whole)

		expectError(t, "part of an unknown upload", part("00000000-0000-4000-8000-000000000000", "1", []byte("x")), 404, "Upload not found")
		other := *id
		q = strings.Replace(q, hash, hex.EncodeToString(randomBytes(16)), 1)
		if id = start(); id == nil {
			t.Fatal("start of a second artifact: upload_id is null")
		}
		if *id == other {
			t.Fatalf("two uploads got the same id %q", other)
		}
		expectError(t, "part_number=abc", part(*id, "abc", []byte("x")), 400, "Invalid part_number")
		expectError(t, "part over 10 MiB", part(*id, "1", randomBytes(10<<20+1)), 413, "Part exceeds 10MB limit")
		expectError(t, "complete with a part never uploaded", complete(*id, "[1]"), 400, "Parts mismatch or missing parts")
	})

	t.Run("nx", func(t *testing.T) {
		hash := fmt.Sprint(rng.Uint64())
		body := randomBytes(64 << 10)
		u := base + "/v1/cache/" + hash
		bearer := map[string]string{"Authorization": "Bearer e2e-token", "Content-Type": "application/octet-stream"}
		expectNotFound(t, "GET before PUT", do(t, request{Method: "GET", URL: u, Header: bearer}))
		expectStatus(t, "PUT", do(t, request{Method: "PUT", URL: u, Body: bytes.NewReader(body), Header: bearer}), 200)
		expectStatus(t, "PUT of an existing hash", do(t, request{Method: "PUT", URL: u, Body: bytes.NewReader(body), Header: bearer}), 409)
		expectBody(t, "GET", do(t, request{Method: "GET", URL: u, Header: bearer}), body)
		remember("nx", u, body)

		chunkedHash := fmt.Sprint(rng.Uint64())
		got := do(t, request{Method: "PUT", URL: base + "/v1/cache/" + chunkedHash, Body: io.MultiReader(bytes.NewReader(body)), Header: bearer})
		expectStatus(t, "PUT without Content-Length", got, 400)
		expectNotFound(t, "GET after the rejected PUT", do(t, request{Method: "GET", URL: base + "/v1/cache/" + chunkedHash}))
		expectStatus(t, "PUT with a non-decimal hash", do(t, request{Method: "PUT", URL: base + "/v1/cache/not-a-hash", Body: bytes.NewReader(body), Header: bearer}), 400)

		nsURL := base + "/api/nx/acme/web/v1/cache/" + hash
		expectNotFound(t, "GET in namespace acme/web of a default-namespace hash", do(t, request{Method: "GET", URL: nsURL}))
		nsBody := randomBytes(1 << 10)
		expectStatus(t, "PUT (namespaced)", do(t, request{Method: "PUT", URL: nsURL, Body: bytes.NewReader(nsBody), Header: bearer}), 200)
		expectBody(t, "GET (namespaced)", do(t, request{Method: "GET", URL: nsURL}), nsBody)
		expectBody(t, "GET default namespace unchanged", do(t, request{Method: "GET", URL: u}), body)
		remember("nx namespaced", nsURL, nsBody)
	})

	t.Run("bazel http cache", func(t *testing.T) {
		blob := randomBytes(200 << 10)
		sum := sha256.Sum256(blob)
		casURL := base + "/cas/" + hex.EncodeToString(sum[:])
		expectNotFound(t, "GET before PUT", do(t, request{Method: "GET", URL: casURL}))
		expectStatus(t, "PUT /cas", do(t, request{Method: "PUT", URL: casURL, Body: bytes.NewReader(blob)}), 200)
		expectBody(t, "GET /cas", do(t, request{Method: "GET", URL: casURL}), blob)
		head := do(t, request{Method: "HEAD", URL: casURL})
		expectStatus(t, "HEAD /cas", head, 200)
		if cl := head.Header.Get("Content-Length"); cl != fmt.Sprint(len(blob)) {
			t.Errorf("HEAD /cas: Content-Length %q, want %d", cl, len(blob))
		}
		remember("bazel cas", casURL, blob)

		wrong := randomBytes(100)
		wrongSum := sha256.Sum256(append([]byte("not the body"), wrong...))
		wrongURL := base + "/cas/" + hex.EncodeToString(wrongSum[:])
		expectStatus(t, "PUT /cas with a body that does not hash to the key", do(t, request{Method: "PUT", URL: wrongURL, Body: bytes.NewReader(wrong)}), 400)
		expectNotFound(t, "GET after the rejected PUT", do(t, request{Method: "GET", URL: wrongURL}))

		empty := sha256.Sum256(nil)
		got := do(t, request{Method: "GET", URL: base + "/cas/" + hex.EncodeToString(empty[:])})
		expectStatus(t, "GET of the empty blob", got, 200)
		if len(got.Body) != 0 {
			t.Errorf("empty blob has %d bytes", len(got.Body))
		}

		actionKey := sha256.Sum256(randomBytes(64))
		result := randomBytes(246) // an ActionResult proto is opaque to the HTTP cache
		acURL := base + "/ac/" + hex.EncodeToString(actionKey[:])
		expectStatus(t, "PUT /ac", do(t, request{Method: "PUT", URL: acURL, Body: bytes.NewReader(result)}), 200)
		expectBody(t, "GET /ac", do(t, request{Method: "GET", URL: acURL}), result)
		remember("bazel ac", acURL, result)

		nsCAS := base + "/team-a/cas/" + hex.EncodeToString(sum[:])
		expectNotFound(t, "GET of a default-namespace blob under /team-a", do(t, request{Method: "GET", URL: nsCAS}))
		expectStatus(t, "PUT /team-a/cas", do(t, request{Method: "PUT", URL: nsCAS, Body: bytes.NewReader(blob)}), 200)
		expectBody(t, "GET /team-a/cas", do(t, request{Method: "GET", URL: nsCAS}), blob)
	})

	t.Run("metro", func(t *testing.T) {
		key := hex.EncodeToString(randomBytes(36)) // real Metro keys are 36 bytes
		var gz bytes.Buffer
		zw, _ := gzip.NewWriterLevel(&gz, gzip.BestCompression)
		zw.Write(append([]byte{0}, randomBytes(10<<10)...))
		zw.Close()
		u := base + "/api/metro/cache/" + key
		expectNotFound(t, "GET before PUT", do(t, request{Method: "GET", URL: u}))
		// Metro streams its gzip body chunked, without Content-Length.
		expectStatus(t, "chunked PUT", do(t, request{Method: "PUT", URL: u, Body: io.MultiReader(bytes.NewReader(gz.Bytes()))}), 200)
		got := do(t, request{Method: "GET", URL: u})
		expectBody(t, "GET", got, gz.Bytes())
		if ce := got.Header.Get("Content-Encoding"); ce != "" {
			t.Errorf("GET: Content-Encoding %q, want none (Metro gunzips by itself)", ce)
		}
		remember("metro", u, gz.Bytes())
		expectNotFound(t, "GET with another namespace_id", do(t, request{Method: "GET", URL: u + "?tenant_id=acme&namespace_id=app2"}))
	})

	t.Run("declared bodies over the limit", func(t *testing.T) {
		// Only the headers are sent: the server must answer 413 from Content-Length alone.
		for _, c := range []struct{ what, method, path string }{
			{"Nx over 2 GiB", "PUT", "/v1/cache/" + fmt.Sprint(rng.Uint64())},
			{"Gradle over 100 MiB", "PUT", "/api/cache/gradle/acme/android/" + hex.EncodeToString(randomBytes(16))},
			{"Xcode over KURA_MAX_XCODE_BYTES", "POST", "/api/cache/cas/declared-too-big?tenant_id=acme&namespace_id=ios"},
			{"Metro over 2 GiB", "PUT", "/api/metro/cache/" + hex.EncodeToString(randomBytes(36))},
		} {
			status := statusForDeclaredBody(t, node.HTTPAddr(), c.method, c.path, 3<<30)
			if status != 413 {
				t.Errorf("%s: %s %s with Content-Length 3 GiB got %d, want 413", c.what, c.method, c.path, status)
			}
		}
	})

	t.Run("clean", func(t *testing.T) {
		q := "?tenant_id=acme&namespace_id=wipe"
		xcode := base + "/api/cache/cas/wipe-me" + q
		gradle := base + "/api/cache/gradle/acme/wipe/" + hex.EncodeToString(randomBytes(16))
		expectStatus(t, "POST xcode", do(t, request{Method: "POST", URL: xcode, Body: strings.NewReader("bye")}), 204)
		expectStatus(t, "PUT gradle", do(t, request{Method: "PUT", URL: gradle, Body: strings.NewReader("bye")}), 201)
		expectError(t, "DELETE without namespace_id", do(t, request{Method: "DELETE", URL: base + "/api/cache/clean?tenant_id=acme"}), 400, "Missing namespace_id")
		expectStatus(t, "DELETE clean", do(t, request{Method: "DELETE", URL: base + "/api/cache/clean" + q}), 204)
		expectNotFound(t, "xcode after clean", do(t, request{Method: "GET", URL: xcode}))
		expectNotFound(t, "gradle after clean", do(t, request{Method: "GET", URL: gradle}))
		keep = append(keep, persisted{what: "cleaned xcode", url: xcode}, persisted{what: "cleaned gradle", url: gradle})
	})

	t.Run("metrics", func(t *testing.T) {
		got := do(t, request{Method: "GET", URL: base + "/metrics"})
		expectStatus(t, "GET /metrics", got, 200)
		if ct := got.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("/metrics Content-Type %q, want text/plain", ct)
		}
		m := ScrapeMetrics(t, node)
		for _, name := range []string{"kura_http_requests_total", "kura_artifact_reads_total", "kura_artifact_writes_total"} {
			if !m.Has(name) {
				t.Errorf("/metrics lacks %s after traffic", name)
			}
		}
		if n := m.Sum("kura_artifact_writes_total", map[string]string{"kind": "nx", "result": "stored"}); n < 2 {
			t.Errorf("kura_artifact_writes_total{kind=nx,result=stored} = %v, want ≥ 2", n)
		}
	})

	t.Run("restart keeps data", func(t *testing.T) {
		node.Stop()
		node.Restart()
		for _, p := range keep {
			got := do(t, request{Method: "GET", URL: p.url})
			switch {
			case strings.HasPrefix(p.what, "cleaned"):
				expectNotFound(t, p.what+" after restart", got)
			case p.what == "keyvalue":
				expectStatus(t, "keyvalue after restart", got, 200)
				if values := keyValueValues(t, got.Body); !reflect.DeepEqual(values, []string{"second", "third"}) {
					t.Errorf("keyvalue after restart: entries %v", values)
				}
			default:
				expectBody(t, p.what+" after restart", got, p.body)
			}
		}
		t.Logf("%d objects checked after a graceful restart", len(keep))
	})
}

// keyValueValues extracts the entry values of a keyvalue document.
func keyValueValues(t testing.TB, doc []byte) []string {
	t.Helper()
	var kv struct {
		Entries []struct {
			Value string `json:"value"`
		} `json:"entries"`
	}
	if err := json.Unmarshal(doc, &kv); err != nil {
		t.Fatalf("keyvalue document %q: %v", doc, err)
	}
	var values []string
	for _, e := range kv.Entries {
		values = append(values, e.Value)
	}
	return values
}

// statusForDeclaredBody sends only the request head with a huge Content-Length and returns
// the status the server answers with before any body byte is sent.
func statusForDeclaredBody(t testing.TB, addr, method, path string, length int64) int {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	head := fmt.Sprintf("%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", method, path, addr, length)
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatalf("send the request head: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s with Content-Length %d: no response without the body: %v", method, path, length, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}
