package reapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/storage"
)

// maxInlineBytes bounds the blob bytes inlined into one GetActionResult response
// (inline_stdout, inline_stderr, inline_output_files), keeping the response far below the
// 4 MiB message size clients accept by default.
const maxInlineBytes = 1 << 20

// acServer implements ActionCache.
type acServer struct {
	repb.UnimplementedActionCacheServer
	s *Server
}

func (a *acServer) GetActionResult(ctx context.Context, req *repb.GetActionResultRequest) (*repb.ActionResult, error) {
	fn, err := checkDigestFunction(req.GetDigestFunction())
	if err != nil {
		return nil, toStatus(err)
	}
	ns, err := namespaceOf(req.GetInstanceName())
	if err != nil {
		return nil, toStatus(err)
	}
	d, err := fn.parse(req.GetActionDigest())
	if err != nil {
		return nil, toStatus(fmt.Errorf("action_digest: %w", err))
	}
	ar, err := a.s.readActionResult(ctx, ns, d)
	if err == nil {
		err = a.s.checkComplete(ctx, ns, d, ar)
	}
	if err != nil {
		a.s.metrics.read(ns, storage.KindAC, readResult(err), 0)
		return nil, toStatus(err)
	}
	a.s.inline(ctx, ns, fn, ar, req)
	a.s.metrics.read(ns, storage.KindAC, resultHit, int64(proto.Size(ar)))
	return ar, nil
}

// readActionResult reads and decodes a stored action result. An entry that does not decode
// (written by some other client over the HTTP cache, say) is treated as missing so the client
// runs the action and overwrites it.
func (s *Server) readActionResult(ctx context.Context, namespace string, d digest) (*repb.ActionResult, error) {
	key := acKey(s.tenant(), namespace, d)
	r, err := s.store.Open(ctx, key, 0, -1)
	if err != nil {
		return nil, fmt.Errorf("open action result %s: %w", d.hex(), err)
	}
	defer func() { _ = r.Close() }()
	size := r.Info().Size
	if size > s.cfg.MaxProtoBytes {
		return nil, fmt.Errorf("%w: action result %s has %d bytes, more than the %d this server reads", errServerLimit, d.hex(), size, s.cfg.MaxProtoBytes)
	}
	data := make([]byte, size)
	if _, err := io.ReadFull(r, data); err != nil {
		return nil, fmt.Errorf("read action result %s: %w", d.hex(), err)
	}
	ar := &repb.ActionResult{}
	if err := proto.Unmarshal(data, ar); err != nil {
		s.log.WarnContext(ctx, "stored action result does not decode; answering NOT_FOUND", "key", key.String(), "err", err)
		return nil, fmt.Errorf("action result %s: %w (the stored entry is not an ActionResult)", d.hex(), storage.ErrNotFound)
	}
	return ar, nil
}

// checkComplete makes sure every blob the result references is in the CAS: output files,
// stdout and stderr, each output directory's Tree and every file inside those Trees. An
// incomplete result is answered NOT_FOUND, so the client runs the action instead of getting a
// hit it cannot download. Every digest is of the action digest's function.
func (s *Server) checkComplete(ctx context.Context, namespace string, action digest, ar *repb.ActionResult) error {
	incomplete := func(format string, args ...any) error {
		return fmt.Errorf("action result %s is incomplete: %s: %w", action.hex(), fmt.Sprintf(format, args...), storage.ErrNotFound)
	}
	var ds []digest
	fn := action.fn
	add := func(what string, pd *repb.Digest) error {
		d, err := fn.parse(pd)
		if err != nil {
			return incomplete("%s: %v", what, err)
		}
		ds = append(ds, d)
		return nil
	}
	for _, f := range ar.GetOutputFiles() {
		if err := add("output file "+f.GetPath(), f.GetDigest()); err != nil {
			return err
		}
	}
	if ar.GetStdoutDigest() != nil {
		if err := add("stdout", ar.GetStdoutDigest()); err != nil {
			return err
		}
	}
	if ar.GetStderrDigest() != nil {
		if err := add("stderr", ar.GetStderrDigest()); err != nil {
			return err
		}
	}
	for _, od := range ar.GetOutputDirectories() {
		td, err := fn.parse(od.GetTreeDigest())
		if err != nil {
			return incomplete("output directory %s: tree digest: %v", od.GetPath(), err)
		}
		tree, err := s.readTree(ctx, namespace, td)
		switch {
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrCorrupt), errors.Is(err, errInvalidArgument):
			return incomplete("output directory %s: tree %s: %v", od.GetPath(), td, err)
		case err != nil:
			return err
		}
		for _, dir := range append([]*repb.Directory{tree.GetRoot()}, tree.GetChildren()...) {
			for _, f := range dir.GetFiles() {
				if err := add("output directory "+od.GetPath()+" file "+f.GetName(), f.GetDigest()); err != nil {
					return err
				}
			}
		}
	}
	missing, err := s.findMissing(ctx, namespace, ds)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if missing[d.hash] {
			return incomplete("blob %s is not in the CAS", d)
		}
	}
	return nil
}

