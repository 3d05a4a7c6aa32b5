package peer

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/storage"
)

// DefaultDialTimeout bounds one connection attempt to a peer when ClientConfig leaves it zero.
const DefaultDialTimeout = 5 * time.Second

// ErrClientClosed is returned by calls made after Close.
var ErrClientClosed = errors.New("internal-plane client is closed")

// ClientConfig configures a Client. The zero value dials plaintext with the defaults.
type ClientConfig struct {
	// TLS, when set, is the client configuration from LoadTLS (it presents the node's
	// certificate and verifies the peer's against the CA). nil dials plaintext.
	TLS *tls.Config
	// PlaneKey, when set, is the cluster's gossip key (KURA_GOSSIP_KEY, decoded): every call
	// then carries the credential a Server with the same PlaneKey requires (auth.go), with
	// TLS on too. nil attaches none.
	PlaneKey []byte
	// Now is the clock that timestamps credentials (nil: time.Now).
	Now func() time.Time
	// DialTimeout bounds one connection attempt (zero: DefaultDialTimeout). Reconnects back
	// off up to maxReconnectDelay; calls fail fast with UNAVAILABLE meanwhile.
	DialTimeout time.Duration
	// Logger receives connection lifecycle events (nil: discarded).
	Logger *slog.Logger
	// Registerer receives kura_peer_* metrics with side="client" (nil: a private registry).
	Registerer prometheus.Registerer
	// UnaryInterceptors, StreamInterceptors and StatsHandlers wrap every call: the seam for
	// W3C trace-context propagation (otelgrpc).
	UnaryInterceptors  []grpc.UnaryClientInterceptor
	StreamInterceptors []grpc.StreamClientInterceptor
	StatsHandlers      []stats.Handler
}

// maxReconnectDelay caps gRPC's reconnect backoff: a restarted peer is reached again within
// seconds, while the outbox's own backoff paces the retries of a peer that stays down.
const maxReconnectDelay = 5 * time.Second

// Client calls peers' internal planes. It keeps one *grpc.ClientConn per address, created
// on first use and closed by Forget or Close. It is safe for concurrent use.
type Client struct {
	opts    []grpc.DialOption
	log     *slog.Logger
	metrics *metrics

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	closed bool
}

// NewClient builds a client. It panics when cfg.Registerer already holds different
// collectors under the kura_peer_* names, a programming error like a duplicate flag.
func NewClient(cfg ClientConfig) *Client {
	m, err := newMetrics(cfg.Registerer, sideClient)
	if err != nil {
		panic(fmt.Sprintf("peer.NewClient: %v", err))
	}
	c := &Client{log: cfg.Logger, metrics: m, conns: map[string]*grpc.ClientConn{}}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = DefaultDialTimeout
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	unary, streams := cfg.UnaryInterceptors, cfg.StreamInterceptors
	if len(cfg.PlaneKey) > 0 {
		sign := newSigner(cfg.PlaneKey, cfg.Now)
		// Innermost, so a retry by an interceptor of the caller is signed afresh.
		unary = append(slices.Clone(unary), sign.unary)
		streams = append(slices.Clone(streams), sign.stream)
	}
	bo := backoff.DefaultConfig
	bo.BaseDelay = 100 * time.Millisecond
	bo.MaxDelay = maxReconnectDelay
	c.opts = []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: bo, MinConnectTimeout: dial}),
		// Pings find a peer that vanished without closing its connections (a partition, a
		// killed VM) in ~40 s instead of the kernel's TCP timeout.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
		grpc.WithInitialWindowSize(streamWindowBytes),
		grpc.WithInitialConnWindowSize(connWindowBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes), grpc.MaxCallSendMsgSize(MaxChunkBytes+maxHeaderBytes)),
		grpc.WithChainUnaryInterceptor(unary...),
		grpc.WithChainStreamInterceptor(streams...),
	}
	for _, h := range cfg.StatsHandlers {
		c.opts = append(c.opts, grpc.WithStatsHandler(h))
	}
	return c
}

