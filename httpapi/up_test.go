package httpapi

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

type staticMembers []Member

func (m staticMembers) Members() []Member { return m }

func TestUpWithMembers(t *testing.T) {
	h := newHarness(t, harnessOpts{members: staticMembers{
		{Name: "node-c", Region: "us", URL: "http://node-c:4000"},
		{Name: "node-a", Region: "eu", URL: "http://node-a:4000"}, // self
		{Name: "node-b", Region: "eu", URL: "http://node-b:4000"},
	}})
	r := h.do("GET", "/up", nil)
	expect(t, r, http.StatusOK, "-")
	if ct := r.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type = %q", ct)
	}
	var got map[string]any
	if err := json.Unmarshal(r.body, &got); err != nil {
		t.Fatalf("decode %q: %v", r.body, err)
	}
	want := map[string]any{
		"status":            "ok",
		"tenant_id":         "default",
		"region":            "eu",
		"node":              "node-a",
		"node_url":          "http://node-a:4000",
		"connected_nodes":   []any{"http://node-b:4000", "http://node-c:4000"},
		"ring_members":      3.0,
		"ring_member_names": []any{"node-a", "node-b", "node-c"},
		"state":             "serving",
		"members":           []any{"eu", "us"},
		"nodes":             []any{"http://node-a:4000", "http://node-b:4000", "http://node-c:4000"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("/up = %v\nwant   %v", got, want)
	}
}

func TestUpAlone(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.do("GET", "/up", nil)
	expect(t, r, http.StatusOK, "-")
	body := strings.TrimSpace(string(r.body))
	want := `{"status":"ok","tenant_id":"default","region":"eu","node":"node-a","node_url":"http://node-a:4000",` +
		`"connected_nodes":[],"ring_members":1,"ring_member_names":["node-a"],"members":["eu"],"nodes":["http://node-a:4000"],"state":"serving"}`
	if body != want {
		t.Fatalf("/up = %s\nwant  %s", body, want)
	}
}

func TestMetricsAfterTraffic(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	expect(t, h.do("PUT", "/v1/cache/1", "12345"), http.StatusOK, "")
	expect(t, h.do("PUT", "/v1/cache/1", "12345"), http.StatusConflict, "")
	expect(t, h.do("GET", "/v1/cache/1", nil), http.StatusOK, "12345")
	expectEmpty404(t, h.do("GET", "/v1/cache/2", nil))
	expectEmpty404(t, h.do("GET", "/no/such/route/at/all", nil))
	r := h.do("GET", "/metrics", nil)
	expect(t, r, http.StatusOK, "-")
	text := string(r.body)
	for _, line := range []string{
		`kura_http_requests_total{method="PUT",route="/v1/cache/{hash}",status="200"} 1`,
		`kura_http_requests_total{method="PUT",route="/v1/cache/{hash}",status="409"} 1`,
		`kura_http_requests_total{method="GET",route="/v1/cache/{hash}",status="404"} 1`,
		`kura_http_requests_total{method="GET",route="unmatched",status="404"} 1`,
		`kura_http_request_duration_seconds_count{method="GET",route="/v1/cache/{hash}"} 2`,
		`kura_artifact_writes_total{artifact_class="blob",client="nx",kind="nx",result="stored"} 1`,
		`kura_artifact_writes_total{artifact_class="blob",client="nx",kind="nx",result="exists"} 1`,
		`kura_artifact_reads_total{artifact_class="blob",client="nx",kind="nx",result="hit"} 1`,
		`kura_artifact_reads_total{artifact_class="blob",client="nx",kind="nx",result="miss"} 1`,
		`kura_artifact_write_bytes_total{artifact_class="blob",client="nx",kind="nx"} 5`,
		`kura_artifact_read_bytes_total{artifact_class="blob",client="nx",kind="nx"} 5`,
	} {
		if !strings.Contains(text, line+"\n") {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if strings.Contains(text, "/no/such") {
		t.Error("a raw path leaked into a route label")
	}
}
