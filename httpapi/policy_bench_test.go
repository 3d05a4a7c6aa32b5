package httpapi

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/policy"
)

// BenchmarkGetThroughPolicy is GET of a 1 KiB object on the in-memory store by 32 concurrent
// clients, without a policy and with the Lua engine in front (every request a cached allow):
// the difference is what access control costs a request.
//
//	go test -run '^$' -bench GetThroughPolicy -benchtime 2s ./httpapi/
func BenchmarkGetThroughPolicy(b *testing.B) {
	script := filepath.Join(b.TempDir(), "policy.lua")
	if err := os.WriteFile(script, []byte(`
function authenticate(ctx)
  local c = ctx.credentials
  if c and c.scheme == "bearer" and c.token == "bench-token" then return {principal = {id = "bench"}} end
  return {deny = {status = 401}}
end
function authorize(ctx, p) return {allow = ctx.namespace_id == "get"} end`), 0o600); err != nil {
		b.Fatal(err)
	}
	for _, withPolicy := range []bool{false, true} {
		name := "no policy"
		var guard Guard
		if withPolicy {
			name = "cached allow"
			e, err := policy.New(policy.Config{ScriptPath: script, AllowTTL: 600e9, DenyTTL: 3e9, Registerer: prometheus.NewRegistry()})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { _ = e.Close() })
			guard = e
		}
		b.Run(name, func(b *testing.B) {
			h := newHarness(b, harnessOpts{guard: guard})
			payload := bytes.Repeat([]byte{'g'}, 1<<10)
			url := h.base + "/api/cache/cas/obj?tenant_id=bench&namespace_id=get"
			req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(payload))
			req.Header.Set("Authorization", "Bearer bench-token")
			if resp, err := h.client.Do(req); err != nil || resp.StatusCode != http.StatusNoContent {
				b.Fatalf("seed: %v %v", resp, err)
			}
			setBenchParallelism(b)
			b.SetBytes(int64(len(payload)))
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodGet, url, nil)
					req.Header.Set("Authorization", "Bearer bench-token")
					resp, err := h.client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						b.Error(fmt.Errorf("GET: %d", resp.StatusCode))
						return
					}
				}
			})
			reportOps(b)
		})
	}
}
