package policy

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"

	lua "github.com/Shopify/go-lua"
)

// Bounds of a value decoded from Lua (a hook's result, the argument of a host function). A
// script that returns something larger is wrong, and refusing it keeps one bad result from
// costing the node memory.
const (
	maxDecodeDepth   = 32
	maxDecodeEntries = 100_000
	maxDecodeBytes   = 4 << 20
)

// decodeBudget counts what a decode has consumed so far.
type decodeBudget struct {
	entries int
	bytes   int
}

var errUnsupportedValue = errors.New("unsupported Lua value")

// toGo converts the Lua value at idx into nil, bool, float64, string, []any or map[string]any.
// A table whose keys are exactly 1..n is a list; any other table is a map whose keys must be
// strings (numbers are accepted and written in decimal). Functions, userdata and threads are
// refused: a decision must be plain data.
func toGo(l *lua.State, idx int, b *decodeBudget) (any, error) {
	return toGoDepth(l, l.AbsIndex(idx), b, 0)
}

func toGoDepth(l *lua.State, idx int, b *decodeBudget, depth int) (any, error) {
	switch l.TypeOf(idx) {
	case lua.TypeNil, lua.TypeNone:
		return nil, nil
	case lua.TypeBoolean:
		return l.ToBoolean(idx), nil
	case lua.TypeNumber:
		n, _ := l.ToNumber(idx)
		if math.IsNaN(n) || math.IsInf(n, 0) {
			return nil, fmt.Errorf("%w: a number that is NaN or infinite", errUnsupportedValue)
		}
		return n, nil
	case lua.TypeString:
		s, _ := l.ToString(idx)
		if b.bytes += len(s); b.bytes > maxDecodeBytes {
			return nil, fmt.Errorf("%w: more than %d bytes of strings", errUnsupportedValue, maxDecodeBytes)
		}
		return s, nil
	case lua.TypeTable:
		if depth >= maxDecodeDepth {
			return nil, fmt.Errorf("%w: tables nested deeper than %d", errUnsupportedValue, maxDecodeDepth)
		}
		return tableToGo(l, idx, b, depth+1)
	default:
		return nil, fmt.Errorf("%w: a %s", errUnsupportedValue, lua.TypeNameOf(l, idx))
	}
}

func tableToGo(l *lua.State, idx int, b *decodeBudget, depth int) (any, error) {
	m := map[string]any{}
	var list []any
	isList := true
	l.PushNil()
	for l.Next(idx) {
		if b.entries++; b.entries > maxDecodeEntries {
			l.Pop(2)
			return nil, fmt.Errorf("%w: more than %d table entries", errUnsupportedValue, maxDecodeEntries)
		}
		var key string
		switch l.TypeOf(-2) {
		case lua.TypeString:
			key, _ = l.ToString(-2)
			isList = false
		case lua.TypeNumber:
			n, _ := l.ToNumber(-2)
			if n != math.Trunc(n) || math.IsInf(n, 0) {
				l.Pop(2)
				return nil, fmt.Errorf("%w: a table key that is a fractional number", errUnsupportedValue)
			}
			key = strconv.FormatFloat(n, 'f', -1, 64)
		default:
			t := lua.TypeNameOf(l, -2)
			l.Pop(2)
			return nil, fmt.Errorf("%w: a table key that is a %s", errUnsupportedValue, t)
		}
		v, err := toGoDepth(l, l.AbsIndex(-1), b, depth)
		if err != nil {
			l.Pop(2)
			return nil, err
		}
		m[key] = v
		l.Pop(1)
	}
	if isList && len(m) > 0 {
		list = make([]any, len(m))
		for i := range list {
			v, ok := m[strconv.Itoa(i+1)]
			if !ok {
				return m, nil // numeric keys with holes: keep it a map
			}
			list[i] = v
		}
		return list, nil
	}
	return m, nil
}

// pushGo pushes a Go value made of the types toGo and encoding/json produce (JWT claims,
// http_json responses and json_decode results are decoded JSON, so numbers are float64) as a
// Lua value. Map keys are pushed in sorted order so scripts that iterate see the same order on
// every node.
func pushGo(l *lua.State, v any) {
	switch x := v.(type) {
	case nil:
		l.PushNil()
	case bool:
		l.PushBoolean(x)
	case string:
		l.PushString(x)
	case float64:
		l.PushNumber(x)
	case []any:
		l.CreateTable(len(x), 0)
		for i, e := range x {
			pushGo(l, e)
			l.RawSetInt(-2, i+1)
		}
	case map[string]any:
		l.CreateTable(0, len(x))
		for _, k := range sortedKeys(x) {
			pushGo(l, x[k])
			l.SetField(-2, k)
		}
	default:
		// Unreachable for values this package builds (Principal.Attributes is exported, so a
		// caller could set anything); a visible marker keeps the Lua stack balanced and beats
		// a panic.
		l.PushString(fmt.Sprint(x))
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
