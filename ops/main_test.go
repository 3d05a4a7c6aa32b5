package ops

import (
	"testing"

	"go.uber.org/goleak"
)

// The dashboard test runs real nodes in-process; every goroutine they start must be gone when
// the tests end. memberlist's Shutdown does not wait for a probe already in flight: that
// goroutine waits out its ack timeout and then returns by itself.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"))
}
