package ops

import (
	"bytes"
	"context"
	"debug/elf"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	task "github.com/go-task/task/v3"
	"github.com/go-task/task/v3/taskfile"
	"github.com/go-task/task/v3/taskfile/ast"
)

// The tasks the Taskfile must define, and what each one's commands must run (after go-task
// has resolved its variables).
var wantTasks = map[string][]string{
	"build":      {"go build -trimpath -ldflags \"-s -w -X " + versionVar + "=", "-o bin/kura ./cmd/kura"},
	"run":        {"go run ./cmd/kura"},
	"test":       {"scripts/test"},
	"test:e2e":   {"scripts/test", "./e2e/"},
	"lint":       {"gofmt -l", "go vet ./...", "staticcheck ./..."},
	"bench":      {"-bench", "./policy/", "./httpapi/", "./storage/local/", "./storage/segment/", "go run ./bench/reapi --help"},
	"chart":      {"helm lint charts/kura", "helm template kura charts/kura"},
	"stack":      {"docker compose up --build -d"},
	"stack:down": {"docker compose down"},
}

// TestTaskfileParses loads Taskfile.yml with go-task's own reader into its AST, as `task` does.
func TestTaskfileParses(t *testing.T) {
	node, err := taskfile.NewRootNode(filepath.Join(repoRoot(t), "Taskfile.yml"), repoRoot(t), false, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	graph, err := taskfile.NewReader().Read(ctx, node)
	if err != nil {
		t.Fatalf("Taskfile.yml: %v", err)
	}
	tf, err := graph.Merge()
	if err != nil {
		t.Fatal(err)
	}
	if !tf.Version.Equal(ast.V3) {
		t.Errorf("Taskfile version %v, want 3", tf.Version)
	}
	for name := range wantTasks {
		tk, ok := tf.Tasks.Get(name)
		switch {
		case !ok:
			t.Errorf("no task %s", name)
		case tk.Desc == "":
			t.Errorf("task %s has no desc, so task --list does not show it", name)
		case len(tk.Cmds) == 0:
			t.Errorf("task %s has no commands", name)
		}
	}
}

// executor sets up go-task's executor on the repository's Taskfile, with its state directory
// (.task) kept out of the repository.
func executor(t *testing.T, out *bytes.Buffer) *task.Executor {
	t.Helper()
	tmp := t.TempDir()
	e := task.NewExecutor(
		task.WithDir(repoRoot(t)),
		task.WithTempDir(task.TempDir{Remote: tmp, Fingerprint: tmp}),
		task.WithStdout(out), task.WithStderr(out),
		task.WithVersionCheck(true),
	)
	if err := e.Setup(); err != nil {
		t.Fatalf("task setup: %v", err)
	}
	return e
}

// TestTaskfileCommands compiles each task (go-task resolves its variables and templates) and
// checks what it would run.
func TestTaskfileCommands(t *testing.T) {
	var out bytes.Buffer
	e := executor(t, &out)
	for name, wants := range wantTasks {
		tk, err := e.CompiledTask(&task.Call{Task: name})
		if err != nil {
			t.Errorf("compile task %s: %v", name, err)
			continue
		}
		var cmds []string
		for _, c := range tk.Cmds {
			cmds = append(cmds, c.Cmd)
		}
		all := strings.Join(cmds, "\n")
		for _, want := range wants {
			if !strings.Contains(all, want) {
				t.Errorf("task %s runs %q, which lacks %q", name, cmds, want)
			}
		}
		if strings.Contains(all, "<no value>") {
			t.Errorf("task %s has an unresolved template: %q", name, cmds)
		}
		if name == "build" {
			if v, ok := tk.Env.Get("CGO_ENABLED"); !ok || v.Value != "0" {
				t.Errorf("task build runs with CGO_ENABLED=%v, want 0", v.Value)
			}
		}
	}
}

// TestTaskBuildIsStatic runs `task build` for real (into a temporary BIN) and checks the
// binary is static and stamped with the Taskfile's VERSION.
func TestTaskBuildIsStatic(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kura; skipped with -short")
	}
	var out bytes.Buffer
	e := executor(t, &out)
	bin := filepath.Join(t.TempDir(), "kura")
	vars := ast.NewVars()
	vars.Set("BIN", ast.Var{Value: bin})
	call := &task.Call{Task: "build", Vars: vars}
	tk, err := e.CompiledTask(call)
	if err != nil {
		t.Fatal(err)
	}
	version, _ := tk.Vars.Get("VERSION")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := e.Run(ctx, call); err != nil {
		t.Fatalf("task build: %v\n%s", err, out.String())
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if slices.ContainsFunc(f.Progs, func(p *elf.Prog) bool { return p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC }) {
		t.Error("task build made a dynamically linked binary")
	}
	got, err := exec.Command(bin, "--version").CombinedOutput()
	if want := "kura " + version.Value.(string); err != nil || strings.TrimSpace(string(got)) != want {
		t.Errorf("kura --version = %q (%v), want %q", got, err, want)
	}
}

// TestTaskChart runs `task chart` (helm lint and helm template of charts/kura) where helm is
// installed (scripts/install-test-deps puts it in the Go bin directory).
func TestTaskChart(t *testing.T) {
	if _, err := exec.LookPath("helm"); err != nil {
		t.Skip("helm is not installed")
	}
	var out bytes.Buffer
	e := executor(t, &out)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := e.Run(ctx, &task.Call{Task: "chart"}); err != nil {
		t.Fatalf("task chart: %v\n%s", err, out.String())
	}
	for _, want := range []string{"1 chart(s) linted, 0 chart(s) failed", "kind: StatefulSet"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("task chart printed no %q:\n%s", want, out.String())
		}
	}
}
