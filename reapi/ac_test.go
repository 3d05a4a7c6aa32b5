package reapi

import (
	"bytes"
	"context"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/storage"
)

// acFixture is an action result with output files, stdout/stderr and an output directory
// whose Tree holds files at two levels, all uploaded.
type acFixture struct {
	action                  *repb.Digest
	result                  *repb.ActionResult
	out, stdout, stderr     []byte
	treeBlob, rootF, childF []byte
}

func newACFixture(t *testing.T, h *harness, instance string, seed uint64) acFixture {
	t.Helper()
	f := acFixture{
		action: digestOf(randomBlob(143, seed)),
		out:    randomBlob(5000, seed+1), stdout: []byte("hello from the action\n"), stderr: []byte("warning: none\n"),
		rootF: randomBlob(700, seed+2), childF: randomBlob(900, seed+3),
	}
	child := &repb.Directory{Files: []*repb.FileNode{{Name: "deep.o", Digest: digestOf(f.childF)}}}
	tree := &repb.Tree{
		Root: &repb.Directory{
			Files:       []*repb.FileNode{{Name: "top.o", Digest: digestOf(f.rootF)}},
			Directories: []*repb.DirectoryNode{{Name: "sub", Digest: digestOf(directoryBlob(t, child))}},
		},
		Children: []*repb.Directory{child},
	}
	var err error
	if f.treeBlob, err = proto.Marshal(tree); err != nil {
		t.Fatal(err)
	}
	h.upload(instance, f.out, f.stdout, f.stderr, f.treeBlob, f.rootF, f.childF)
	f.result = &repb.ActionResult{
		OutputFiles:       []*repb.OutputFile{{Path: "bazel-out/k8-fastbuild/bin/hello.txt", Digest: digestOf(f.out), IsExecutable: true}},
		OutputDirectories: []*repb.OutputDirectory{{Path: "bazel-out/k8-fastbuild/bin/objs", TreeDigest: digestOf(f.treeBlob)}},
		OutputSymlinks:    []*repb.OutputSymlink{{Path: "link", Target: "/usr/bin/env"}},
		ExitCode:          0,
		StdoutDigest:      digestOf(f.stdout),
		StderrDigest:      digestOf(f.stderr),
		ExecutionMetadata: &repb.ExecutedActionMetadata{Worker: "local"},
	}
	return f
}

func TestActionCacheRoundTripAndInlining(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	f := newACFixture(t, h, "", 100)

	_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: f.action})
	wantCode(t, err, codes.NotFound)

	stored, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: f.action, ActionResult: f.result})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(stored, f.result) {
		t.Fatalf("UpdateActionResult returned %v", stored)
	}
	// Stored under the shared AC naming: tenant, namespace "default", hex of the action hash.
	if _, err := h.mem.Stat(ctx, storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindAC, Name: f.action.Hash}); err != nil {
		t.Fatalf("AC entry not under the shared name: %v", err)
	}

	got, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: f.action, DigestFunction: repb.DigestFunction_SHA256})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, f.result) {
		t.Fatalf("GetActionResult = %v, want %v", got, f.result)
	}
	if len(got.GetStdoutRaw()) != 0 || len(got.GetOutputFiles()[0].GetContents()) != 0 {
		t.Fatal("inlined without being asked")
	}

	got, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{
		ActionDigest: f.action, InlineStdout: true, InlineStderr: true,
		InlineOutputFiles: []string{"bazel-out/k8-fastbuild/bin/hello.txt", "not/an/output"},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.GetStdoutRaw(), f.stdout) || !bytes.Equal(got.GetStderrRaw(), f.stderr) {
		t.Fatalf("stdout %q stderr %q", got.GetStdoutRaw(), got.GetStderrRaw())
	}
	if !bytes.Equal(got.GetOutputFiles()[0].GetContents(), f.out) {
		t.Fatal("output file not inlined")
	}

	// Another instance does not see the entry; a later update replaces it (last writer wins).
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "other", ActionDigest: f.action})
	wantCode(t, err, codes.NotFound)
	newer := proto.Clone(f.result).(*repb.ActionResult)
	newer.ExitCode = 3
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: f.action, ActionResult: newer}); err != nil {
		t.Fatal(err)
	}
	got, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: f.action})
	if err != nil || got.GetExitCode() != 3 {
		t.Fatalf("after a second update: %v %v", got, err)
	}
}

func TestActionCacheInlineBudget(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	big := randomBlob(maxInlineBytes+1, 110)
	small := randomBlob(100, 111)
	h.upload("", big, small)
	action := digestOf([]byte("action"))
	ar := &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "big", Digest: digestOf(big)}, {Path: "small", Digest: digestOf(small)}}}
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: ar}); err != nil {
		t.Fatal(err)
	}
	got, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, InlineOutputFiles: []string{"big", "small"}})
	if err != nil {
		t.Fatal(err)
	}
	if len(got.GetOutputFiles()[0].GetContents()) != 0 {
		t.Error("a file over the inline budget was inlined")
	}
	if !bytes.Equal(got.GetOutputFiles()[1].GetContents(), small) {
		t.Error("a small file was not inlined")
	}
}

