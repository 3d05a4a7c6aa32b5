package reapi

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/storage"
)

// batchParallelism bounds the items of one batch request handled at once: enough to overlap
// the store's fsyncs, few enough that one request cannot monopolize the store.
const batchParallelism = 8

// GetTree paging: a page holds at most page_size directories (defaultTreePageSize when the
// client sets none, never more than maxTreePageSize) and about treePageBytes of them, so
// every message stays well under the 4 MiB clients accept by default.
const (
	defaultTreePageSize = 1000
	maxTreePageSize     = 10000
	treePageBytes       = 2 << 20
)

// casServer implements ContentAddressableStorage. The chunking RPCs (SplitBlob, SpliceBlob,
// GetChunkMapping, RegisterChunkMapping) are left to the embedded Unimplemented server: the
// capabilities advertise neither split nor splice support, and the REAPI prescribes
// UNIMPLEMENTED for them in that case.
type casServer struct {
	repb.UnimplementedContentAddressableStorageServer
	s *Server
}

// FindMissingBlobs serves in-process callers; over gRPC the request is decoded from the wire
// (findMissingWire) and answered by the same findMissing.
func (c *casServer) FindMissingBlobs(ctx context.Context, req *repb.FindMissingBlobsRequest) (*repb.FindMissingBlobsResponse, error) {
	pds := req.GetBlobDigests()
	hashes := make([]string, len(pds))
	sizes := make([]int64, len(pds))
	for i, pd := range pds {
		if pd == nil {
			return nil, toStatus(fmt.Errorf("blob_digests[%d]: %w: digest is missing", i, errInvalidArgument))
		}
		hashes[i], sizes[i] = pd.GetHash(), pd.GetSizeBytes()
	}
	missing, err := c.findMissing(ctx, req.GetInstanceName(), req.GetDigestFunction(), hashes, sizes)
	if err != nil {
		return nil, err
	}
	// The client's own digest messages are echoed back (they were validated, and nothing
	// modifies a request): no new message or hex string per missing blob.
	resp := &repb.FindMissingBlobsResponse{MissingBlobDigests: make([]*repb.Digest, 0, len(missing))}
	for _, i := range missing {
		resp.MissingBlobDigests = append(resp.MissingBlobDigests, pds[i])
	}
	return resp, nil
}

// findMissing validates the digests (hashes[i], sizes[i]) and returns the positions of those
// the store does not hold, in request order; a digest listed twice is reported once.
func (c *casServer) findMissing(ctx context.Context, instance string, function repb.DigestFunction_Value, hashes []string, sizes []int64) ([]int, error) {
	fn, err := checkDigestFunction(function)
	if err != nil {
		return nil, toStatus(err)
	}
	ns, err := namespaceOf(instance)
	if err != nil {
		return nil, toStatus(err)
	}
	ds := make([]digest, len(hashes))
	for i, h := range hashes {
		if ds[i], err = fn.newDigest(h, sizes[i]); err != nil {
			return nil, toStatus(fmt.Errorf("blob_digests[%d]: %w", i, err))
		}
	}
	missing := make([]bool, len(ds))
	// The hashes were validated: 64 lowercase hex digits, the canonical form that names
	// SHA-256 keys (BLAKE3 names carry a prefix, so missingMask builds them).
	names := hashes
	if fn != fnSHA256 {
		names = nil
	}
	if err := c.s.missingMask(ctx, ns, ds, names, missing); err != nil {
		return nil, toStatus(err)
	}
	n := 0
	for _, m := range missing {
		if m {
			n++
		}
	}
	out := make([]int, 0, n)
	var reported map[digest]struct{}
	if n > 1 {
		reported = reportedSets.Get().(map[digest]struct{})
		defer func() {
			if len(reported) <= maxPooledKeys {
				clear(reported)
				reportedSets.Put(reported)
			}
		}()
	}
	for i, d := range ds {
		if !missing[i] {
			continue
		}
		if reported != nil {
			if _, dup := reported[d]; dup {
				continue
			}
			reported[d] = struct{}{}
		}
		out = append(out, i)
	}
	return out, nil
}

