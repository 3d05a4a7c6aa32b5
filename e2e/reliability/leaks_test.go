package reliability

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// goleakMain matches a TestMain that fails the run on a leaked goroutine: goleak's own
// VerifyTestMain, or a harness.Main followed by goleak.Find (e2e, e2e/reliability).
var goleakMain = regexp.MustCompile(`goleak\.(VerifyTestMain|Find)\(`)

// TestReliabilityEveryPackageChecksLeaks (item 12) holds the module to its rule: every package
// with tests has a TestMain that fails the run when a test leaves a goroutine behind, so
// `go test -race ./...` is the leak check of the whole suite. It also reports whether this
// run is race-instrumented (scripts/test and scripts/reliability always are).
func TestReliabilityEveryPackageChecksLeaks(t *testing.T) {
	root := harness.ModuleRoot()
	withTests := map[string]bool{}
	checked := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch name := d.Name(); {
			case path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "node_modules" || name == "test-output"):
				return filepath.SkipDir
			}
			if path != root {
				if _, err := os.Stat(filepath.Join(path, "go.mod")); err == nil {
					return filepath.SkipDir // another module (a client fixture)
				}
			}
			return nil
		}
		if !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		dir, _ := filepath.Rel(root, filepath.Dir(path))
		withTests[dir] = true
		src, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if strings.Contains(string(src), "func TestMain(") && goleakMain.Match(src) {
			checked[dir] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var missing []string
	for dir := range withTests {
		if !checked[dir] {
			missing = append(missing, dir)
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("packages whose TestMain does not check for leaked goroutines: %s", strings.Join(missing, ", "))
	}
	figures.Check(t, 12, "packages with tests whose TestMain fails on a leaked goroutine",
		fmt.Sprintf("%d/%d", len(withTests)-len(missing), len(withTests)), fmt.Sprintf("%d/%d", len(withTests), len(withTests)))
	figures.Report(t, 12, "race detector on in this run (tests / kura nodes)", fmt.Sprintf("%v / %v", harness.TestBinaryRace(), harness.Race()))
}