// conn returns the pooled connection to addr, creating it (without dialling yet) if needed.
func (c *Client) conn(addr string) (peerpb.ReplicationClient, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClientClosed
	}
	cc, ok := c.conns[addr]
	if !ok {
		var err error
		// "passthrough" dials addr as given: peers advertise IP:port or host:port, and the
		// system resolver is what they expect (no gRPC DNS-resolver polling per peer).
		cc, err = grpc.NewClient("passthrough:///"+addr, c.opts...)
		if err != nil {
			return nil, fmt.Errorf("connect to peer %s: %w", addr, err)
		}
		c.conns[addr] = cc
		c.log.Debug("internal plane: new peer connection", "addr", addr)
	}
	return peerpb.NewReplicationClient(cc), nil
}

// Forget closes the connection to addr, if any (a peer that left the cluster). A later call
// to addr connects again.
func (c *Client) Forget(addr string) error {
	c.mu.Lock()
	cc, ok := c.conns[addr]
	delete(c.conns, addr)
	c.mu.Unlock()
	if !ok {
		return nil
	}
	if err := cc.Close(); err != nil {
		return fmt.Errorf("close connection to peer %s: %w", addr, err)
	}
	return nil
}

// Close closes every connection; calls in flight fail and later calls get ErrClientClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	conns := c.conns
	c.conns = map[string]*grpc.ClientConn{}
	c.closed = true
	c.mu.Unlock()
	var errs []error
	for addr, cc := range conns {
		if err := cc.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close connection to peer %s: %w", addr, err))
		}
	}
	return errors.Join(errs...)
}

// done records a finished call and converts its error: a status from the peer becomes a
// *RemoteError, a local failure (reading the body, verifying what the peer sent) is wrapped
// with the action and the peer.
func (c *Client) done(method, action, addr string, start time.Time, err error) error {
	if err == nil {
		c.metrics.observe(method, codes.OK, time.Since(start))
		return nil
	}
	if se, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		c.metrics.observe(method, se.GRPCStatus().Code(), time.Since(start))
		return fromStatus(action, addr, err)
	}
	c.metrics.observe(method, localCode(err), time.Since(start))
	return fmt.Errorf("%s on peer %s: %w", action, addr, err)
}

// PushObject sends one object (info from the origin's store, body streaming its bytes) to
// the peer at addr. applied is false when the peer already had it, had something newer or a
// newer namespace tombstone: all of which count as delivered. When the peer answers before
// reading the whole body (it already has the object), the rest of body is not read. A body
// that differs from info.Size or info.SHA256 is refused by the peer (an error wrapping
// storage.ErrDigestMismatch) and nothing is stored there. body is not closed.
func (c *Client) PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (applied bool, err error) {
	start := time.Now()
	action := "push object " + info.Key.String()
	if err := info.Key.Validate(); err != nil {
		return false, fmt.Errorf("%s: %w", action, err)
	}
	if info.Version == 0 || info.Size < 0 {
		return false, fmt.Errorf("%s: %w: version %s, size %d", action, ErrMalformed, info.Version, info.Size)
	}
	rc, err := c.conn(addr)
	if err != nil {
		return false, fmt.Errorf("%s: %w", action, err)
	}
	applied, err = c.push(ctx, rc, info, body)
	return applied, c.done("PushObject", action, addr, start, err)
}

func (c *Client) push(ctx context.Context, rc peerpb.ReplicationClient, info storage.Info, body io.Reader) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends the stream if we return before the peer's answer
	stream, err := rc.PushObject(ctx)
	if err != nil {
		return false, err
	}
	if err := stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Header{Header: infoToHeader(info, false)}}); err != nil {
		return finishPush(stream)
	}
	// One byte more than declared is read so an overlong body is caught here, not sent.
	limited := io.LimitReader(body, info.Size+1)
	var sent int64
	for {
		// A fresh buffer per message: gRPC does not allow reusing a message after Send.
		buf := make([]byte, min(int64(MaxChunkBytes), info.Size+1-sent))
		if len(buf) == 0 {
			break
		}
		n, rerr := io.ReadFull(limited, buf)
		sent += int64(n)
		if sent > info.Size {
			return false, fmt.Errorf("%w: body is longer than the declared %d bytes", storage.ErrDigestMismatch, info.Size)
		}
		if n > 0 {
			if err := stream.Send(&peerpb.ObjectPart{Part: &peerpb.ObjectPart_Chunk{Chunk: buf[:n]}}); err != nil {
				// io.EOF: the peer answered already (it had the object) or failed; the
				// answer or the status is in CloseAndRecv.
				return finishPush(stream)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return false, fmt.Errorf("read body: %w", rerr)
		}
	}
	return finishPush(stream)
}

