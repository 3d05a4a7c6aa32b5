package charts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const smokeScript = "../e2e/kind_smoke.sh"

// TestValuesFilesOnlySetKnownKeys: helm silently ignores a value the templates never read, so
// a misspelt key in a values file, a test's --set or the smoke script's helm install would
// leave the default in place unnoticed. Every key they set must exist in values.yaml (below
// a list, an empty map such as annotations, or a free-form map such as resources, anything
// goes).
func TestValuesFilesOnlySetKnownKeys(t *testing.T) {
	defaults := readValues(t, filepath.Join(chartDir, "values.yaml"))
	for _, file := range []string{"values-scaleway.yaml", "ci/all-on-values.yaml"} {
		for _, path := range leafPaths(readValues(t, filepath.Join(chartDir, file)), nil) {
			if !knownValuePath(defaults, path) {
				t.Errorf("%s sets %s, which values.yaml does not have", file, strings.Join(path, "."))
			}
		}
	}

	var sets []string
	for _, c := range chartCases() {
		for i, arg := range c.args {
			if arg == "--set" {
				sets = append(sets, strings.Split(c.args[i+1], ",")...)
			}
		}
	}
	script, err := os.ReadFile(smokeScript)
	if err != nil {
		t.Fatal(err)
	}
	scriptSets := regexp.MustCompile(`--set ([^\s=]+)=`).FindAllStringSubmatch(string(script), -1)
	if len(scriptSets) < 5 {
		t.Fatalf("found %d --set flags in %s; has its helm install changed shape?", len(scriptSets), smokeScript)
	}
	for _, m := range scriptSets {
		sets = append(sets, m[1]+"=")
	}
	for _, set := range sets {
		key, _, _ := strings.Cut(set, "=")
		if !knownValuePath(defaults, strings.Split(key, ".")) {
			t.Errorf("--set %s: values.yaml has no %s", set, key)
		}
	}
}

// TestKindSmokeScriptIsShellcheckClean lints e2e/kind_smoke.sh, which needs Docker and kind
// and so never runs in CI. A missing shellcheck skips the test locally and fails it in CI.
func TestKindSmokeScriptIsShellcheckClean(t *testing.T) {
	fi, err := os.Stat(smokeScript)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Errorf("%s is not executable", smokeScript)
	}
	if out, err := exec.Command("bash", "-n", smokeScript).CombinedOutput(); err != nil {
		t.Fatalf("bash -n %s: %v\n%s", smokeScript, err, out)
	}
	shellcheck := requireTool(t, "shellcheck", "apt-get install shellcheck")
	if out, err := exec.Command(shellcheck, "--shell=bash", "--severity=style", smokeScript).CombinedOutput(); err != nil {
		t.Fatalf("shellcheck %s: %v\n%s", smokeScript, err, out)
	}
}

func readValues(t *testing.T, file string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var values map[string]any
	if err := yaml.UnmarshalStrict(data, &values); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return values
}

// leafPaths lists the key paths of a values tree down to its leaves; lists and empty maps are
// leaves.
func leafPaths(values map[string]any, prefix []string) [][]string {
	var paths [][]string
	for key, v := range values {
		path := append(slices.Clone(prefix), key)
		if m, ok := v.(map[string]any); ok && len(m) > 0 {
			paths = append(paths, leafPaths(m, path)...)
			continue
		}
		paths = append(paths, path)
	}
	return paths
}

// freeFormValues are maps of values.yaml whose defaults are examples, not the full set of keys:
// they are passed to the manifests as they are.
var freeFormValues = []string{"resources", "podSecurityContext", "securityContext"}

func knownValuePath(defaults map[string]any, path []string) bool {
	if len(path) > 0 && slices.Contains(freeFormValues, path[0]) {
		_, ok := defaults[path[0]]
		return ok
	}
	node := defaults
	for _, key := range path {
		v, ok := node[key]
		if !ok {
			return false
		}
		m, isMap := v.(map[string]any)
		if !isMap || len(m) == 0 {
			// A leaf, a list or a free-form map: whatever is below is the user's.
			return true
		}
		node = m
	}
	return true
}
