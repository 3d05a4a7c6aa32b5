package reliability

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// Item 10: the access-control policy under attack, with the ready-made policies of
// examples/policies.

const policyItem = 10

func examplePolicy(name string) string {
	return filepath.Join(harness.ModuleRoot(), "examples", "policies", name)
}

// policyGet reads one object with a bearer token and returns the status and the latency.
func policyGet(client *http.Client, url, token string) (int, time.Duration, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, time.Since(start), err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, time.Since(start), nil
}

// TestReliabilityPolicyForgedTokens sends distinct forged tokens to a node running the
// static-tokens policy, with denials cached for ten minutes (so none expires during the run)
// and a decision cache bound that is no multiple of its shard count: every forged token is
// refused, the cache never holds more than its bound (kura_extension_cache_entries, sampled
// during the attack), and the resident set does not grow with the number of tokens.
func TestReliabilityPolicyForgedTokens(t *testing.T) {
	const bound = 1000
	node := harness.StartNode(t, harness.NodeOptions{Env: map[string]string{
		"KURA_EXTENSION_SCRIPT_PATH":                 examplePolicy("static-tokens.lua"),
		"KURA_POLICY_TOKENS":                         "real-token default write",
		"KURA_EXTENSION_CACHE_MAX_ENTRIES":           fmt.Sprint(bound),
		"KURA_EXTENSION_AUTH_CACHE_DENY_TTL_SECONDS": "600",
	}})
	tokens := figures.Pick(2_000, 10_000)
	url := node.URL() + "/api/cache/cas/target?tenant_id=default&namespace_id=default"
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 16}}
	t.Cleanup(client.CloseIdleConnections)
	forge := func(i int) string { return fmt.Sprintf("forged-%s-%06d", strings.Repeat("f", 200), i) }

	// Warm up with as many tokens as the cache holds, so the baseline has a full cache.
	for i := range bound {
		if status, _, err := policyGet(client, url, forge(-1-i)); err != nil || status != http.StatusUnauthorized {
			t.Fatalf("forged token: %d %v, want 401", status, err)
		}
	}
	baseline, err := node.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	var next atomic.Int64
	var refused, other atomic.Int64
	var maxEntries atomic.Int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	var peak atomic.Int64
	go func() {
		defer close(sampled)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if v, err := node.RSSBytes(); err == nil && v > peak.Load() {
				peak.Store(v)
			}
			if n := int64(harness.ScrapeMetrics(t, node).Sum("kura_extension_cache_entries", nil)); n > maxEntries.Load() {
				maxEntries.Store(n)
			}
		}
	}()
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(tokens) {
					return
				}
				status, _, err := policyGet(client, url, forge(int(i)))
				if err == nil && status == http.StatusUnauthorized {
					refused.Add(1)
				} else {
					other.Add(1)
					t.Errorf("forged token %d: %d %v", i, status, err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	m := harness.ScrapeMetrics(t, node)
	entries := int64(m.Sum("kura_extension_cache_entries", nil))
	maxEntries.Store(max(maxEntries.Load(), entries))
	evictions := m.Sum("kura_extension_cache_evictions_total", nil)
	after, err := node.RSSBytes()
	if err != nil {
		t.Fatal(err)
	}
	growth := max(peak.Load(), after) - baseline
	if status, _, err := policyGet(client, url, "real-token"); err != nil || status != http.StatusNotFound {
		t.Errorf("the real token after the attack: %d %v, want 404 (allowed, nothing stored)", status, err)
	}
	t.Logf("%d forged tokens: %d refused, %d otherwise; cache %d entries (max seen %d, bound %d), %v evictions; RSS %d MiB, +%.1f MiB (race=%v)",
		tokens, refused.Load(), other.Load(), entries, maxEntries.Load(), bound, evictions, baseline>>20, float64(growth)/(1<<20), harness.Race())
	figures.Check(t, policyItem, fmt.Sprintf("forged tokens refused (%d distinct)", tokens), fmt.Sprintf("%d/%d", refused.Load(), tokens), fmt.Sprintf("%d/%d", tokens, tokens))
	figures.Record(t, policyItem, "decision cache entries under forged tokens (max sampled)", fmt.Sprint(maxEntries.Load()), fmt.Sprintf("<= %d", bound), maxEntries.Load() <= bound)
	if maxEntries.Load() > bound {
		t.Errorf("the decision cache held %d entries, bound %d", maxEntries.Load(), bound)
	}
	// With the cache full before the attack, what it holds cannot grow; what may is garbage
	// between collections and the runtime's slack, not a per-token cost.
	rssBound := int64(48 << 20)
	if harness.Race() {
		rssBound *= 4
	}
	figures.Record(t, policyItem, fmt.Sprintf("RSS growth under %d forged tokens (cache full before)", tokens),
		fmt.Sprintf("%.1f MiB (race=%v)", float64(growth)/(1<<20), harness.Race()), fmt.Sprintf("<= %d MiB", rssBound>>20), growth <= rssBound)
	if growth > rssBound {
		t.Errorf("RSS grew by %d MiB under forged tokens, bound %d MiB", growth>>20, rssBound>>20)
	}
}

// TestReliabilityPolicyHangingAuthService runs the http-authz policy against an
// authorisation service that answers some tokens and never answers the others: a request
// whose hook waits on the hanging service fails closed within the hook timeout, and requests
// with credentials already allowed (cached) keep their latency meanwhile.
func TestReliabilityPolicyHangingAuthService(t *testing.T) {
	const hookTimeout = 500 * time.Millisecond
	release := make(chan struct{})
	var hung atomic.Int64
	authz := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var q map[string]string
		_ = json.NewDecoder(r.Body).Decode(&q)
		if strings.HasPrefix(q["token"], "known-") {
			_, _ = w.Write([]byte(`{"allow": true, "ttl_seconds": 600}`))
			return
		}
		hung.Add(1)
		select { // never answers while the test runs
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(authz.Close)
	t.Cleanup(func() { close(release) }) // runs first: lets the handlers return so Close does not wait
	node := harness.StartNode(t, harness.NodeOptions{Env: map[string]string{
		"KURA_EXTENSION_SCRIPT_PATH":                          examplePolicy("http-authz.lua"),
		"KURA_EXTENSION_HTTP_CLIENT_AUTHZ_BASE_URL":           authz.URL,
		"KURA_EXTENSION_HTTP_CLIENT_AUTHZ_REQUEST_TIMEOUT_MS": "30000", // the hook's own deadline must be what stops it
		"KURA_EXTENSION_HOOK_TIMEOUT_MS":                      fmt.Sprint(hookTimeout.Milliseconds()),
		"KURA_EXTENSION_AUTH_CACHE_DENY_TTL_SECONDS":          "0",
	}})
	url := node.URL() + "/api/cache/cas/target?tenant_id=default&namespace_id=default"
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 32}}
	t.Cleanup(client.CloseIdleConnections)
	known := []string{"known-a", "known-b", "known-c", "known-d"}
	for _, k := range known { // allowed and cached
		if status, _, err := policyGet(client, url, k); err != nil || status != http.StatusNotFound {
			t.Fatalf("a known token: %d %v, want 404 (allowed, nothing stored)", status, err)
		}
	}
	cachedReads := func(n int) []time.Duration {
		var lat []time.Duration
		for i := range n {
			status, took, err := policyGet(client, url, known[i%len(known)])
			if err != nil || status != http.StatusNotFound {
				t.Errorf("a cached known token: %d %v", status, err)
				continue
			}
			lat = append(lat, took)
		}
		return lat
	}
	before := percentile(cachedReads(100), 50)

	// The attack: as many hanging requests at once as there are interpreters and more, each
	// with its own token so none is answered from the cache.
	attackers := figures.Pick(16, 64)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var hangLat []time.Duration
	statuses := map[int]int{}
	for i := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			status, took, err := policyGet(client, url, fmt.Sprintf("unknown-%d-%s", i, uniqueID(t)))
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("a request waiting on the hanging service: %v", err)
				return
			}
			statuses[status]++
			hangLat = append(hangLat, took)
		}()
	}
	harness.PollUntil(t, 30*time.Second, "the attackers' hooks to be waiting on the service", func() (bool, string) {
		return hung.Load() > 0, fmt.Sprintf("%d waiting", hung.Load())
	})
	during := cachedReads(100)
	wg.Wait()

	failedClosed := 0
	for status, n := range statuses {
		if status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusServiceUnavailable {
			failedClosed += n
		}
	}
	worst := percentile(hangLat, 100)
	t.Logf("%d requests on the hanging service: statuses %v, latency p50 %v max %v (hook timeout %v); %d calls reached it",
		attackers, statuses, percentile(hangLat, 50), worst, hookTimeout, hung.Load())
	figures.Check(t, policyItem, "requests on a hanging authorisation service failed closed", fmt.Sprintf("%d/%d", failedClosed, attackers), fmt.Sprintf("%d/%d", attackers, attackers))
	// Queued behind the interpreters, a request may wait for one hook timeout before its own.
	limit := 2*hookTimeout + 2*time.Second
	figures.Record(t, policyItem, fmt.Sprintf("slowest fail-closed answer (hook timeout %v)", hookTimeout), worst.Round(time.Millisecond).String(),
		fmt.Sprintf("<= %v", limit), worst <= limit)
	if worst > limit {
		t.Errorf("a request on the hanging service took %v, bound %v", worst, limit)
	}
	p50 := percentile(during, 50)
	figures.Report(t, policyItem, fmt.Sprintf("p50 of cached-credential requests during the hang (before: %v)", before.Round(100*time.Microsecond)), p50.Round(100*time.Microsecond).String())
	if p50 > 5*before+50*time.Millisecond {
		t.Errorf("cached-credential p50 %v during the hang, %v before it", p50, before)
	}
}