func finishPush(stream grpc.ClientStreamingClient[peerpb.ObjectPart, peerpb.PushObjectResponse]) (bool, error) {
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return false, err
	}
	return resp.GetApplied(), nil
}

// PushTombstone sends a namespace clean (at its origin's version) to the peer at addr.
func (c *Client) PushTombstone(ctx context.Context, addr string, t storage.Tombstone) error {
	start := time.Now()
	action := fmt.Sprintf("push tombstone %s/%s@%s", t.Tenant, t.Namespace, t.Version)
	if _, err := tombstoneFromProto(tombstoneToProto(t)); err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	rc, err := c.conn(addr)
	if err != nil {
		return fmt.Errorf("%s: %w", action, err)
	}
	_, err = rc.PushTombstone(ctx, tombstoneToProto(t))
	return c.done("PushTombstone", action, addr, start, err)
}

// FetchObject opens key on the peer at addr. The returned Reader streams the body (one chunk
// in memory at a time) and must be closed; it verifies the size and SHA-256 announced in the
// header when the stream ends and then returns an error wrapping storage.ErrCorrupt instead
// of io.EOF on a mismatch, so a caller that stores what it reads must commit only after
// io.EOF. A missing object is an error wrapping storage.ErrNotFound.
func (c *Client) FetchObject(ctx context.Context, addr string, key storage.Key) (storage.Reader, error) {
	start := time.Now()
	action := "fetch object " + key.String()
	if err := key.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	rc, err := c.conn(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	// A fetch's messages are one chunk each; anything larger is a broken peer.
	stream, err := rc.FetchObject(ctx, &peerpb.FetchObjectRequest{Key: keyToProto(key)}, grpc.MaxCallRecvMsgSize(MaxChunkBytes+maxHeaderBytes))
	if err != nil {
		cancel()
		return nil, c.done("FetchObject", action, addr, start, err)
	}
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("%w: stream ended before the header", ErrMalformed)
	}
	if err == nil {
		err = checkFetchHeader(first, key)
	}
	if err != nil {
		cancel()
		return nil, c.done("FetchObject", action, addr, start, err)
	}
	info, _ := headerToInfo(first.GetHeader()) // validated by checkFetchHeader
	return &fetchReader{
		c: c, addr: addr, action: action, start: start,
		stream: stream, cancel: cancel, info: info, hash: sha256.New(),
	}, nil
}

func checkFetchHeader(msg *peerpb.ObjectPart, key storage.Key) error {
	if msg.GetHeader() == nil {
		return fmt.Errorf("%w: first message is not a header", ErrMalformed)
	}
	info, err := headerToInfo(msg.GetHeader())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if info.Key != key {
		return fmt.Errorf("%w: header names %s", ErrMalformed, info.Key)
	}
	return nil
}

// fetchReader streams a fetched body and verifies it at the end.
type fetchReader struct {
	c                *Client
	addr, action     string
	start            time.Time
	stream           grpc.ServerStreamingClient[peerpb.ObjectPart]
	cancel           context.CancelFunc
	info             storage.Info
	hash             hash.Hash
	received         int64
	buf              []byte
	err              error // sticky: io.EOF after a verified end, or the failure
	closed, finished bool
}

var _ storage.Reader = (*fetchReader)(nil)

func (r *fetchReader) Info() storage.Info { return r.info }

