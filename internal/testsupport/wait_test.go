package testsupport

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestWaitForReturnsOnceTheConditionHolds(t *testing.T) {
	var calls atomic.Int32
	WaitFor(t, "the third check", 5*time.Second, func() bool { return calls.Add(1) >= 3 })
	if n := calls.Load(); n != 3 {
		t.Fatalf("cond called %d times, want 3", n)
	}
}

// fatalRecorder records a Fatalf instead of ending the test.
type fatalRecorder struct {
	testing.TB
	msg string
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	panic(f) // stop WaitForNil as t.Fatalf's runtime.Goexit would
}

func TestWaitForNilReportsTheLastError(t *testing.T) {
	rec := &fatalRecorder{TB: t}
	start := time.Now()
	func() {
		defer func() {
			if r := recover(); r != rec {
				t.Fatalf("recovered %v, want the recorder's Fatalf", r)
			}
		}()
		WaitForNil(rec, "the replica", 30*time.Millisecond, func() error { return errors.New("2 of 3 copies") })
	}()
	if time.Since(start) > 5*time.Second {
		t.Fatalf("WaitForNil overran its 30ms bound: %v", time.Since(start))
	}
	if want := "timed out after 30ms waiting for the replica: 2 of 3 copies"; rec.msg != want {
		t.Fatalf("failure message %q, want %q", rec.msg, want)
	}
}
