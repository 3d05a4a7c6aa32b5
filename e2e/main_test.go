package e2e

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/kuracache/kura/e2e/harness"
)

// TestMain builds kura once for the whole run (or takes KURA_E2E_BINARY); see harness.Main.
// After a passing run it fails when a test left a goroutine behind (reliability item 12).
func TestMain(m *testing.M) {
	code := harness.Main(m)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: goroutines leaked by the suite: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}