// reportedSets are FindMissingBlobs' reusable sets of digests already reported.
var reportedSets = sync.Pool{New: func() any { return make(map[digest]struct{}) }}

func (c *casServer) BatchUpdateBlobs(ctx context.Context, req *repb.BatchUpdateBlobsRequest) (*repb.BatchUpdateBlobsResponse, error) {
	cfg := c.s.cfg
	fn, err := checkDigestFunction(req.GetDigestFunction())
	if err != nil {
		return nil, toStatus(err)
	}
	ns, err := namespaceOf(req.GetInstanceName())
	if err != nil {
		return nil, toStatus(err)
	}
	var total, decompressed int64
	for _, item := range req.GetRequests() {
		total += int64(len(item.GetData()))
		if item.GetCompressor() != repb.Compressor_IDENTITY && item.GetDigest().GetSizeBytes() > 0 {
			decompressed += item.GetDigest().GetSizeBytes()
		}
	}
	if total > cfg.MaxBatchTotalSizeBytes {
		return nil, toStatus(fmt.Errorf("%w: the batch carries %d bytes of blob data; the limit (max_batch_total_size_bytes) is %d; upload large blobs with ByteStream.Write",
			errInvalidArgument, total, cfg.MaxBatchTotalSizeBytes))
	}
	if decompressed > cfg.MaxDecompressedBytes {
		return nil, toStatus(fmt.Errorf("%w: the compressed items of the batch declare %d uncompressed bytes; the limit is %d; upload large blobs with ByteStream.Write",
			errInvalidArgument, decompressed, cfg.MaxDecompressedBytes))
	}
	resp := &repb.BatchUpdateBlobsResponse{Responses: make([]*repb.BatchUpdateBlobsResponse_Response, len(req.GetRequests()))}
	if bp, ok := c.s.local.(storage.BatchPutter); ok {
		c.s.updateBatch(ctx, ns, fn, bp, req.GetRequests(), resp.Responses)
		return resp, nil
	}
	var g errgroup.Group
	g.SetLimit(batchParallelism)
	for i, item := range req.GetRequests() {
		g.Go(func() error {
			err := c.s.updateItem(ctx, ns, fn, item)
			resp.Responses[i] = &repb.BatchUpdateBlobsResponse_Response{Digest: item.GetDigest(), Status: toStatusProto(err)}
			return nil
		})
	}
	_ = g.Wait() // items report their errors in their own status
	return resp, nil
}

