package peer

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// Backend is what the server needs from the node: the store it applies pushes to and reads
// fetches from, and its replication index. internal/app satisfies it with storage/local.
// Implementations are safe for concurrent use.
type Backend interface {
	storage.Store // Put (with the origin's Version), Open, DeleteNamespace(…, version)
	storage.Index // BucketDigests, ListObjects, Tombstones
}

// Protocol limits. Both ends enforce them, so changing one is a protocol change.
const (
	// MaxChunkBytes is the largest body chunk in one message, either direction.
	MaxChunkBytes = 1 << 20
	// maxHeaderBytes bounds everything in a message besides a chunk: a header holds four
	// identifiers of at most 1 KiB, a content type of at most 1 KiB and small numbers.
	maxHeaderBytes = 16 << 10
	// MaxBucketBits bounds a digest request: 2^16 buckets are 2 MiB of digests.
	MaxBucketBits = 16
	// MaxListPage bounds one ListObjects page: 1000 headers of at most ~6 KiB stay well below
	// the client's response limit.
	MaxListPage = 1000
	// maxResponseBytes bounds the unary responses a client accepts (digests, listings,
	// tombstones); a listing page and the largest digest set are a fraction of it.
	maxResponseBytes = 64 << 20
	// DefaultMaxKeyValueBytes mirrors KURA_MAX_KEYVALUE_BYTES' default.
	DefaultMaxKeyValueBytes = 1 << 20
	// MaxFindKeys bounds the keys of one FindObjects request: a batch of FindMissingBlobs
	// digests costs the server one batched index look-up, and the request (about 110 bytes
	// per CAS key) stays far below the receive limit. The client splits larger sets.
	MaxFindKeys = 2000
	// maxFindRequestBytes bounds one FindObjects request's encoding too, whatever the length
	// of the keys' identifiers (the client splits by both bounds).
	maxFindRequestBytes = 512 << 10
	// maxConcurrentStreams per connection: one peer's anti-entropy or bootstrap fetches in
	// parallel, and a stuck peer must not pin unbounded handler goroutines.
	maxConcurrentStreams = 256
	// streamWindowBytes and connWindowBytes are the HTTP/2 flow-control windows of both
	// ends. gRPC's default (64 KiB, grown by its BDP estimator) makes a large push wait for
	// window updates on every few chunks; 4 MiB per stream and 16 MiB per connection keep a
	// 1 MiB chunk pipeline full on a LAN while bounding what one connection buffers.
	streamWindowBytes = 4 << 20
	connWindowBytes   = 16 << 20
	// streamWorkers serve streams on long-lived goroutines: a push goes deep into Pebble, and
	// a fresh goroutine per stream grew its stack on every push (6-8% of a small-object
	// drain's CPU). Streams beyond the workers still get their own goroutine.
	streamWorkers = 32
)

// ServerConfig configures a Server. The zero value serves plaintext with the defaults, open
// to anyone who can reach the port: set TLS, PlaneKey or (better) both.
type ServerConfig struct {
	// TLS, when set, is the mTLS configuration from LoadTLS (client certificates required
	// and verified). nil serves plaintext.
	TLS *tls.Config
	// PlaneKey, when set, is the cluster's gossip key (KURA_GOSSIP_KEY, decoded): every call
	// must then carry the credential a Client with the same PlaneKey attaches (auth.go), or
	// it is refused with UNAUTHENTICATED before its handler runs. It is checked with TLS on
	// too, as defence in depth: a leaked certificate alone does not open the plane, nor does
	// a leaked gossip key alone. nil checks no credential.
	PlaneKey []byte
	// CredentialSkew is how far a credential's timestamp may be from Now, either way (zero:
	// DefaultCredentialSkew).
	CredentialSkew time.Duration
	// Now is the clock credentials are checked against (nil: time.Now).
	Now func() time.Time
	// MaxChunkBytes is the size of the chunks FetchObject sends (zero or above the protocol's
	// MaxChunkBytes: MaxChunkBytes).
	MaxChunkBytes int
	// MaxKeyValueBytes caps a replicated keyvalue document as KURA_MAX_KEYVALUE_BYTES caps a
	// public one (zero: DefaultMaxKeyValueBytes). A larger push is INVALID_ARGUMENT.
	MaxKeyValueBytes int64
	// Logger receives rejected pushes and failures (nil: discarded).
	Logger *slog.Logger
	// Registerer receives kura_peer_* metrics with side="server" (nil: a private registry).
	Registerer prometheus.Registerer
	// UnaryInterceptors, StreamInterceptors and StatsHandlers run around every handler, after
	// the metrics interceptor: the seam for W3C trace-context propagation (otelgrpc).
	UnaryInterceptors  []grpc.UnaryServerInterceptor
	StreamInterceptors []grpc.StreamServerInterceptor
	StatsHandlers      []stats.Handler
}

