package testsupport

import (
	"testing"
	"time"
)

// Poll intervals of WaitFor: the first checks come quickly, so a condition that is almost
// true costs a test nothing, and the interval then backs off so a slow condition (a store
// scan, a cluster converging) does not hog the two cores CI has.
const (
	firstPoll = time.Millisecond
	maxPoll   = 20 * time.Millisecond
)

// WaitFor polls cond until it returns true, failing t (naming what) if it has not within
// timeout. It is the bounded wait tests use instead of sleeping.
func WaitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	WaitForNil(t, what, timeout, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}

// WaitForNil polls cond until it returns nil, failing t with what and cond's last error if it
// has not within timeout.
func WaitForNil(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	interval := firstPoll
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			if err == errNotYet {
				t.Fatalf("timed out after %v waiting for %s", timeout, what)
			}
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(interval)
		interval = min(2*interval, maxPoll)
	}
}

type notYet struct{}

func (notYet) Error() string { return "condition not met" }

var errNotYet error = notYet{}