// updateBatch stores a BatchUpdateBlobs request through a store that commits many writes as
// one (storage.BatchPutter): the uncompressed items go to the store in one PutBatch (one
// segment append and sync, one Pebble commit), which checks each item's size and SHA-256
// against its digest and fails a bad item alone. Compressed items are decoded while they
// stream into the store, one by one, as before. Every item gets its own status in out.
func (s *Server) updateBatch(ctx context.Context, namespace string, fn digestFunction, bp storage.BatchPutter, reqs []*repb.BatchUpdateBlobsRequest_Request, out []*repb.BatchUpdateBlobsResponse_Response) {
	items := make([]storage.PutItem, 0, len(reqs))
	idx := make([]int, 0, len(reqs))     // out index of each item
	digests := make([]digest, len(reqs)) // parsed digests, by out index
	finish := func(i int, err error, created bool) {
		stored := int64(0)
		if created {
			stored = digests[i].size
		}
		s.metrics.write(storage.KindCAS, writeResult(err, created), stored)
		out[i] = &repb.BatchUpdateBlobsResponse_Response{Digest: reqs[i].GetDigest(), Status: toStatusProto(err)}
	}
	for i, item := range reqs {
		d, err := fn.parse(item.GetDigest())
		if err != nil {
			s.metrics.write(storage.KindCAS, resultRejected, 0)
			out[i] = &repb.BatchUpdateBlobsResponse_Response{Digest: item.GetDigest(), Status: toStatusProto(err)}
			continue
		}
		digests[i] = d
		if item.GetCompressor() != repb.Compressor_IDENTITY {
			created, err := s.storeItem(ctx, namespace, d, item)
			finish(i, err, created)
			continue
		}
		if s.cfg.MaxCASBlobSizeBytes > 0 && d.size > s.cfg.MaxCASBlobSizeBytes {
			finish(i, fmt.Errorf("%w: blob %s is larger than max_cas_blob_size_bytes (%d)", errInvalidArgument, d, s.cfg.MaxCASBlobSizeBytes), false)
			continue
		}
		data := item.GetData()
		if int64(len(data)) != d.size {
			finish(i, fmt.Errorf("%w: blob %s: data has %d bytes, the digest says %d", errInvalidArgument, d, len(data), d.size), false)
			continue
		}
		if d.fn != fnSHA256 {
			// The store checks only SHA-256 (ExpectedSHA256): another function is checked here.
			if sum := d.fn.sum(data); sum != d.hash {
				finish(i, fmt.Errorf("%w: blob %s: data hashes to %x", errInvalidArgument, d, sum), false)
				continue
			}
		}
		if d.isEmpty() {
			finish(i, nil, false)
			continue
		}
		// The store hashes the body once and compares it with the digest (ExpectedSHA256).
		items = append(items, storage.PutItem{Key: casKey(s.tenant(), namespace, d), Body: data, Opts: s.putOptions(d)})
		idx = append(idx, i)
	}
	if len(items) == 0 {
		return
	}
	for j, r := range bp.PutBatch(ctx, items) {
		i := idx[j]
		d := digests[i]
		res, err := putResult(r.PutResult, r.Err)
		switch {
		case err != nil:
			finish(i, fmt.Errorf("store blob %s: %w", d, err), false)
		case !res.Created:
			finish(i, checkExisting(res, d), false)
		default:
			finish(i, nil, true)
		}
	}
}

// updateItem stores one BatchUpdateBlobs item.
func (s *Server) updateItem(ctx context.Context, namespace string, fn digestFunction, item *repb.BatchUpdateBlobsRequest_Request) error {
	d, err := fn.parse(item.GetDigest())
	if err != nil {
		s.metrics.write(storage.KindCAS, resultRejected, 0)
		return err
	}
	created, err := s.storeItem(ctx, namespace, d, item)
	stored := int64(0)
	if created {
		stored = d.size
	}
	s.metrics.write(storage.KindCAS, writeResult(err, created), stored)
	return err
}

// storeItem stores one BatchUpdateBlobs item whose digest parsed.
func (s *Server) storeItem(ctx context.Context, namespace string, d digest, item *repb.BatchUpdateBlobsRequest_Request) (created bool, err error) {
	if s.cfg.MaxCASBlobSizeBytes > 0 && d.size > s.cfg.MaxCASBlobSizeBytes {
		return false, fmt.Errorf("%w: blob %s is larger than max_cas_blob_size_bytes (%d)", errInvalidArgument, d, s.cfg.MaxCASBlobSizeBytes)
	}
	switch item.GetCompressor() {
	case repb.Compressor_IDENTITY:
		return s.putIdentity(ctx, namespace, d, item.GetData())
	case repb.Compressor_ZSTD:
		return s.putZstd(ctx, namespace, d, item.GetData())
	default:
		return false, fmt.Errorf("%w: blob %s: compressor %s is not supported in batch updates; use IDENTITY or ZSTD",
			errInvalidArgument, d, item.GetCompressor())
	}
}