func TestActionCacheCompleteness(t *testing.T) {
	var hiding *hidingStore
	h := newHarness(t, Config{}, func(s storage.Store) storage.Store {
		hiding = &hidingStore{Store: s}
		return hiding
	})
	ctx := ctxT(t)
	key := func(data []byte) storage.Key {
		return storage.Key{Tenant: testTenant, Namespace: "ci", Kind: storage.KindCAS, Name: digestOf(data).Hash}
	}
	f := newACFixture(t, h, "ci", 200)
	get := func() error {
		_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{InstanceName: "ci", ActionDigest: f.action})
		return err
	}
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{InstanceName: "ci", ActionDigest: f.action, ActionResult: f.result}); err != nil {
		t.Fatal(err)
	}
	if err := get(); err != nil {
		t.Fatalf("complete result: %v", err)
	}
	// Each referenced blob, once gone, turns the hit into NOT_FOUND.
	for _, tc := range []struct {
		name string
		blob []byte
	}{
		{"file inside a child directory of a tree", f.childF},
		{"file at the root of a tree", f.rootF},
		{"tree", f.treeBlob},
		{"stderr", f.stderr},
		{"output file", f.out},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hiding.hide(key(tc.blob))
			wantCode(t, get(), codes.NotFound)
			hiding.reset()
			if err := get(); err != nil {
				t.Fatalf("once the blob is back: %v", err)
			}
		})
	}

	// A result referencing a blob that was never uploaded is stored but never served.
	ghost := &repb.ActionResult{StdoutDigest: digestOf([]byte("never uploaded"))}
	action := digestOf([]byte("ghost action"))
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: ghost}); err != nil {
		t.Fatal(err)
	}
	_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action})
	wantCode(t, err, codes.NotFound)

	// An empty stdout digest is always satisfied.
	emptyOut := &repb.ActionResult{StdoutDigest: digestOf(nil), StderrDigest: digestOf(nil)}
	action = digestOf([]byte("quiet action"))
	if _, err := h.ac.UpdateActionResult(ctx, &repb.UpdateActionResultRequest{ActionDigest: action, ActionResult: emptyOut}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, InlineStdout: true}); err != nil {
		t.Fatalf("empty stdout: %v", err)
	}
}

func TestActionCacheRejections(t *testing.T) {
	h := newHarness(t, Config{}, nil)
	ctx := ctxT(t)
	action := digestOf([]byte("an action"))
	good := digestOf([]byte("output"))
	for name, req := range map[string]*repb.UpdateActionResultRequest{
		"missing result":        {ActionDigest: action},
		"missing action digest": {ActionResult: &repb.ActionResult{}},
		"bad action digest":     {ActionDigest: &repb.Digest{Hash: "abc", SizeBytes: 1}, ActionResult: &repb.ActionResult{}},
		"sha1":                  {ActionDigest: action, ActionResult: &repb.ActionResult{}, DigestFunction: repb.DigestFunction_SHA1},
		"bad output digest":     {ActionDigest: action, ActionResult: &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "a", Digest: &repb.Digest{Hash: good.Hash, SizeBytes: -5}}}}},
		"output without digest": {ActionDigest: action, ActionResult: &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "a"}}}},
		"absolute output path":  {ActionDigest: action, ActionResult: &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Path: "/etc/passwd", Digest: good}}}},
		"empty output path":     {ActionDigest: action, ActionResult: &repb.ActionResult{OutputFiles: []*repb.OutputFile{{Digest: good}}}},
		"bad tree digest":       {ActionDigest: action, ActionResult: &repb.ActionResult{OutputDirectories: []*repb.OutputDirectory{{Path: "d", TreeDigest: &repb.Digest{Hash: "XYZ"}}}}},
		"bad stdout digest":     {ActionDigest: action, ActionResult: &repb.ActionResult{StdoutDigest: &repb.Digest{Hash: good.Hash[:10]}}},
		"bad instance":          {InstanceName: "x/capabilities", ActionDigest: action, ActionResult: &repb.ActionResult{}},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := h.ac.UpdateActionResult(ctx, req)
			wantCode(t, err, codes.InvalidArgument)
		})
	}
	if _, err := h.mem.Stat(ctx, storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindAC, Name: action.Hash}); err == nil {
		t.Fatal("a rejected result was stored")
	}
	_, err := h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: &repb.Digest{Hash: "nope"}})
	wantCode(t, err, codes.InvalidArgument)
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action, DigestFunction: repb.DigestFunction_VSO})
	wantCode(t, err, codes.InvalidArgument)

	// An entry that is not an ActionResult (written over the HTTP cache by something else) is
	// a miss, not an error.
	garbage := []byte{0xff, 0xff, 0xff, 0xff}
	key := storage.Key{Tenant: testTenant, Namespace: "default", Kind: storage.KindAC, Name: action.Hash}
	if _, err := h.mem.Put(context.Background(), key, bytes.NewReader(garbage), storage.PutOptions{Size: int64(len(garbage))}); err != nil {
		t.Fatal(err)
	}
	_, err = h.ac.GetActionResult(ctx, &repb.GetActionResultRequest{ActionDigest: action})
	wantCode(t, err, codes.NotFound)
}
