package policy

import (
	"fmt"
	"strconv"
	"strings"

	lua "github.com/Shopify/go-lua"
	"github.com/yuin/gopher-lua/pm"
)

// maxStringBytes bounds a string a library function builds (string.rep, string.gsub): the
// interpreter's memory guard samples between instructions, so one call that allocates a huge
// string at once must be refused before it runs.
const maxStringBytes = 4 << 20

// maxMatches bounds the matches string.gmatch and string.gsub collect (pm finds them all up
// front).
const maxMatches = 100_000

// removedGlobals are base-library functions a policy must not have: loading code from files
// or strings (dofile, loadfile, load), forcing stop-the-world collections (collectgarbage),
// and the module system. io, os, package and debug are never opened at all.
var removedGlobals = []string{"dofile", "loadfile", "load", "loadstring", "require", "module", "collectgarbage"}

// openSandbox opens the libraries a policy may use (base, string, table, math, bit32), removes
// what reaches outside the interpreter, and replaces what go-lua leaves unimplemented (Lua
// patterns) or unbounded (string.rep) and pcall/xpcall, which must not be able to swallow the
// error that aborts a runaway hook.
func (it *interp) openSandbox() {
	l := it.l
	for _, lib := range []lua.RegistryFunction{
		{Name: "_G", Function: lua.BaseOpen},
		{Name: "string", Function: lua.StringOpen},
		{Name: "table", Function: lua.TableOpen},
		{Name: "math", Function: lua.MathOpen},
		{Name: "bit32", Function: lua.Bit32Open},
	} {
		lua.Require(l, lib.Name, lib.Function, true)
		l.Pop(1)
	}
	for _, name := range removedGlobals {
		l.PushNil()
		l.SetGlobal(name)
	}
	// package.loaded keeps references to the opened libraries; nothing may reach it.
	l.PushNil()
	l.SetGlobal("package")

	l.Register("pcall", it.pcall)
	l.Register("xpcall", it.xpcall)
	l.Register("print", it.print)

	l.Global("string")
	lua.SetFunctions(l, []lua.RegistryFunction{
		{Name: "find", Function: strFind},
		{Name: "match", Function: strMatch},
		{Name: "gmatch", Function: strGmatch},
		{Name: "gsub", Function: strGsub},
		{Name: "rep", Function: strRep},
	}, 0)
	l.PushNil()
	l.SetField(-2, "dump")
	l.Pop(1)
}

// pcall is base pcall, except that once the hook is being aborted (deadline, memory, a
// cancelled request) the error is raised again instead of returned: a script that wraps an
// infinite loop in pcall still stops.
func (it *interp) pcall(l *lua.State) int {
	lua.CheckAny(l, 1)
	l.PushNil()
	l.Insert(1) // room for the status
	err := l.ProtectedCall(l.Top()-2, lua.MultipleReturns, 0)
	it.reraiseIfAborted(l)
	l.PushBoolean(err == nil)
	l.Replace(1)
	return l.Top()
}

// xpcall is base xpcall with pcall's abort rule. go-lua resolves a protected call's message
// handler as a frame-relative index on an absolute stack, so it calls the wrong slot from any
// nested frame; the handler is therefore called here, after the failed call returns (scripts
// have no debug library, so nothing a handler could see on the unwound stack is lost).
func (it *interp) xpcall(l *lua.State) int {
	n := l.Top()
	lua.ArgumentCheck(l, n >= 2, 2, "value expected")
	l.PushValue(1)
	for i := 3; i <= n; i++ {
		l.PushValue(i)
	}
	err := l.ProtectedCall(n-2, lua.MultipleReturns, 0)
	it.reraiseIfAborted(l)
	if err != nil {
		l.PushValue(2) // handler(error object)
		l.Insert(-2)
		if l.ProtectedCall(1, 1, 0) != nil {
			it.reraiseIfAborted(l)
		}
		l.PushBoolean(false)
		l.Insert(-2)
		return 2
	}
	l.PushBoolean(true)
	l.Insert(n + 1)
	return l.Top() - n
}