func (c *casServer) BatchReadBlobs(ctx context.Context, req *repb.BatchReadBlobsRequest) (*repb.BatchReadBlobsResponse, error) {
	cfg := c.s.cfg
	fn, err := checkDigestFunction(req.GetDigestFunction())
	if err != nil {
		return nil, toStatus(err)
	}
	ns, err := namespaceOf(req.GetInstanceName())
	if err != nil {
		return nil, toStatus(err)
	}
	var total int64
	for _, pd := range req.GetDigests() {
		if pd.GetSizeBytes() > 0 {
			total += pd.GetSizeBytes()
		}
	}
	if total > cfg.MaxBatchTotalSizeBytes {
		return nil, toStatus(fmt.Errorf("%w: the batch asks for %d bytes; the limit (max_batch_total_size_bytes) is %d; read large blobs with ByteStream.Read",
			errInvalidArgument, total, cfg.MaxBatchTotalSizeBytes))
	}
	zstdOK := slices.Contains(req.GetAcceptableCompressors(), repb.Compressor_ZSTD)
	resp := &repb.BatchReadBlobsResponse{Responses: make([]*repb.BatchReadBlobsResponse_Response, len(req.GetDigests()))}
	digests := req.GetDigests()
	// Items report their errors in their own status.
	runItems(len(digests), batchParallelism, func(i int) {
		pd := digests[i]
		r := &repb.BatchReadBlobsResponse_Response{Digest: pd}
		data, err := c.s.readItem(ctx, ns, fn, pd)
		if err == nil && zstdOK {
			data = c.s.codecs.block.EncodeAll(data, nil)
			r.Compressor = repb.Compressor_ZSTD
		}
		r.Data = data
		r.Status = toStatusProto(err)
		resp.Responses[i] = r
	})
	return resp, nil
}

// readItem reads one BatchReadBlobs item.
func (s *Server) readItem(ctx context.Context, namespace string, fn digestFunction, pd *repb.Digest) ([]byte, error) {
	d, err := fn.parse(pd)
	if err != nil {
		return nil, err
	}
	data, err := s.readBlob(ctx, namespace, d, s.cfg.MaxBatchTotalSizeBytes)
	s.metrics.read(namespace, storage.KindCAS, readResult(err), int64(len(data)))
	return data, err
}

func (c *casServer) GetTree(req *repb.GetTreeRequest, stream repb.ContentAddressableStorage_GetTreeServer) error {
	tr, err := parseTreeRequest(req)
	if err != nil {
		return toStatus(err)
	}
	pages := &treePager{stream: stream, size: tr.pageSize}
	index := 0
	err = c.s.walkTree(stream.Context(), tr.namespace, tr.root, func(dir *repb.Directory) error {
		index++
		if index <= tr.start {
			return nil // sent on an earlier page
		}
		return pages.add(dir, index-1)
	})
	if err == nil {
		err = pages.finish()
	}
	if err != nil {
		return toStatus(err)
	}
	return nil
}

// treeRequest is a validated GetTreeRequest.
type treeRequest struct {
	namespace string
	root      digest
	start     int // directories of the walk sent on earlier pages (from the page token)
	pageSize  int // directories per page, within [1, maxTreePageSize]
}

func parseTreeRequest(req *repb.GetTreeRequest) (treeRequest, error) {
	fn, err := checkDigestFunction(req.GetDigestFunction())
	if err != nil {
		return treeRequest{}, err
	}
	ns, err := namespaceOf(req.GetInstanceName())
	if err != nil {
		return treeRequest{}, err
	}
	root, err := fn.parse(req.GetRootDigest())
	if err != nil {
		return treeRequest{}, fmt.Errorf("root_digest: %w", err)
	}
	start, err := parsePageToken(req.GetPageToken())
	if err != nil {
		return treeRequest{}, err
	}
	pageSize := int(req.GetPageSize())
	switch {
	case pageSize < 0:
		return treeRequest{}, fmt.Errorf("%w: page_size %d is negative", errInvalidArgument, pageSize)
	case pageSize == 0:
		pageSize = defaultTreePageSize
	case pageSize > maxTreePageSize:
		pageSize = maxTreePageSize
	}
	return treeRequest{namespace: ns, root: root, start: start, pageSize: pageSize}, nil
}