func (r *fetchReader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.next()
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// next receives one chunk into buf; at the end of the stream it verifies the body and
// returns io.EOF or the failure.
func (r *fetchReader) next() error {
	msg, err := r.stream.Recv()
	switch {
	case errors.Is(err, io.EOF):
		if r.received != r.info.Size {
			return r.finish(fmt.Errorf("%w: peer sent %d bytes, header says %d", storage.ErrCorrupt, r.received, r.info.Size))
		}
		if got := r.hash.Sum(nil); string(got) != string(r.info.SHA256[:]) {
			return r.finish(fmt.Errorf("%w: body SHA-256 differs from the header's", storage.ErrCorrupt))
		}
		return r.finish(nil)
	case err != nil:
		return r.finish(err)
	case msg.GetHeader() != nil:
		return r.finish(fmt.Errorf("%w: a second header in the body", ErrMalformed))
	}
	chunk := msg.GetChunk()
	r.received += int64(len(chunk))
	if r.received > r.info.Size {
		return r.finish(fmt.Errorf("%w: peer sent more than the %d bytes of the header", storage.ErrCorrupt, r.info.Size))
	}
	r.hash.Write(chunk)
	r.buf = chunk
	return nil
}

// finish ends the call, records it and returns what Read reports from now on: io.EOF after
// a verified body, else the converted failure.
func (r *fetchReader) finish(err error) error {
	r.cancel()
	r.finished = true
	if err = r.c.done("FetchObject", r.action, r.addr, r.start, err); err != nil {
		return err
	}
	return io.EOF
}

// Close ends the stream; the peer stops sending. Closing before the end is not an error.
func (r *fetchReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if !r.finished {
		// Abandoned before the end: counted as cancelled by the caller.
		r.cancel()
		r.finished = true
		r.c.metrics.observe("FetchObject", codes.Canceled, time.Since(r.start))
	}
	r.buf = nil
	if r.err == nil {
		r.err = fmt.Errorf("%s: read after close", r.action)
	}
	return nil
}

// BucketDigests returns the peer's 2^bits bucket digests (32 bytes each, in bucket order)
// and the number of objects they summarise.
func (c *Client) BucketDigests(ctx context.Context, addr string, bits uint32) ([]byte, uint64, error) {
	start := time.Now()
	action := fmt.Sprintf("bucket digests (%d bits)", bits)
	if bits > MaxBucketBits {
		return nil, 0, fmt.Errorf("%s: %w: at most %d bucket bits", action, ErrMalformed, MaxBucketBits)
	}
	rc, err := c.conn(addr)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", action, err)
	}
	resp, err := rc.BucketDigests(ctx, &peerpb.BucketDigestsRequest{BucketBits: bits})
	if err == nil && (resp.GetBucketBits() != bits || len(resp.GetDigests()) != 32<<bits) {
		err = fmt.Errorf("%w: %d bytes of digests for %d bits, want %d for %d",
			ErrMalformed, len(resp.GetDigests()), resp.GetBucketBits(), 32<<bits, bits)
	}
	if err = c.done("BucketDigests", action, addr, start, err); err != nil {
		return nil, 0, err
	}
	return resp.GetDigests(), resp.GetObjects(), nil
}

// ListObjects returns one page of the peer's object summaries in the given buckets (all when
// empty), starting after the opaque token after (nil: from the start), with at most limit
// entries (limit <= 0 or above MaxListPage: MaxListPage). next is nil when done.
func (c *Client) ListObjects(ctx context.Context, addr string, bits uint32, buckets []uint32, after []byte, limit int) ([]storage.ObjectSummary, []byte, error) {
	start := time.Now()
	action := fmt.Sprintf("list objects (%d buckets)", len(buckets))
	if limit <= 0 || limit > MaxListPage {
		limit = MaxListPage
	}
	rc, err := c.conn(addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", action, err)
	}
	resp, err := rc.ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: bits, Buckets: buckets, PageToken: after, PageSize: uint32(limit)})
	var page []storage.ObjectSummary
	if err == nil {
		page, err = summariesFromProto(resp.GetObjects(), limit)
	}
	if err = c.done("ListObjects", action, addr, start, err); err != nil {
		return nil, nil, err
	}
	next := resp.GetNextPageToken()
	if len(next) == 0 {
		next = nil
	}
	return page, next, nil
}

