package policy

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	lua "github.com/Shopify/go-lua"
)

const runawayScript = `
function authenticate(ctx)
  local t = ctx.credentials and ctx.credentials.token
  if t == "loop" then
    while true do end
  elseif t == "pcall-loop" then
    -- pcall must not be able to swallow the abort.
    while true do pcall(function() while true do end end) end
  elseif t == "xpcall-loop" then
    while true do xpcall(function() while true do end end, function(e) return e end) end
  elseif t == "recursion" then
    local function f(n) return f(n + 1) + 1 end
    return {principal = {id = tostring(f(1))}}
  elseif t == "table" then
    local grow = {}
    local i = 0
    while true do
      i = i + 1
      grow[i] = string.rep("x", 65536) .. i
    end
  elseif t == "huge-rep" then
    return {principal = {id = string.rep("x", 1e10)}}
  end
  return {principal = {id = t or "anonymous"}, ttl_seconds = 0}
end`

func TestRunawayHooksAreAbortedAndFailClosed(t *testing.T) {
	e := newTestEngine(t, runawayScript, func(c *Config) { c.HookTimeout = 50 * time.Millisecond })
	for _, tok := range []string{"loop", "pcall-loop", "xpcall-loop"} {
		start := time.Now()
		d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer "+tok))
		took := time.Since(start)
		if d.Allowed || d.Status != 401 {
			t.Errorf("%s: %+v, want a fail-closed 401", tok, d)
		}
		// A bound far above the 50 ms timeout: this checks that the loop stopped at all.
		if took > 5*time.Second {
			t.Errorf("%s: the hook ran %v", tok, took)
		}
		t.Logf("figure: %s aborted after %v (timeout 50ms)", tok, took)
	}
	if n := e.hookCalls(hookAuthenticate, abortTimeout); n != 3 {
		t.Errorf("timeouts counted %d, want 3", n)
	}
	if n := int(e.metricValue(t, "kura_extension_hook_timeouts_total")); n != 3 {
		t.Errorf("kura_extension_hook_timeouts_total = %d, want 3", n)
	}
	if n := int(e.metricValue(t, "kura_extension_interpreters_discarded_total")); n < 3 {
		t.Errorf("aborted interpreters discarded: %d, want >= 3", n)
	}
	// Deep recursion is an ordinary Lua error ("stack overflow"), not a crash.
	if d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer recursion")); d.Allowed {
		t.Errorf("recursion: %+v", d)
	}
	// string.rep refuses to build a 10 GB string.
	if d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer huge-rep")); d.Allowed {
		t.Errorf("huge string.rep: %+v", d)
	}
	// The engine still answers well-behaved calls.
	if d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer fine")); !d.Allowed || d.Principal.ID != "fine" {
		t.Errorf("after the aborts: %+v", d)
	}
}

func TestRunawayAllocationIsAborted(t *testing.T) {
	// A generous timeout, so the memory guard is what stops the loop.
	e := newTestEngine(t, runawayScript, func(c *Config) {
		c.HookTimeout = 20 * time.Second
		c.HookMemoryBytes = 16 << 20
	})
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer table"))
	took := time.Since(start)
	if d.Allowed || d.Status != 401 {
		t.Fatalf("a table grown in a loop: %+v, want a fail-closed 401", d)
	}
	if n := e.hookCalls(hookAuthenticate, abortMemory); n != 1 {
		t.Fatalf("memory aborts counted %d, want 1 (timeouts %d)", n, e.hookCalls(hookAuthenticate, abortTimeout))
	}
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	t.Logf("figure: runaway table aborted after %v, %.1f MiB allocated (budget 16 MiB)",
		took, float64(after.TotalAlloc-before.TotalAlloc)/(1<<20))
}

func TestCancelledRequestAbortsItsHook(t *testing.T) {
	e := newTestEngine(t, runawayScript, func(c *Config) { c.HookTimeout = 20 * time.Second })
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	// Decide runs the leader's hooks without its cancellation (followers may wait on them),
	// so call the hook the way ResponseHeaders does: on the request's own context.
	err := e.run(ctx, hookAuthenticate, func(l *lua.State) int {
		e.pushContext(l, req(OpRead, "acme", "ios", "Authorization: Bearer loop"), Credentials{Scheme: "bearer", Token: "loop"}, 0)
		return 1
	}, func(any) error { return nil })
	if err == nil || e.hookCalls(hookAuthenticate, abortCanceled) != 1 {
		t.Fatalf("err = %v, canceled = %d", err, e.hookCalls(hookAuthenticate, abortCanceled))
	}
}

func TestRunawayHookLeavesOtherRequestsServed(t *testing.T) {
	// A pool of two: one interpreter is stuck in loops; cached and fresh requests still go
	// through the other.
	e := newTestEngine(t, runawayScript, func(c *Config) {
		c.HookTimeout = 100 * time.Millisecond
		c.PoolSize = 2
	})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
				decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer loop"))
			}
		}
	})
	var worst time.Duration
	for i := range 50 {
		start := time.Now()
		d := decide(e, req(OpRead, "acme", "ios", "Authorization: Bearer good"+string(rune('a'+i%26))))
		worst = max(worst, time.Since(start))
		if !d.Allowed {
			t.Errorf("a well-behaved request was denied while another hook looped: %+v", d)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("figure: worst well-behaved decision while another hook loops: %v", worst)
}
