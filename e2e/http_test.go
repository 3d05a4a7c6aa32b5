package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// maxTestResponse caps what the suite reads from one response (the largest object it stores
// is a few MiB).
const maxTestResponse = 64 << 20

// testHTTP is the HTTP client of the suite. Requests go to loopback only; no proxy applies.
var testHTTP = &http.Client{
	Timeout: 2 * time.Minute,
	Transport: &http.Transport{
		Proxy:               nil,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     30 * time.Second,
	},
}

// response is a fully read HTTP response.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

func (r response) String() string {
	body := r.Body
	if len(body) > 300 {
		body = append(body[:300:300], "…"...)
	}
	return fmt.Sprintf("%d %q", r.Status, body)
}

// request describes one call; Body may be nil.
type request struct {
	Method string
	URL    string
	Body   io.Reader
	// Header values to set. Content-Length is derived from Body when it is a *bytes.Reader,
	// *bytes.Buffer or *strings.Reader, and absent (chunked) otherwise.
	Header map[string]string
}

// do performs the request and reads the whole response, failing the test on transport errors.
func do(t testing.TB, r request) response {
	t.Helper()
	resp, err := tryDo(r)
	if err != nil {
		t.Fatalf("%s %s: %v", r.Method, r.URL, err)
	}
	return resp
}

// tryDo is do for callers that expect transport errors (the crash test).
func tryDo(r request) (response, error) {
	req, err := http.NewRequest(r.Method, r.URL, r.Body)
	if err != nil {
		return response{}, err
	}
	for k, v := range r.Header {
		req.Header.Set(k, v)
	}
	resp, err := testHTTP.Do(req)
	if err != nil {
		return response{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxTestResponse))
	if err != nil {
		return response{}, fmt.Errorf("read the response body: %w", err)
	}
	return response{Status: resp.StatusCode, Header: resp.Header, Body: body}, nil
}

// expectStatus fails the test unless the response has the wanted status.
func expectStatus(t testing.TB, what string, got response, want int) {
	t.Helper()
	if got.Status != want {
		t.Fatalf("%s: got %s, want status %d", what, got, want)
	}
}

// expectBody fails the test unless the response is 200 with exactly the wanted bytes, a
// matching Content-Length and an ETag.
func expectBody(t testing.TB, what string, got response, want []byte) {
	t.Helper()
	expectStatus(t, what, got, http.StatusOK)
	if !bytes.Equal(got.Body, want) {
		t.Fatalf("%s: body differs (%d bytes, want %d)", what, len(got.Body), len(want))
	}
	if cl := got.Header.Get("Content-Length"); cl != fmt.Sprint(len(want)) {
		t.Errorf("%s: Content-Length = %q, want %d", what, cl, len(want))
	}
	if got.Header.Get("ETag") == "" {
		t.Errorf("%s: no ETag header", what)
	}
}

// expectError fails the test unless the response is the given status with a JSON
// {"message": …} body whose message starts with wantPrefix.
func expectError(t testing.TB, what string, got response, status int, wantPrefix string) {
	t.Helper()
	expectStatus(t, what, got, status)
	if ct := got.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type = %q, want application/json", what, ct)
	}
	var body struct {
		Message string `json:"message"`
	}
	if err := json.Unmarshal(got.Body, &body); err != nil {
		t.Fatalf("%s: error body is not JSON {\"message\"}: %v (%s)", what, err, got)
	}
	if !strings.HasPrefix(body.Message, wantPrefix) {
		t.Errorf("%s: message %q, want it to start with %q", what, body.Message, wantPrefix)
	}
}

// expectNotFound fails the test unless the response is a plain 404 with an empty body.
func expectNotFound(t testing.TB, what string, got response) {
	t.Helper()
	expectStatus(t, what, got, http.StatusNotFound)
	if len(got.Body) != 0 {
		t.Errorf("%s: 404 body %q, want empty", what, got.Body)
	}
}