// print writes to the node's log (at debug level), never to stdout, where it would corrupt
// the JSON log stream.
func (it *interp) print(l *lua.State) int {
	n := l.Top()
	parts := make([]string, 0, n)
	for i := 1; i <= n; i++ {
		s, _ := lua.ToStringMeta(l, i)
		parts = append(parts, s)
		l.Pop(1)
	}
	msg := strings.Join(parts, "\t")
	if len(msg) > 4096 {
		msg = msg[:4096] + "…"
	}
	it.env.logger.DebugContext(it.ctx, "policy script print", "message", msg)
	return 0
}

// relativeInit turns Lua's 1-based, possibly negative init argument into a 0-based offset
// clamped to [0, n].
func relativeInit(init, n int) int {
	switch {
	case init > 0:
		init--
	case init < 0:
		init = n + init
	}
	return max(0, min(init, n))
}

const patternSpecials = "^$*+?.([%-"

func strFind(l *lua.State) int {
	s, p := lua.CheckString(l, 1), lua.CheckString(l, 2)
	rawInit := lua.OptInteger(l, 3, 1)
	if rawInit > len(s)+1 {
		l.PushNil()
		return 1
	}
	init := relativeInit(rawInit, len(s))
	if l.ToBoolean(4) || !strings.ContainsAny(p, patternSpecials) {
		if i := strings.Index(s[init:], p); i >= 0 {
			l.PushInteger(init + i + 1)
			l.PushInteger(init + i + len(p))
			return 2
		}
		l.PushNil()
		return 1
	}
	mds := findMatches(l, p, s, init, 1)
	if len(mds) == 0 {
		l.PushNil()
		return 1
	}
	md := mds[0]
	l.PushInteger(md.Capture(0) + 1)
	l.PushInteger(md.Capture(1))
	return 2 + pushCaptures(l, md, s, false)
}

func strMatch(l *lua.State) int {
	s, p := lua.CheckString(l, 1), lua.CheckString(l, 2)
	rawInit := lua.OptInteger(l, 3, 1)
	if rawInit > len(s)+1 {
		l.PushNil()
		return 1
	}
	mds := findMatches(l, p, s, relativeInit(rawInit, len(s)), 1)
	if len(mds) == 0 {
		l.PushNil()
		return 1
	}
	return pushCaptures(l, mds[0], s, true)
}

func strGmatch(l *lua.State) int {
	s, p := lua.CheckString(l, 1), lua.CheckString(l, 2)
	mds := findMatches(l, p, s, 0, maxMatches+1)
	if len(mds) > maxMatches {
		errorf(l, "string.gmatch: more than %d matches", maxMatches)
	}
	next := 0
	l.PushGoFunction(func(l *lua.State) int {
		if next >= len(mds) {
			return 0
		}
		md := mds[next]
		next++
		return pushCaptures(l, md, s, true)
	})
	return 1
}

func strGsub(l *lua.State) int {
	s, p := lua.CheckString(l, 1), lua.CheckString(l, 2)
	switch l.TypeOf(3) {
	case lua.TypeString, lua.TypeNumber, lua.TypeTable, lua.TypeFunction:
	default:
		lua.ArgumentError(l, 3, "string/function/table expected")
	}
	limit := maxMatches + 1
	if l.TypeOf(4) != lua.TypeNone && l.TypeOf(4) != lua.TypeNil {
		limit = min(lua.CheckInteger(l, 4), limit)
		if limit <= 0 {
			l.PushString(s)
			l.PushInteger(0)
			return 2
		}
	}
	mds := findMatches(l, p, s, 0, limit)
	if len(mds) > maxMatches {
		errorf(l, "string.gsub: more than %d matches", maxMatches)
	}
	var b strings.Builder
	last := 0
	for _, md := range mds {
		start, end := md.Capture(0), md.Capture(1)
		b.WriteString(s[last:start])
		b.WriteString(replacement(l, md, s))
		last = end
		if b.Len() > maxStringBytes {
			errorf(l, "string.gsub: result longer than %d bytes", maxStringBytes)
		}
	}
	b.WriteString(s[last:])
	if b.Len() > maxStringBytes {
		errorf(l, "string.gsub: result longer than %d bytes", maxStringBytes)
	}
	l.PushString(b.String())
	l.PushInteger(len(mds))
	return 2
}