// Server serves the internal plane over a Backend. Create it with NewServer, run Serve, and
// stop it with Stop.
type Server struct {
	log       *slog.Logger
	metrics   *metrics
	grpc      *grpc.Server
	transport string
	checked   bool // calls must carry a credential
}

// handlers implements the Replication service over the backend.
type handlers struct {
	// The generated code requires the embedding; it only matters if peer.proto grows a
	// method this package has not implemented yet (gRPC then answers UNIMPLEMENTED).
	peerpb.UnimplementedReplicationServer

	backend Backend
	chunk   int   // FetchObject chunk size
	maxKV   int64 // keyvalue push limit
	// batchSlots holds one token per PushBatch being received or applied
	// (maxConcurrentBatches), bounding the bodies held in memory.
	batchSlots chan struct{}
}

var _ peerpb.ReplicationServer = (*handlers)(nil)

// NewServer builds the server. It panics when cfg.Registerer already holds different
// collectors under the kura_peer_* names, a programming error like a duplicate flag.
func NewServer(cfg ServerConfig, backend Backend) *Server {
	if backend == nil {
		panic("peer.NewServer: nil backend")
	}
	m, err := newMetrics(cfg.Registerer, sideServer)
	if err != nil {
		panic(fmt.Sprintf("peer.NewServer: %v", err))
	}
	s := &Server{log: cfg.Logger, metrics: m, transport: "plaintext"}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	h := &handlers{backend: backend, chunk: cfg.MaxChunkBytes, maxKV: cfg.MaxKeyValueBytes, batchSlots: make(chan struct{}, maxConcurrentBatches)}
	if h.chunk <= 0 || h.chunk > MaxChunkBytes {
		h.chunk = MaxChunkBytes
	}
	if h.maxKV <= 0 {
		h.maxKV = DefaultMaxKeyValueBytes
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
		s.transport = "mtls"
	}
	// The observer runs first so refused calls are counted and recovered like the rest; the
	// credential check runs before the caller's interceptors and every handler.
	unary := []grpc.UnaryServerInterceptor{s.unaryObserver}
	streams := []grpc.StreamServerInterceptor{s.streamObserver}
	if len(cfg.PlaneKey) > 0 {
		now := cfg.Now
		if now == nil {
			now = time.Now
		}
		check, err := newChecker(cfg, s.log, now)
		if err != nil {
			panic(fmt.Sprintf("peer.NewServer: %v", err))
		}
		unary, streams = append(unary, check.unary), append(streams, check.stream)
		s.checked = true
	}
	opts := []grpc.ServerOption{
		grpc.Creds(creds),
		grpc.MaxRecvMsgSize(MaxChunkBytes + maxHeaderBytes),
		grpc.MaxConcurrentStreams(maxConcurrentStreams),
		grpc.InitialWindowSize(streamWindowBytes),
		grpc.InitialConnWindowSize(connWindowBytes),
		grpc.NumStreamWorkers(streamWorkers),
		// Stop must not return while a handler still uses the backend: the app closes the
		// store right after.
		grpc.WaitForHandlers(true),
		// Peers keep connections open between pushes and ping to detect a dead node; allow
		// that, but not more often than every 10 s.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: time.Minute, Timeout: 20 * time.Second}),
		grpc.ChainUnaryInterceptor(append(unary, cfg.UnaryInterceptors...)...),
		grpc.ChainStreamInterceptor(append(streams, cfg.StreamInterceptors...)...),
	}
	for _, h := range cfg.StatsHandlers {
		opts = append(opts, grpc.StatsHandler(h))
	}
	s.grpc = grpc.NewServer(opts...)
	peerpb.RegisterReplicationServer(s.grpc, h)
	return s
}

// Serve accepts connections on ln until Stop; it returns nil after Stop and closes ln.
func (s *Server) Serve(ln net.Listener) error {
	s.log.Info("internal plane listening", "addr", ln.Addr().String(), "transport", s.transport, "credential_required", s.checked)
	if err := s.grpc.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve internal plane on %s: %w", ln.Addr(), err)
	}
	return nil
}