// walkTree visits the directories under root breadth-first, each once. The order depends
// only on the directories' contents, so a page token (the index of the next directory in
// that order) stays valid across calls as long as the same sub-directories are present.
// A root that cannot be read is an error; missing or unreadable parts below it are skipped,
// as REAPI asks. Every digest of the tree is of the root's digest function.
func (s *Server) walkTree(ctx context.Context, ns string, root digest, visit func(*repb.Directory) error) error {
	queue := []digest{root}
	queued := map[[hashSize]byte]bool{root.hash: true}
	for i := 0; i < len(queue); i++ {
		dir, err := s.readDirectory(ctx, ns, queue[i])
		if err != nil {
			if i == 0 {
				return fmt.Errorf("root directory: %w", err)
			}
			if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrCorrupt) || errors.Is(err, errInvalidArgument) {
				continue // REAPI: missing (or unreadable) parts of the tree are omitted
			}
			return err
		}
		for _, child := range dir.GetDirectories() {
			cd, err := root.fn.parse(child.GetDigest())
			if err != nil || queued[cd.hash] {
				continue // an unusable child digest is as good as missing
			}
			queued[cd.hash] = true
			queue = append(queue, cd)
		}
		if err := visit(dir); err != nil {
			return err
		}
	}
	return nil
}

// treePager cuts the walk into GetTree responses of at most size directories and about
// treePageBytes.
type treePager struct {
	stream    repb.ContentAddressableStorage_GetTreeServer
	size      int
	page      []*repb.Directory
	pageBytes int
	sent      bool
}

// add appends the directory at index of the walk. A full page is sent once another
// directory follows it, so the last page of the stream is the one without a next_page_token.
func (p *treePager) add(dir *repb.Directory, index int) error {
	if len(p.page) >= p.size || p.pageBytes >= treePageBytes {
		if err := p.flush(pageToken(index)); err != nil {
			return err
		}
	}
	p.page = append(p.page, dir)
	p.pageBytes += proto.Size(dir)
	return nil
}

// finish sends the last page, which is empty only when the whole stream is.
func (p *treePager) finish() error {
	if len(p.page) > 0 || !p.sent {
		return p.flush("")
	}
	return nil
}

func (p *treePager) flush(token string) error {
	if err := p.stream.Send(&repb.GetTreeResponse{Directories: p.page, NextPageToken: token}); err != nil {
		return fmt.Errorf("send a GetTree page: %w", err)
	}
	p.page, p.pageBytes, p.sent = nil, 0, true
	return nil
}

// readDirectory reads and decodes one Directory from the CAS.
func (s *Server) readDirectory(ctx context.Context, namespace string, d digest) (*repb.Directory, error) {
	data, err := s.readBlob(ctx, namespace, d, s.cfg.MaxProtoBytes)
	if err != nil {
		return nil, err
	}
	dir := &repb.Directory{}
	if err := proto.Unmarshal(data, dir); err != nil {
		return nil, fmt.Errorf("%w: blob %s is not a Directory message: %v", errInvalidArgument, d, err)
	}
	return dir, nil
}

// Page tokens are opaque to clients: "t" and the index of the next directory, base64url.
const pageTokenPrefix = "t"

func pageToken(index int) string {
	return base64.RawURLEncoding.EncodeToString([]byte(pageTokenPrefix + strconv.Itoa(index)))
}

func parsePageToken(token string) (int, error) {
	if token == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err == nil && strings.HasPrefix(string(raw), pageTokenPrefix) {
		n, perr := strconv.Atoi(string(raw[len(pageTokenPrefix):]))
		if perr == nil && n >= 0 {
			return n, nil
		}
		err = errors.New("bad index")
	}
	if err == nil {
		err = errors.New("bad prefix")
	}
	return 0, fmt.Errorf("%w: page_token %q was not issued by this server: %v", errInvalidArgument, truncate(token), err)
}