func summariesFromProto(hdrs []*peerpb.ObjectHeader, limit int) ([]storage.ObjectSummary, error) {
	if len(hdrs) > limit {
		return nil, fmt.Errorf("%w: %d entries in a page of %d", ErrMalformed, len(hdrs), limit)
	}
	page := make([]storage.ObjectSummary, len(hdrs))
	for i, h := range hdrs {
		info, err := headerToInfo(h)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrMalformed, i, err)
		}
		page[i] = storage.ObjectSummary{Info: info, Evicted: h.GetEvicted()}
	}
	return page, nil
}

// ListTombstones returns every namespace tombstone the peer holds.
func (c *Client) ListTombstones(ctx context.Context, addr string) ([]storage.Tombstone, error) {
	start := time.Now()
	const action = "list tombstones"
	rc, err := c.conn(addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", action, err)
	}
	resp, err := rc.ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
	var ts []storage.Tombstone
	if err == nil {
		ts = make([]storage.Tombstone, len(resp.GetTombstones()))
		for i, t := range resp.GetTombstones() {
			var terr error
			if ts[i], terr = tombstoneFromProto(t); terr != nil {
				err = fmt.Errorf("%w: tombstone %d: %w", ErrMalformed, i, terr)
				break
			}
		}
	}
	if err = c.done("ListTombstones", action, addr, start, err); err != nil {
		return nil, err
	}
	return ts, nil
}

// FindObjects returns the Info of those keys the peer at addr stores (in any order); a key
// left out is not stored there. Large sets are sent in several requests of at most
// MaxFindKeys keys, one after the other; ctx bounds them all. The peer answers from its own
// store only.
func (c *Client) FindObjects(ctx context.Context, addr string, keys []storage.Key) ([]storage.Info, error) {
	rc, err := c.conn(addr)
	if err != nil {
		return nil, fmt.Errorf("find objects: %w", err)
	}
	// A key asked twice is asked once: the answer then names it once.
	seen := make(map[storage.Key]bool, len(keys))
	keys = slices.DeleteFunc(slices.Clone(keys), func(k storage.Key) bool {
		dup := seen[k]
		seen[k] = true
		return dup
	})
	var found []storage.Info
	for len(keys) > 0 {
		req := &peerpb.FindObjectsRequest{}
		size := 0
		for len(keys) > 0 && len(req.Keys) < MaxFindKeys {
			pk := keyToProto(keys[0])
			n := proto.Size(pk) + 8 // the field's tag and length, generously
			if size+n > maxFindRequestBytes && len(req.Keys) > 0 {
				break
			}
			size += n
			req.Keys = append(req.Keys, pk)
			keys = keys[1:]
		}
		asked := make(map[storage.Key]bool, len(req.Keys))
		for _, pk := range req.Keys {
			k, _ := keyFromProto(pk) // only to check the answer; an invalid key is refused by the peer
			asked[k] = true
		}
		start := time.Now()
		action := fmt.Sprintf("find objects (%d keys)", len(req.Keys))
		resp, err := rc.FindObjects(ctx, req)
		if err == nil {
			found, err = appendFound(found, resp.GetPresent(), asked)
		}
		if err = c.done("FindObjects", action, addr, start, err); err != nil {
			return nil, err
		}
	}
	return found, nil
}

// appendFound converts a FindObjects answer, refusing keys that were not asked for.
func appendFound(found []storage.Info, hdrs []*peerpb.ObjectHeader, asked map[storage.Key]bool) ([]storage.Info, error) {
	if len(hdrs) > len(asked) {
		return nil, fmt.Errorf("%w: %d objects found of %d keys asked", ErrMalformed, len(hdrs), len(asked))
	}
	for i, h := range hdrs {
		info, err := headerToInfo(h)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %w", ErrMalformed, i, err)
		}
		if !asked[info.Key] {
			return nil, fmt.Errorf("%w: entry %d: %s was not asked for", ErrMalformed, i, info.Key)
		}
		found = append(found, info)
	}
	return found, nil
}