// replacement computes gsub's replacement for one match from argument 3: a string with %0-%9
// and %%, a table indexed by the first capture, or a function called with the captures. A
// false or nil result keeps the original text.
func replacement(l *lua.State, md *pm.MatchData, s string) string {
	whole := s[md.Capture(0):md.Capture(1)]
	switch l.TypeOf(3) {
	case lua.TypeString, lua.TypeNumber:
		repl, _ := l.ToString(3)
		var b strings.Builder
		for i := 0; i < len(repl); i++ {
			c := repl[i]
			if c != '%' || i+1 == len(repl) {
				b.WriteByte(c)
				continue
			}
			i++
			d := repl[i]
			switch {
			case d == '0':
				b.WriteString(whole)
			case d >= '1' && d <= '9':
				b.WriteString(captureString(l, md, s, int(d-'0')))
			case d == '%':
				b.WriteByte('%')
			default:
				errorf(l, "invalid use of '%%' in replacement string")
			}
		}
		return b.String()
	case lua.TypeTable:
		pushFirstCapture(l, md, s)
		l.Table(3)
	default: // function
		l.PushValue(3)
		n := pushCaptures(l, md, s, true)
		l.Call(n, 1)
	}
	defer l.Pop(1)
	if !l.ToBoolean(-1) {
		return whole
	}
	str, ok := l.ToString(-1)
	if !ok {
		errorf(l, "invalid replacement value (a %s)", lua.TypeNameOf(l, -1))
	}
	return str
}

func strRep(l *lua.State) int {
	s, n := lua.CheckString(l, 1), lua.CheckInteger(l, 2)
	sep := lua.OptString(l, 3, "")
	if n <= 0 {
		l.PushString("")
		return 1
	}
	if total := int64(n)*int64(len(s)) + int64(n-1)*int64(len(sep)); total > maxStringBytes {
		errorf(l, "string.rep: result of %d bytes is longer than %d", total, maxStringBytes)
	}
	if sep == "" {
		l.PushString(strings.Repeat(s, n))
		return 1
	}
	l.PushString(strings.Repeat(s+sep, n-1) + s)
	return 1
}

// findMatches runs a Lua pattern; a malformed pattern is a Lua error naming it.
func findMatches(l *lua.State, pattern, s string, offset, limit int) []*pm.MatchData {
	mds, err := pm.Find(pattern, []byte(s), offset, limit)
	if err != nil {
		errorf(l, "malformed pattern %q: %s", pattern, err.Error())
	}
	return mds
}

// pushCaptures pushes a match's captures (positions as numbers); with none, wholeIfNone
// pushes the whole match. It returns the number of values pushed.
func pushCaptures(l *lua.State, md *pm.MatchData, s string, wholeIfNone bool) int {
	n := md.CaptureLength()/2 - 1
	if n == 0 {
		if !wholeIfNone {
			return 0
		}
		l.PushString(s[md.Capture(0):md.Capture(1)])
		return 1
	}
	for i := 1; i <= n; i++ {
		pushCapture(l, md, s, i)
	}
	return n
}

func pushFirstCapture(l *lua.State, md *pm.MatchData, s string) {
	if md.CaptureLength() <= 2 {
		l.PushString(s[md.Capture(0):md.Capture(1)])
		return
	}
	pushCapture(l, md, s, 1)
}

// pushCapture pushes capture i (1-based).
func pushCapture(l *lua.State, md *pm.MatchData, s string, i int) {
	idx := 2 * i
	if md.IsPosCapture(idx) {
		l.PushInteger(md.Capture(idx))
		return
	}
	l.PushString(s[md.Capture(idx):md.Capture(idx+1)])
}

// captureString is capture i (1-based) as text for a replacement string; %1 with no captures
// is the whole match, as in Lua.
func captureString(l *lua.State, md *pm.MatchData, s string, i int) string {
	if md.CaptureLength() <= 2 && i == 1 {
		return s[md.Capture(0):md.Capture(1)]
	}
	idx := 2 * i
	if idx+1 >= md.CaptureLength() {
		errorf(l, "invalid capture index %%%d", i)
	}
	if md.IsPosCapture(idx) {
		return strconv.Itoa(md.Capture(idx))
	}
	return s[md.Capture(idx):md.Capture(idx+1)]
}

// errorf formats a Lua error for host functions (it never returns).
func errorf(l *lua.State, format string, args ...any) {
	lua.Errorf(l, "%s", fmt.Sprintf(format, args...))
}
