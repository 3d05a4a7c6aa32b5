package e2e

import (
	"os"
	"testing"

	"github.com/kuracache/kura/e2e/harness"
)

// TestMain builds kura once for the whole run (or takes KURA_E2E_BINARY); see harness.Main.
func TestMain(m *testing.M) {
	os.Exit(harness.Main(m))
}
