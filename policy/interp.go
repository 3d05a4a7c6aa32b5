package policy

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	rtmetrics "runtime/metrics"
	"strings"
	"time"

	lua "github.com/Shopify/go-lua"
)

// Hook names.
const (
	hookAuthenticate    = "authenticate"
	hookAuthorize       = "authorize"
	hookResponseHeaders = "response_headers"
)

var hookNames = [...]string{hookAuthenticate, hookAuthorize, hookResponseHeaders}

// Why a hook call was aborted (the "result" label of kura_extension_hook_calls_total).
const (
	abortTimeout  = "timeout"
	abortMemory   = "memory"
	abortCanceled = "canceled"
)

// The count hook runs every countHookInstructions Lua instructions: often enough that an
// infinite loop stops within microseconds of its deadline, rarely enough to cost ~1 % of a
// hook's run time. Allocation is sampled every memoryCheckTicks of those (a runtime/metrics
// read costs ~0.5 µs).
const (
	countHookInstructions = 100
	memoryCheckTicks      = 4
)

// abortError is a hook call stopped by the engine rather than failed by the script.
type abortError struct {
	hook, reason string
	limit        string
}

func (e *abortError) Error() string {
	return fmt.Sprintf("%s hook aborted: %s (%s)", e.hook, e.reason, e.limit)
}

// crashError is a Go panic inside the interpreter (a go-lua bug a script tripped over). The
// interpreter is discarded; the node keeps serving.
type crashError struct {
	hook  string
	value any
}

func (e *crashError) Error() string {
	return fmt.Sprintf("%s hook crashed the interpreter: %v", e.hook, e.value)
}

// interp is one Lua interpreter with the script loaded. It is used by one goroutine at a time
// (the pool hands it out); nothing in it is safe for concurrent use.
type interp struct {
	l     *lua.State
	env   *hostEnv
	calls int
	// broken is set when the interpreter must not be reused: a call was aborted (its state
	// may be mid-way through anything) or go-lua panicked.
	broken bool

	// allocLimit is what one call (or the script's load) may allocate, for the interpreter's
	// whole life (KURA_EXTENSION_HOOK_MEMORY_BYTES; 0: unguarded).
	allocLimit uint64

	// Per call: the limits and what has been used of them. ctx is the call's context (the
	// request's, with the hook deadline): host functions do their I/O and logging with it.
	ctx       context.Context
	deadline  time.Time
	allocBase uint64 // heap allocation counter at the start, plus host-function allocation
	ticks     int
	abort     *abortError
	hook      string
}

// heapAllocs reads the process's cumulative heap allocation counter. It counts every
// goroutine, so the memory guard measures "what was allocated while this hook ran"; host
// functions' own allocations are subtracted (see hostCall).
func heapAllocs() uint64 {
	s := [1]rtmetrics.Sample{{Name: "/gc/heap/allocs:bytes"}}
	rtmetrics.Read(s[:])
	return s[0].Value.Uint64()
}

// newInterp builds an interpreter and runs the script's top level within loadTimeout.
func newInterp(src *script, env *hostEnv, loadTimeout time.Duration, allocLimit uint64) (*interp, error) {
	it := &interp{l: lua.NewState(), env: env, allocLimit: allocLimit}
	it.openSandbox()
	it.installHost()
	lua.SetDebugHook(it.l, it.onCount, lua.MaskCount, countHookInstructions)

	ctx, cancel := context.WithTimeout(context.Background(), loadTimeout)
	defer cancel()
	err := it.protect("load", ctx, func() error {
		if err := lua.LoadBuffer(it.l, src.text, "@"+filepath.Base(src.name), "t"); err != nil {
			msg, _ := it.l.ToString(-1)
			return fmt.Errorf("%s", strings.TrimPrefix(msg, "syntax error: "))
		}
		if err := it.l.ProtectedCall(0, 0, 0); err != nil {
			return it.luaError(err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return it, nil
}

// defines reports whether the loaded script defines the global function name.
func (it *interp) defines(name string) bool {
	it.l.Global(name)
	defer it.l.Pop(1)
	return it.l.IsFunction(-1)
}

// call runs one hook with the given arguments pushed by push, and decodes its single result.
func (it *interp) call(ctx context.Context, hook string, push func(l *lua.State) int) (any, error) {
	var result any
	err := it.protect(hook, ctx, func() error {
		l := it.l
		l.SetTop(0)
		l.Global(hook)
		n := push(l)
		if err := l.ProtectedCall(n, 1, 0); err != nil {
			return it.luaError(err)
		}
		var err error
		result, err = toGo(l, -1, &decodeBudget{})
		return err
	})
	it.calls++
	it.l.SetTop(0)
	return result, err
}

// protect runs fn with the call's limits armed, turning an abort into an *abortError and a
// Go panic into a *crashError; either marks the interpreter broken.
func (it *interp) protect(hook string, ctx context.Context, fn func() error) (err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return errors.New("policy: hook call without a deadline")
	}
	it.ctx, it.deadline, it.hook = ctx, deadline, hook
	it.ticks, it.abort = 0, nil
	it.allocBase = heapAllocs()
	defer func() {
		if p := recover(); p != nil {
			it.broken = true
			err = &crashError{hook: hook, value: p}
		}
		it.ctx = nil
	}()
	err = fn()
	if it.abort != nil {
		it.broken = true
		return it.abort
	}
	return err
}

// luaError turns a failed protected call into an error carrying the Lua message (which names
// the script and line).
func (it *interp) luaError(err error) error {
	if it.abort != nil {
		return it.abort
	}
	msg, ok := it.l.ToString(-1)
	if !ok || msg == "" {
		msg = err.Error()
	}
	return errors.New(strings.TrimPrefix(msg, "runtime error: "))
}

// onCount is the instruction-count hook: it aborts the call once the deadline passed, the
// request was cancelled, or the call allocated more than its budget.
func (it *interp) onCount(l *lua.State, _ lua.Debug) {
	if it.ctx == nil {
		return
	}
	if it.abort != nil {
		it.raiseAbort(l)
	}
	it.ticks++
	switch {
	case time.Now().After(it.deadline):
		it.abort = &abortError{hook: it.hook, reason: abortTimeout, limit: "KURA_EXTENSION_HOOK_TIMEOUT_MS"}
	case it.ctx.Err() != nil:
		it.abort = &abortError{hook: it.hook, reason: abortCanceled, limit: "the request ended"}
	case it.ticks%memoryCheckTicks == 0 && it.allocLimit > 0 && heapAllocs()-it.allocBase > it.allocLimit:
		it.abort = &abortError{hook: it.hook, reason: abortMemory,
			limit: fmt.Sprintf("allocated more than %d bytes, KURA_EXTENSION_HOOK_MEMORY_BYTES", it.allocLimit)}
	default:
		return
	}
	it.raiseAbort(l)
}

func (it *interp) raiseAbort(l *lua.State) {
	errorf(l, "kura: %s", it.abort.Error())
}

// reraiseIfAborted is called by pcall and xpcall after their protected call returns.
func (it *interp) reraiseIfAborted(l *lua.State) {
	if it.abort != nil {
		it.raiseAbort(l)
	}
}

// hostCall runs a host function that may block or allocate on the script's behalf (an HTTP
// call, a JWKS fetch): its allocations do not count against the script's memory budget, and
// its time does count against the deadline, which it receives as its context.
func (it *interp) hostCall(fn func(ctx context.Context) error) error {
	before := heapAllocs()
	err := fn(it.ctx)
	it.allocBase += heapAllocs() - before
	return err
}