// Stop stops accepting connections and lets running calls finish until ctx is done, then
// cancels the rest. It returns once every handler has returned.
func (s *Server) Stop(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.log.Warn("internal plane: graceful stop timed out, cancelling running calls")
		s.grpc.Stop()
		<-done
	}
}

// methodName is the short method label of a full gRPC method ("/pkg.Svc/PushObject").
func methodName(full string) string {
	if i := strings.LastIndexByte(full, '/'); i >= 0 {
		return full[i+1:]
	}
	return full
}

func (s *Server) unaryObserver(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = s.panicked(ctx, info.FullMethod, p)
		}
		s.finished(ctx, info.FullMethod, start, err)
	}()
	return handler(ctx, req)
}

func (s *Server) streamObserver(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			err = s.panicked(ss.Context(), info.FullMethod, p)
		}
		s.finished(ss.Context(), info.FullMethod, start, err)
	}()
	return handler(srv, ss)
}

func (s *Server) panicked(ctx context.Context, method string, p any) error {
	s.log.ErrorContext(ctx, "panic in internal-plane handler", "method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Error(codes.Internal, "internal error")
}

// finished records a call's metrics and logs what an operator should see (with the call's
// trace, when it has one).
func (s *Server) finished(ctx context.Context, fullMethod string, start time.Time, err error) {
	code := status.Code(err)
	method := methodName(fullMethod)
	s.metrics.observe(method, code, time.Since(start))
	switch code {
	case codes.OK, codes.NotFound, codes.Canceled:
	case codes.Unauthenticated:
		// The credential check logs its refusals itself, rate-limited: a scanner must not
		// flood the log through this line.
	case codes.InvalidArgument:
		// A peer sent something this node refuses: a bug or a configuration mismatch
		// between nodes (keyvalue limit), never routine.
		s.log.WarnContext(ctx, "internal-plane request rejected", "method", method, "err", err)
	default:
		s.log.WarnContext(ctx, "internal-plane request failed", "method", method, "code", code.String(), "err", err)
	}
}

// PushObject applies one replicated write: the header, then the body streamed into the
// store with the origin's version and digest, which decides by storage.Replaces. A copy that
// does not replace what the store holds (for immutable kinds: a later write, or the same
// body) is answered without reading the body, Applied false; the rest of the stream is then
// discarded by gRPC when the handler returns. An immutable copy that is the cluster's first
// writer replaces the stored body (Applied true).
func (h *handlers) PushObject(stream peerpb.Replication_PushObjectServer) error {
	first, err := stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return toStatus(fmt.Errorf("push object: %w: empty stream", ErrMalformed))
		}
		return toStatus(fmt.Errorf("push object: receive header: %w", err))
	}
	hdr := first.GetHeader()
	if hdr == nil {
		return toStatus(fmt.Errorf("push object: %w: first message is not a header", ErrMalformed))
	}
	info, err := headerToInfo(hdr)
	if err != nil {
		return toStatus(fmt.Errorf("push object: %w", err))
	}
	opts := storage.PutOptions{
		ContentType:    info.ContentType,
		Attributes:     info.Attributes,
		Size:           info.Size,
		Limit:          info.Size,
		ExpectedSHA256: &info.SHA256,
		Version:        info.Version,
	}
	if info.Key.Kind == storage.KindKeyValue && info.Size > h.maxKV {
		return toStatus(fmt.Errorf("push object %s: %w: %d bytes, keyvalue limit %d", info.Key, storage.ErrTooLarge, info.Size, h.maxKV))
	}
	body := &chunkReader{stream: stream, size: info.Size}
	res, err := h.backend.Put(stream.Context(), info.Key, body, opts)
	applied := err == nil && res.Created
	if err != nil && !errors.Is(err, storage.ErrStale) {
		return toStatus(fmt.Errorf("push object %s: %w", info.Key, err))
	}
	if err := stream.SendAndClose(&peerpb.PushObjectResponse{Applied: applied}); err != nil {
		return toStatus(fmt.Errorf("push object %s: send response: %w", info.Key, err))
	}
	return nil
}

