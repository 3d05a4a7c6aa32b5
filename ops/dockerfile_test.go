package ops

import (
	"bytes"
	"context"
	"debug/elf"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/moby/buildkit/solver/pb"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"mvdan.cc/sh/v3/expand"
	"mvdan.cc/sh/v3/syntax"
)

// The ports the image must expose: HTTP API, REAPI gRPC, gossip (TCP and UDP), internal plane.
var wantExposed = []string{"4000/tcp", "50051/tcp", "7946/tcp", "7946/udp", "7443/tcp"}

// versionVar is the variable the release version is stamped into.
const versionVar = "github.com/kuracache/kura/internal/app.Version"

// parseDockerfile parses the repository's Dockerfile with BuildKit's own parser and returns
// its stages and every lint warning BuildKit raised while parsing.
func parseDockerfile(t *testing.T) ([]instructions.Stage, []string) {
	t.Helper()
	res, err := parser.Parse(bytes.NewReader(readRepoFile(t, "Dockerfile")))
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	var warnings []string
	for _, w := range res.Warnings {
		warnings = append(warnings, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, _ []parser.Range) {
		warnings = append(warnings, rule+": "+msg)
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("Dockerfile instructions: %v", err)
	}
	return stages, warnings
}

// commandsOf returns the stage's instructions of type C.
func commandsOf[C instructions.Command](s instructions.Stage) []C {
	var out []C
	for _, c := range s.Commands {
		if cc, ok := c.(C); ok {
			out = append(out, cc)
		}
	}
	return out
}

// goBuildRun is the build stage's RUN that calls go build, as one shell command line.
func goBuildRun(t *testing.T, build instructions.Stage) string {
	t.Helper()
	for _, run := range commandsOf[*instructions.RunCommand](build) {
		if line := strings.Join(run.CmdLine, " "); strings.Contains(line, "go build") {
			if !run.PrependShell {
				t.Fatalf("the go build RUN is in exec form; the test expects a shell command: %q", line)
			}
			return line
		}
	}
	t.Fatalf("stage %q has no RUN with go build", build.Name)
	return ""
}

func TestDockerfileIsMultiStageStaticAndNonRoot(t *testing.T) {
	stages, warnings := parseDockerfile(t)
	if len(warnings) > 0 {
		t.Errorf("BuildKit warnings: %q", warnings)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stage(s), want a multi-stage build", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	// The builder is the Go of go.mod's go line, so the image builds with what CI tests with.
	goLine := regexp.MustCompile(`(?m)^go (\S+)$`).FindSubmatch(readRepoFile(t, "go.mod"))
	if goLine == nil {
		t.Fatal("go.mod has no go line")
	}
	if want := "golang:" + string(goLine[1]); build.BaseName != want {
		t.Errorf("builder FROM %s, want %s (go.mod's go line)", build.BaseName, want)
	}
	line := goBuildRun(t, build)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-X " + versionVar + "=${VERSION}", "./cmd/kura"} {
		if !strings.Contains(line, want) {
			t.Errorf("go build RUN lacks %q: %s", want, line)
		}
	}
	if !slices.ContainsFunc(commandsOf[*instructions.ArgCommand](build), func(a *instructions.ArgCommand) bool {
		return slices.ContainsFunc(a.Args, func(kv instructions.KeyValuePairOptional) bool { return kv.Key == "VERSION" })
	}) {
		t.Error("the build stage declares no ARG VERSION")
	}

	// The final image: something small that is not the builder, with the binary copied in.
	if strings.HasPrefix(final.BaseName, "golang") {
		t.Errorf("final stage is FROM %s: the toolchain would ship in the image", final.BaseName)
	}
	if !slices.ContainsFunc(commandsOf[*instructions.CopyCommand](final), func(c *instructions.CopyCommand) bool {
		return c.From == build.Name && slices.Contains(c.SourcePaths, "/out/kura")
	}) {
		t.Errorf("final stage does not COPY --from=%s the binary", build.Name)
	}
	users := commandsOf[*instructions.UserCommand](final)
	if len(users) == 0 {
		t.Fatal("final stage sets no USER")
	}
	user := users[len(users)-1].User
	if name, _, _ := strings.Cut(user, ":"); name == "" || name == "root" || name == "0" {
		t.Errorf("final USER %q is root", user)
	}
	if _, err := strconv.Atoi(strings.SplitN(user, ":", 2)[0]); err != nil {
		t.Errorf("final USER %q is not numeric: Kubernetes' runAsNonRoot cannot verify a name", user)
	}
	hcs := commandsOf[*instructions.HealthCheckCommand](final)
	if len(hcs) != 1 {
		t.Fatalf("final stage has %d HEALTHCHECKs, want 1", len(hcs))
	}
	// kura healthcheck is GET /up (TestStaticBuildFromTheBuildContext runs it against a node).
	if hc := hcs[0].Health; !slices.Equal(hc.Test, []string{"CMD", "/kura", "healthcheck"}) || hc.Timeout <= 0 || hc.Interval <= 0 {
		t.Errorf("HEALTHCHECK %+v, want CMD [/kura healthcheck] with an interval and a timeout", hc)
	}
	var signals []string
	for _, s := range commandsOf[*instructions.StopSignalCommand](final) {
		signals = append(signals, s.Signal)
	}
	if !slices.Equal(signals, []string{"SIGTERM"}) {
		t.Errorf("STOPSIGNAL %q, want SIGTERM once", signals)
	}
	var exposed []string
	for _, e := range commandsOf[*instructions.ExposeCommand](final) {
		for _, p := range e.Ports {
			if !strings.Contains(p, "/") {
				p += "/tcp"
			}
			exposed = append(exposed, p)
		}
	}
	slices.Sort(exposed)
	want := slices.Clone(wantExposed)
	slices.Sort(want)
	if !slices.Equal(exposed, want) {
		t.Errorf("EXPOSE %v, want %v", exposed, want)
	}
}

// buildHost is the platform the conversions below build on.
var buildHost = ocispecs.Platform{OS: "linux", Architecture: "amd64"}

// offlineResolver answers BuildKit's base-image lookups without a registry: a one-layer
// linux image of the platform asked for, so the conversions below run with no network.
type offlineResolver struct{}

func (offlineResolver) ResolveImageConfig(_ context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	arch := buildHost.Architecture
	if opt.ImageOpt != nil && opt.ImageOpt.Platform != nil {
		arch = opt.ImageOpt.Platform.Architecture
	}
	// One layer, or BuildKit treats the base as scratch and drops its platform.
	layer := digest.FromString("layer of " + ref)
	cfg := `{"architecture":"` + arch + `","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["` + layer.String() + `"]}}`
	return ref, digest.FromString(ref + arch), []byte(cfg), nil
}

// convertDockerfile runs BuildKit's Dockerfile frontend (what docker build runs before it
// executes anything) over dt and returns the image config it would produce and the warnings of
// every lint rule (what docker build --check reports).
func convertDockerfile(t *testing.T, dt []byte, args map[string]string, target ocispecs.Platform) (*dockerfile2llb.Result, []string) {
	t.Helper()
	var warnings []string
	res, err := dockerfile2llb.Dockerfile2LLB(context.Background(), dt, dockerfile2llb.ConvertOpt{
		Config: dockerui.Config{
			BuildArgs:      args,
			LinterConfig:   &linter.Config{},
			BuildPlatforms: []ocispecs.Platform{buildHost},
		},
		TargetPlatform: &target,
		MetaResolver:   offlineResolver{},
		Warn: func(rule, _, _, msg string, _ []parser.Range) {
			warnings = append(warnings, rule+": "+msg)
		},
	})
	if err != nil {
		t.Fatalf("BuildKit frontend: %v", err)
	}
	return res, warnings
}

func TestDockerfileImageConfig(t *testing.T) {
	// Control: the lint rules do fire (FromAsCasing, LegacyKeyValueFormat, UndefinedVar), so
	// "no warnings" below means something.
	if _, w := convertDockerfile(t, []byte("FROM alpine as base\nENV A 1\nCOPY $NOPE /x\n"), nil, buildHost); len(w) < 3 {
		t.Fatalf("a Dockerfile with two lint problems gave warnings %q", w)
	}

	res, warnings := convertDockerfile(t, readRepoFile(t, "Dockerfile"), map[string]string{"VERSION": "1.2.3"}, buildHost)
	if len(warnings) > 0 {
		t.Errorf("docker build --check rules: %q", warnings)
	}
	cfg := res.Image.Config
	if name, _, _ := strings.Cut(cfg.User, ":"); name == "" || name == "0" || name == "root" {
		t.Errorf("image user %q", cfg.User)
	}
	var exposed []string
	for p := range cfg.ExposedPorts {
		exposed = append(exposed, p)
	}
	slices.Sort(exposed)
	want := slices.Clone(wantExposed)
	slices.Sort(want)
	if !slices.Equal(exposed, want) {
		t.Errorf("exposed ports %v, want %v", exposed, want)
	}
	if !slices.Contains(cfg.Env, "KURA_DATA_DIR=/data") {
		t.Errorf("env %v lacks KURA_DATA_DIR=/data", cfg.Env)
	}
	if _, ok := cfg.Volumes["/data"]; !ok {
		t.Errorf("volumes %v lack /data", cfg.Volumes)
	}
	if cfg.StopSignal != "SIGTERM" {
		t.Errorf("stop signal %q", cfg.StopSignal)
	}
	if !slices.Equal(cfg.Entrypoint, []string{"/kura"}) {
		t.Errorf("entrypoint %v", cfg.Entrypoint)
	}
	if hc := cfg.Healthcheck; hc == nil || !slices.Equal(hc.Test, []string{"CMD", "/kura", "healthcheck"}) {
		t.Errorf("healthcheck %+v", hc)
	}
	if v := cfg.Labels["org.opencontainers.image.version"]; v != "1.2.3" {
		t.Errorf("version label %q, want the VERSION build argument", v)
	}
}

// TestDockerfileCrossCompiles converts the Dockerfile for linux/arm64 on an amd64 host: the go
// build must run natively on the host and compile for arm64, so a multi-platform build needs
// no emulation and ships the right binary in each image.
func TestDockerfileCrossCompiles(t *testing.T) {
	arm := ocispecs.Platform{OS: "linux", Architecture: "arm64"}
	res, _ := convertDockerfile(t, readRepoFile(t, "Dockerfile"), nil, arm)
	if res.Image.Architecture != "arm64" {
		t.Errorf("the image is for %s, want arm64", res.Image.Architecture)
	}
	def, err := res.State.Marshal(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, dt := range def.Def {
		var op pb.Op
		if err := op.UnmarshalVT(dt); err != nil {
			t.Fatal(err)
		}
		exec := op.GetExec()
		if exec == nil || !strings.Contains(strings.Join(exec.Meta.Args, " "), "go build") {
			continue
		}
		found = true
		if p := op.Platform; p == nil || p.Architecture != buildHost.Architecture {
			t.Errorf("go build runs on %v, want the build host's %s", p, buildHost.Architecture)
		}
		for _, want := range []string{"TARGETOS=linux", "TARGETARCH=arm64"} {
			if !slices.Contains(exec.Meta.Env, want) {
				t.Errorf("go build runs with %q, want %s", exec.Meta.Env, want)
			}
		}
	}
	if !found {
		t.Fatal("no go build step in the converted build")
	}
}

// buildContextFiles lists the files docker build would send as its context: everything under
// the repository root that .dockerignore does not exclude (as slash-separated relative paths).
func buildContextFiles(t *testing.T, root string) []string {
	t.Helper()
	f, err := os.Open(filepath.Join(root, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatalf(".dockerignore: %v", err)
	}
	if pm.Exclusions() {
		t.Fatal(".dockerignore has ! exceptions; buildContextFiles skips excluded directories whole")
	}
	var files []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == root {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		excluded, err := pm.MatchesOrParentMatches(rel)
		if err != nil {
			return err
		}
		switch {
		case excluded && d.IsDir():
			return filepath.SkipDir
		case excluded || d.IsDir():
			return nil
		case d.Type().IsRegular():
			files = append(files, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// copyFiles copies the listed files from src to dst, keeping their relative paths and modes.
func copyFiles(t *testing.T, src, dst string, files []string) {
	t.Helper()
	for _, rel := range files {
		from, to := filepath.Join(src, filepath.FromSlash(rel)), filepath.Join(dst, filepath.FromSlash(rel))
		info, err := os.Stat(from)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(to, b, info.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
}

// dockerGoBuild parses the Dockerfile's go build RUN as a shell command (the way /bin/sh would,
// with VERSION, TARGETOS and TARGETARCH set) and returns its environment assignments and the
// go command's arguments, with the -o output moved to out.
func dockerGoBuild(t *testing.T, line, version, out string) (env, args []string) {
	t.Helper()
	file, err := syntax.NewParser().Parse(strings.NewReader(line), "Dockerfile RUN")
	if err != nil {
		t.Fatalf("the go build RUN is not valid shell: %v", err)
	}
	cfg := &expand.Config{Env: expand.ListEnviron("VERSION="+version, "TARGETOS=linux", "TARGETARCH="+runtime.GOARCH)}
	syntax.Walk(file, func(n syntax.Node) bool {
		call, ok := n.(*syntax.CallExpr)
		if !ok || args != nil {
			return args == nil
		}
		fields, err := expand.Fields(cfg, call.Args...)
		if err != nil {
			t.Fatalf("expand %q: %v", line, err)
		}
		if len(fields) < 2 || fields[0] != "go" || fields[1] != "build" {
			return true
		}
		for _, a := range call.Assigns {
			v, err := expand.Literal(cfg, a.Value)
			if err != nil {
				t.Fatal(err)
			}
			env = append(env, a.Name.Value+"="+v)
		}
		args = fields[1:]
		return false
	})
	if args == nil {
		t.Fatalf("no go build call in %q", line)
	}
	i := slices.Index(args, "-o")
	if i < 0 || i+1 >= len(args) {
		t.Fatalf("go build %v has no -o", args)
	}
	args[i+1] = out
	return env, args
}

// TestStaticBuildFromTheBuildContext runs the Dockerfile's own go build command, from a copy of
// exactly the files .dockerignore lets into the build context, and checks that the binary is
// static (distroless/static has no libc), carries the VERSION, and that its healthcheck
// subcommand (the image's HEALTHCHECK) reports a running node healthy.
func TestStaticBuildFromTheBuildContext(t *testing.T) {
	if testing.Short() {
		t.Skip("builds kura; skipped with -short")
	}
	stages, _ := parseDockerfile(t)
	line := goBuildRun(t, stages[0])

	root := repoRoot(t)
	files := buildContextFiles(t, root)
	for _, need := range []string{"go.mod", "go.sum", "cmd/kura/main.go"} {
		if !slices.Contains(files, need) {
			t.Fatalf("the build context lacks %s", need)
		}
	}
	for _, f := range files {
		if strings.HasPrefix(f, ".git/") || strings.Contains(f, "kura-data/") || strings.HasPrefix(f, "bin/") {
			t.Fatalf("the build context holds %s", f)
		}
	}
	ctxDir := t.TempDir()
	copyFiles(t, root, ctxDir, files)

	bin := filepath.Join(t.TempDir(), "kura")
	env, args := dockerGoBuild(t, line, "ops-test", bin)
	if !slices.Contains(env, "CGO_ENABLED=0") {
		t.Fatalf("go build runs with %v, want CGO_ENABLED=0", env)
	}
	build := exec.Command("go", args...)
	build.Dir = ctxDir
	build.Env = append(os.Environ(), env...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %v in the build context: %v\n%s", args, err, out)
	}

	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %v program header: it is dynamically linked", p.Type)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) > 0 {
		t.Errorf("the binary imports libraries %v (%v)", libs, err)
	}
	if f.Section(".dynamic") != nil {
		t.Error("the binary has a .dynamic section")
	}
	f.Close()

	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "kura ops-test" {
		t.Fatalf("kura --version = %q (%v), want the -X stamped version", out, err)
	}

	// Run the binary as a node and probe it the way Docker does: the HEALTHCHECK command in
	// the container's environment.
	ports := freePorts(t, 4)
	nodeEnv := append(os.Environ(),
		"KURA_DATA_DIR="+t.TempDir(),
		"KURA_BIND_ADDRESS=127.0.0.1",
		"KURA_PORT="+strconv.Itoa(ports[0]),
		"KURA_GRPC_PORT="+strconv.Itoa(ports[1]),
		"KURA_GOSSIP_PORT="+strconv.Itoa(ports[2]),
		"KURA_INTERNAL_PORT="+strconv.Itoa(ports[3]),
		"KURA_NODE_NAME=ops-image",
		"KURA_DISK_BUDGET_BYTES=64MiB",
		"KURA_LOG_LEVEL=warn",
	)
	healthy := func() bool {
		hc := exec.Command(bin, "healthcheck")
		hc.Env = nodeEnv
		return hc.Run() == nil
	}
	if healthy() {
		t.Fatal("healthcheck passed with no node running")
	}
	var logs bytes.Buffer
	node := exec.Command(bin)
	node.Env = nodeEnv
	node.Stdout, node.Stderr = &logs, &logs
	if err := node.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = node.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			_ = node.Process.Kill()
			<-exited
		}
	})
	testsupport.WaitFor(t, "the node to pass its healthcheck", 30*time.Second, healthy)

	// STOPSIGNAL SIGTERM: the node drains and exits 0.
	if err := node.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("after SIGTERM the node exited with %v:\n%s", waitErr, logs.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the node did not exit within 30 s of SIGTERM:\n%s", logs.String())
	}
}