// readTree reads and decodes a Tree message from the CAS.
func (s *Server) readTree(ctx context.Context, namespace string, d digest) (*repb.Tree, error) {
	data, err := s.readBlob(ctx, namespace, d, s.cfg.MaxProtoBytes)
	if err != nil {
		return nil, err
	}
	tree := &repb.Tree{}
	if err := proto.Unmarshal(data, tree); err != nil {
		return nil, fmt.Errorf("%w: blob %s is not a Tree message: %v", errInvalidArgument, d, err)
	}
	return tree, nil
}

// inline fills stdout_raw, stderr_raw and output file contents when the client asked for
// them, within maxInlineBytes; inlining is a hint, so what does not fit or cannot be read is
// simply left out. Contents the client did not ask for are removed when a digest lets it
// fetch them (REAPI: the server SHOULD NOT inline unless requested).
func (s *Server) inline(ctx context.Context, namespace string, fn digestFunction, ar *repb.ActionResult, req *repb.GetActionResultRequest) {
	budget := int64(maxInlineBytes)
	fetch := func(pd *repb.Digest) []byte {
		d, err := fn.parse(pd)
		if err != nil || d.size > budget {
			return nil
		}
		data, err := s.readBlob(ctx, namespace, d, budget)
		if err != nil {
			s.log.DebugContext(ctx, "inlining skipped", "digest", d.String(), "err", err)
			return nil
		}
		budget -= int64(len(data))
		return data
	}
	switch {
	case req.GetInlineStdout() && ar.GetStdoutDigest() != nil && len(ar.GetStdoutRaw()) == 0:
		ar.StdoutRaw = fetch(ar.GetStdoutDigest())
	case !req.GetInlineStdout() && ar.GetStdoutDigest() != nil:
		ar.StdoutRaw = nil
	}
	switch {
	case req.GetInlineStderr() && ar.GetStderrDigest() != nil && len(ar.GetStderrRaw()) == 0:
		ar.StderrRaw = fetch(ar.GetStderrDigest())
	case !req.GetInlineStderr() && ar.GetStderrDigest() != nil:
		ar.StderrRaw = nil
	}
	wanted := make(map[string]bool, len(req.GetInlineOutputFiles()))
	for _, p := range req.GetInlineOutputFiles() {
		wanted[p] = true
	}
	for _, f := range ar.GetOutputFiles() {
		switch {
		case wanted[f.GetPath()] && len(f.GetContents()) == 0:
			f.Contents = fetch(f.GetDigest())
		case !wanted[f.GetPath()]:
			f.Contents = nil // every output file has a digest (checked on update and read)
		}
	}
}

