package storage

import (
	"fmt"
	"testing"
)

func TestReplaces(t *testing.T) {
	lo, hi := [32]byte{1}, [32]byte{2}
	obj := func(v Version, sum [32]byte) Copy { return Copy{Version: v, SHA256: sum} }
	stub := func(v Version, sum [32]byte) Copy { return Copy{Version: v, SHA256: sum, Evicted: true} }
	cases := []struct {
		name    string
		in, cur Copy
		lww     bool // want for keyvalue and ac
		imm     bool // want for every immutable kind
	}{
		{"lower version, other body", obj(5, hi), obj(9, lo), false, true},
		{"higher version, other body", obj(9, lo), obj(5, hi), true, false},
		{"equal version, lower sha", obj(5, lo), obj(5, hi), false, true},
		{"equal version, higher sha", obj(5, hi), obj(5, lo), true, false},
		{"identical", obj(5, lo), obj(5, lo), false, false},
		// The same body at another version is the same artifact for immutable kinds.
		{"same body, lower version", obj(3, lo), obj(5, lo), false, false},
		{"same body, higher version", obj(7, lo), obj(5, lo), true, false},
		// A body over a stub: immutable stubs are no body; last-writer-wins stubs keep
		// their version (one at it fills, an older one does not).
		{"body over stub, older", obj(3, hi), stub(5, lo), false, true},
		{"body over stub, same copy", obj(5, lo), stub(5, lo), true, true},
		{"body over stub, newer", obj(7, hi), stub(5, lo), true, true},
		// A stub over a body never displaces an immutable body.
		{"stub over body, older", stub(3, hi), obj(5, lo), false, false},
		{"stub over body, newer", stub(7, hi), obj(5, lo), true, false},
		{"stub over body, same copy", stub(5, lo), obj(5, lo), false, false},
		// Between stubs the rule of the kind.
		{"stub over stub, lower", stub(3, hi), stub(5, lo), false, true},
		{"stub over stub, higher", stub(7, hi), stub(5, lo), true, false},
		{"stub over stub, equal version lower sha", stub(5, lo), stub(5, hi), false, true},
		{"stub over stub, identical", stub(5, lo), stub(5, lo), false, false},
	}
	for _, c := range cases {
		for _, kind := range Kinds {
			want := c.imm
			if kind.LastWriterWins() {
				want = c.lww
			}
			if got := Replaces(kind, c.in, c.cur); got != want {
				t.Errorf("%s: Replaces(%s, %+v, %+v) = %v, want %v", c.name, kind, c.in, c.cur, got, want)
			}
			// A copy that replaces another never loses to it in turn: the rule is an order.
			if want && Replaces(kind, c.cur, c.in) {
				t.Errorf("%s, %s: both copies replace each other", c.name, kind)
			}
			// MayReplace never rules out a write that would win.
			if want && !c.in.Evicted && !MayReplace(kind, c.in.Version, c.cur) {
				t.Errorf("%s, %s: MayReplace(%v, %+v) = false for a winning write", c.name, kind, c.in.Version, c.cur)
			}
		}
	}
}

// TestReplacesConverges delivers three distinct writes of one key to two nodes in every
// order: both must end on the same copy, the lowest version's for immutable kinds and the
// highest's for last-writer-wins kinds, and no node may return to a body it left.
func TestReplacesConverges(t *testing.T) {
	writes := []Copy{{Version: 20, SHA256: [32]byte{9}}, {Version: 10, SHA256: [32]byte{8}}, {Version: 10, SHA256: [32]byte{7}}}
	orders := [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}}
	for _, kind := range []Kind{KindGradle, KindKeyValue} {
		want := writes[2] // version 10, lower sha
		if kind.LastWriterWins() {
			want = writes[0]
		}
		for _, order := range orders {
			t.Run(fmt.Sprintf("%s/%v", kind, order), func(t *testing.T) {
				cur := writes[order[0]]
				seen := map[[32]byte]bool{cur.SHA256: true}
				for _, i := range order[1:] {
					if Replaces(kind, writes[i], cur) {
						if seen[writes[i].SHA256] {
							t.Fatalf("returned to body %x", writes[i].SHA256[0])
						}
						cur = writes[i]
						seen[cur.SHA256] = true
					}
				}
				if cur != want {
					t.Fatalf("ended on %+v, want %+v", cur, want)
				}
			})
		}
	}
}