// chunkReader is a push's body as an io.Reader over the stream's chunk messages. It holds at
// most one chunk. It checks the declared size itself, whatever the store does: the last byte
// is handed out only after the stream is seen to end, so a store that stops reading at the
// declared size can never commit a body that had more behind it.
type chunkReader struct {
	stream   peerpb.Replication_PushObjectServer
	size     int64  // declared body size
	received int64  // bytes received so far
	buf      []byte // received, not yet handed out
	ended    bool   // the stream's EOF was seen
	err      error  // sticky
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.ended {
			if r.received != r.size {
				r.err = fmt.Errorf("%w: body ended after %d bytes, declared %d", storage.ErrDigestMismatch, r.received, r.size)
				return 0, r.err
			}
			return 0, io.EOF
		}
		if err := r.next(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// next receives one chunk; when it completes the declared size it also receives the end of
// the stream before returning.
func (r *chunkReader) next() error {
	chunk, err := r.recv()
	if err != nil {
		return err
	}
	if chunk == nil {
		r.ended = true
		return nil
	}
	r.received += int64(len(chunk))
	if r.received > r.size {
		return fmt.Errorf("%w: body runs past the declared %d bytes", storage.ErrDigestMismatch, r.size)
	}
	r.buf = chunk
	if r.received == r.size {
		more, err := r.recv()
		if err != nil {
			return err
		}
		if more != nil {
			return fmt.Errorf("%w: body runs past the declared %d bytes", storage.ErrDigestMismatch, r.size)
		}
		r.ended = true
	}
	return nil
}

// recv returns the next non-empty chunk, or nil at the end of the stream.
func (r *chunkReader) recv() ([]byte, error) {
	for {
		msg, err := r.stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("receive body: %w", err)
		}
		if msg.GetHeader() != nil {
			return nil, fmt.Errorf("%w: a second header in the body", ErrMalformed)
		}
		if chunk := msg.GetChunk(); len(chunk) > 0 {
			return chunk, nil
		}
	}
}

// PushTombstone applies a namespace clean at the origin's version.
func (h *handlers) PushTombstone(ctx context.Context, req *peerpb.Tombstone) (*peerpb.PushTombstoneResponse, error) {
	t, err := tombstoneFromProto(req)
	if err != nil {
		return nil, toStatus(fmt.Errorf("push tombstone: %w", err))
	}
	if err := h.backend.DeleteNamespace(ctx, t.Tenant, t.Namespace, t.Version); err != nil {
		return nil, toStatus(fmt.Errorf("push tombstone %s/%s@%s: %w", t.Tenant, t.Namespace, t.Version, err))
	}
	return &peerpb.PushTombstoneResponse{}, nil
}

// FetchObject streams one object: its header, then chunks of at most MaxChunkBytes. A
// missing object, or one found corrupt, is NOT_FOUND; corruption found after the header was
// sent ends the stream with NOT_FOUND too, and the client never sees a complete body.
func (h *handlers) FetchObject(req *peerpb.FetchObjectRequest, stream peerpb.Replication_FetchObjectServer) error {
	key, err := keyFromProto(req.GetKey())
	if err != nil {
		return toStatus(fmt.Errorf("fetch object: %w", err))
	}
	r, err := h.backend.Open(stream.Context(), key, 0, -1)
	if err != nil {
		return toStatus(fmt.Errorf("fetch object %s: %w", key, err))
	}
	defer func() { _ = r.Close() }()
	if err := stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: infoToHeader(r.Info(), false)}}); err != nil {
		return toStatus(fmt.Errorf("fetch object %s: send header: %w", key, err))
	}
	for {
		// A fresh buffer per message: gRPC does not allow reusing a message after Send.
		buf := make([]byte, h.chunk)
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if err := stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: buf[:n]}}); err != nil {
				return toStatus(fmt.Errorf("fetch object %s: send body: %w", key, err))
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF), errors.Is(rerr, io.ErrUnexpectedEOF):
			return nil
		default:
			return toStatus(fmt.Errorf("fetch object %s: read body: %w", key, rerr))
		}
	}
}