func (a *acServer) UpdateActionResult(ctx context.Context, req *repb.UpdateActionResultRequest) (*repb.ActionResult, error) {
	fn, err := checkDigestFunction(req.GetDigestFunction())
	if err != nil {
		return nil, toStatus(err)
	}
	ns, err := namespaceOf(req.GetInstanceName())
	if err != nil {
		return nil, toStatus(err)
	}
	d, err := fn.parse(req.GetActionDigest())
	if err != nil {
		return nil, toStatus(fmt.Errorf("action_digest: %w", err))
	}
	ar := req.GetActionResult()
	if ar == nil {
		a.s.metrics.write(storage.KindAC, resultRejected, 0)
		return nil, toStatus(fmt.Errorf("%w: action_result is missing", errInvalidArgument))
	}
	if err := validateActionResult(fn, ar); err != nil {
		a.s.metrics.write(storage.KindAC, resultRejected, 0)
		return nil, toStatus(fmt.Errorf("action_result: %w", err))
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(ar)
	if err != nil {
		return nil, toStatus(fmt.Errorf("encode action result: %w", err))
	}
	if int64(len(data)) > a.s.cfg.MaxProtoBytes {
		a.s.metrics.write(storage.KindAC, resultRejected, 0)
		return nil, toStatus(fmt.Errorf("%w: action_result encodes to %d bytes, more than the %d this server keeps",
			errInvalidArgument, len(data), a.s.cfg.MaxProtoBytes))
	}
	res, err := putResult(a.s.local.Put(ctx, acKey(a.s.tenant(), ns, d), bytes.NewReader(data),
		storage.PutOptions{ContentType: contentType, Size: int64(len(data))}))
	stored := int64(0)
	if res.Created {
		stored = int64(len(data))
	}
	a.s.metrics.write(storage.KindAC, writeResult(err, res.Created), stored)
	if err != nil {
		return nil, toStatus(fmt.Errorf("store action result %s: %w", d.hex(), err))
	}
	return ar, nil
}

// validateActionResult checks every digest (of digest function fn) and path inside a result
// before it is stored.
func validateActionResult(fn digestFunction, ar *repb.ActionResult) error {
	for i, f := range ar.GetOutputFiles() {
		if err := validateOutputPath(f.GetPath(), false); err != nil {
			return fmt.Errorf("output_files[%d]: %w", i, err)
		}
		if _, err := fn.parse(f.GetDigest()); err != nil {
			return fmt.Errorf("output_files[%d] (%s): %w", i, f.GetPath(), err)
		}
	}
	for i, od := range ar.GetOutputDirectories() {
		if err := validateOutputPath(od.GetPath(), true); err != nil {
			return fmt.Errorf("output_directories[%d]: %w", i, err)
		}
		if _, err := fn.parse(od.GetTreeDigest()); err != nil {
			return fmt.Errorf("output_directories[%d] (%s) tree_digest: %w", i, od.GetPath(), err)
		}
		if od.GetRootDirectoryDigest() != nil {
			if _, err := fn.parse(od.GetRootDirectoryDigest()); err != nil {
				return fmt.Errorf("output_directories[%d] (%s) root_directory_digest: %w", i, od.GetPath(), err)
			}
		}
	}
	//lint:ignore SA1019 API v2.0 clients (Bazel 4.2) still fill the deprecated symlink lists.
	symlinks := [][]*repb.OutputSymlink{ar.GetOutputSymlinks(), ar.GetOutputFileSymlinks(), ar.GetOutputDirectorySymlinks()}
	for _, list := range symlinks {
		for i, l := range list {
			if err := validateOutputPath(l.GetPath(), false); err != nil {
				return fmt.Errorf("output symlink %d: %w", i, err)
			}
		}
	}
	if ar.GetStdoutDigest() != nil {
		if _, err := fn.parse(ar.GetStdoutDigest()); err != nil {
			return fmt.Errorf("stdout_digest: %w", err)
		}
	}
	if ar.GetStderrDigest() != nil {
		if _, err := fn.parse(ar.GetStderrDigest()); err != nil {
			return fmt.Errorf("stderr_digest: %w", err)
		}
	}
	return nil
}

// validateOutputPath checks an output path: relative (REAPI: MUST NOT begin with a slash) and,
// except for output directories (where "" is the working directory), non-empty.
func validateOutputPath(p string, emptyOK bool) error {
	switch {
	case p == "" && !emptyOK:
		return fmt.Errorf("%w: path is empty", errInvalidArgument)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("%w: path %q is absolute; output paths are relative to the working directory", errInvalidArgument, truncate(p))
	}
	return nil
}
