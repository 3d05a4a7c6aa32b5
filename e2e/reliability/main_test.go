package reliability

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

func TestMain(m *testing.M) {
	code := harness.Main(m)
	// Item 12: every goroutine a test started (clients, proxies, process reapers) is gone.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "reliability: goroutines leaked by the suite: %v\n", err)
			code = 1
		}
	}
	if figs := figures.Recorded(); len(figs) > 0 {
		fmt.Printf("\nreliability figures of this run (%s mode):\n%s", figures.Pick("short", "long"), figures.Table(figs))
	}
	os.Exit(code)
}
