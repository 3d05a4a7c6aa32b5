package httpapi

import (
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/lifecycle"
)

type staticStatus NodeStatus

func (s staticStatus) Status() NodeStatus { return NodeStatus(s) }

func TestStatusPage(t *testing.T) {
	h := newHarness(t, harnessOpts{
		members: staticMembers{
			{Name: "node-a", Region: "eu", URL: "http://node-a:4000"},
			{Name: "node-b", Region: "us", URL: "http://node-b:4000"},
		},
		status: staticStatus{
			Version: "v1.2.3",
			Started: time.Now().Add(-90 * time.Minute),
			Members: []MemberStatus{
				{Name: "node-b", Region: "us", URL: "http://node-b:4000", Health: "suspect", OutboxDepth: 4242},
				{Name: "node-a", Region: "eu", URL: "http://node-a:4000", Self: true, Health: "alive"},
				{Name: "<b>evil</b>", Region: "us", URL: "http://x", Health: "alive"},
			},
			Disk:   DiskStatus{SegmentBytes: 3 << 30, BudgetBytes: 4 << 30, EvictedRecords: 900, EvictedSegments: 3},
			Memory: MemoryStatus{State: "soft", UsageBytes: 700 << 20, SoftLimitBytes: 512 << 20, HardLimitBytes: 1 << 30},
		},
	})
	// Three Nx lookups: one miss, two hits.
	expect(t, h.do("GET", "/v1/cache/1111", nil), http.StatusNotFound, "-")
	expect(t, h.do("PUT", "/v1/cache/1111", "artifact", "Content-Type", "application/octet-stream"), http.StatusOK, "")
	expect(t, h.do("GET", "/v1/cache/1111", nil), http.StatusOK, "artifact")
	expect(t, h.do("GET", "/v1/cache/1111", nil), http.StatusOK, "artifact")

	r := h.do("GET", "/", nil)
	expect(t, r, http.StatusOK, "-")
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Errorf("Content-Type = %q, want text/html", ct)
	}
	if cc := r.header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	page := string(r.body)
	for _, want := range []string{
		`id="node"`, `id="members"`, `id="hit-ratio"`, `id="disk"`, `id="memory"`,
		`<meta http-equiv="refresh" content="10">`,
		"Kura · node-a", `class="state serving"`, "v1.2.3", "1h30m",
		// Members grouped by region, sorted, with health and backlog.
		"<h3>eu</h3>", "<h3>us</h3>", `class="suspect">suspect`, "4242", "(this node)",
		// The hit ratio of the last minute: 2 hits of 3 lookups.
		"<td>nx</td>", "66.7 %",
		"3.0 GiB of 4.0 GiB (75.0 %)", "width: 75.0%", "900 artifacts in 3 segments",
		`class="state soft"`, "700.0 MiB", "512.0 MiB", "1.0 GiB",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Index(page, "<h3>eu</h3>") > strings.Index(page, "<h3>us</h3>") {
		t.Error("regions are not sorted")
	}
	if strings.Contains(page, "<b>evil</b>") || !strings.Contains(page, "&lt;b&gt;evil&lt;/b&gt;") {
		t.Error("member names are not HTML-escaped")
	}
	// Self-contained: no scripts, no external stylesheets, images or fonts.
	if m := regexp.MustCompile(`(?i)<script|<link|<img|<iframe|src=|@import|url\(`).FindString(page); m != "" {
		t.Errorf("status page loads an asset or runs script: %q", m)
	}
}

func TestStatusPageWithoutSource(t *testing.T) {
	h := newHarness(t, harnessOpts{})
	r := h.do("GET", "/", nil)
	expect(t, r, http.StatusOK, "-")
	page := string(r.body)
	for _, want := range []string{`id="node"`, `id="members"`, `id="hit-ratio"`, "No lookups in the last 15 minutes.", "This node runs alone."} {
		if !strings.Contains(page, want) {
			t.Errorf("status page lacks %q", want)
		}
	}
	if strings.Contains(page, `id="disk"`) {
		t.Error("status page shows a disk section without a source")
	}
}

func TestStatusPageWhileDraining(t *testing.T) {
	node, err := lifecycle.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	node.SetServing()
	h := newHarness(t, harnessOpts{lifecycle: node})
	node.BeginDrain()
	r := h.do("GET", "/", nil)
	expect(t, r, http.StatusOK, "-")
	if !strings.Contains(string(r.body), `class="state draining"`) {
		t.Errorf("a draining node's status page does not say so: %s", r.body)
	}
}