// BucketDigests returns the index's digests of 2^bits buckets.
func (h *handlers) BucketDigests(ctx context.Context, req *peerpb.BucketDigestsRequest) (*peerpb.BucketDigestsResponse, error) {
	bits := req.GetBucketBits()
	if bits > MaxBucketBits {
		return nil, toStatus(fmt.Errorf("bucket digests: %w: %d bucket bits, at most %d", ErrMalformed, bits, MaxBucketBits))
	}
	digests, objects, err := h.backend.BucketDigests(ctx, bits)
	if err != nil {
		return nil, toStatus(fmt.Errorf("bucket digests (%d bits): %w", bits, err))
	}
	if want := 32 << bits; len(digests) != want {
		return nil, toStatus(fmt.Errorf("bucket digests (%d bits): index returned %d bytes, want %d", bits, len(digests), want))
	}
	return &peerpb.BucketDigestsResponse{BucketBits: bits, Digests: digests, Objects: objects}, nil
}

// ListObjects returns one page of the index's summaries.
func (h *handlers) ListObjects(ctx context.Context, req *peerpb.ListObjectsRequest) (*peerpb.ListObjectsResponse, error) {
	bits := req.GetBucketBits()
	if bits > MaxBucketBits {
		return nil, toStatus(fmt.Errorf("list objects: %w: %d bucket bits, at most %d", ErrMalformed, bits, MaxBucketBits))
	}
	for _, b := range req.GetBuckets() {
		if uint64(b) >= 1<<bits {
			return nil, toStatus(fmt.Errorf("list objects: %w: bucket %d out of range for %d bits", ErrMalformed, b, bits))
		}
	}
	limit := int(req.GetPageSize())
	if limit <= 0 || limit > MaxListPage {
		limit = MaxListPage
	}
	var after []byte
	if t := req.GetPageToken(); len(t) > 0 {
		after = t
	}
	page, next, err := h.backend.ListObjects(ctx, bits, req.GetBuckets(), after, limit)
	if err != nil {
		return nil, toStatus(fmt.Errorf("list objects: %w", err))
	}
	resp := &peerpb.ListObjectsResponse{Objects: make([]*peerpb.ObjectHeader, len(page)), NextPageToken: next}
	for i, o := range page {
		resp.Objects[i] = infoToHeader(o.Info, o.Evicted)
	}
	return resp, nil
}

// ListTombstones returns every namespace tombstone.
func (h *handlers) ListTombstones(ctx context.Context, _ *peerpb.ListTombstonesRequest) (*peerpb.ListTombstonesResponse, error) {
	ts, err := h.backend.Tombstones(ctx)
	if err != nil {
		return nil, toStatus(fmt.Errorf("list tombstones: %w", err))
	}
	resp := &peerpb.ListTombstonesResponse{Tombstones: make([]*peerpb.Tombstone, len(ts))}
	for i, t := range ts {
		resp.Tombstones[i] = tombstoneToProto(t)
	}
	return resp, nil
}

// FindObjects answers which of the requested keys the backend stores, with their headers.
// It looks only at this node's store (the backend is the raw local store): a peer's
// existence question never bounces on to a third node.
func (h *handlers) FindObjects(ctx context.Context, req *peerpb.FindObjectsRequest) (*peerpb.FindObjectsResponse, error) {
	if n := len(req.GetKeys()); n > MaxFindKeys {
		return nil, toStatus(fmt.Errorf("find objects: %w: %d keys, at most %d", ErrMalformed, n, MaxFindKeys))
	}
	keys := make([]storage.Key, len(req.GetKeys()))
	for i, k := range req.GetKeys() {
		var err error
		if keys[i], err = keyFromProto(k); err != nil {
			return nil, toStatus(fmt.Errorf("find objects: key %d: %w", i, err))
		}
	}
	// One batched look-up finds the few present keys; only those are stated for a header.
	missing, err := h.backend.FindMissing(ctx, keys)
	if err != nil {
		return nil, toStatus(fmt.Errorf("find objects (%d keys): %w", len(keys), err))
	}
	absent := make(map[storage.Key]bool, len(missing))
	for _, k := range missing {
		absent[k] = true
	}
	resp := &peerpb.FindObjectsResponse{}
	for _, k := range keys {
		if absent[k] {
			continue
		}
		absent[k] = true // a key asked twice is answered once
		info, err := h.backend.Stat(ctx, k)
		switch {
		case errors.Is(err, storage.ErrNotFound), errors.Is(err, storage.ErrCorrupt):
			continue // gone (evicted, cleaned) since the look-up, or not servable
		case err != nil:
			return nil, toStatus(fmt.Errorf("find objects: stat %s: %w", k, err))
		}
		resp.Present = append(resp.Present, infoToHeader(info, false))
	}
	return resp, nil
}
