package reapi

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/storage"
)

// Defaults and bounds of Config.
const (
	// DefaultTenantID is used when Config.TenantID is empty (KURA_TENANT_ID's default).
	DefaultTenantID = "default"
	// DefaultNamespace is the namespace of requests whose instance_name is empty.
	DefaultNamespace = "default"
	// MinBatchTotalSizeBytes is the smallest batch limit accepted: 4 MiB is what clients
	// assume when a server advertises nothing, so advertising less would break them.
	MinBatchTotalSizeBytes = 4 << 20
	// DefaultMaxBatchTotalSizeBytes is advertised and enforced when Config leaves it 0.
	DefaultMaxBatchTotalSizeBytes = MinBatchTotalSizeBytes
	// maxBatchTotalSizeBytes keeps the derived gRPC message limit inside an int32.
	maxBatchTotalSizeBytes = 1 << 30
	// DefaultMaxDecompressedBytes bounds what the zstd items of one BatchUpdateBlobs request
	// may expand to, 16 times the default batch limit.
	DefaultMaxDecompressedBytes = 64 << 20
	// DefaultMaxProtoBytes bounds an ActionResult, Directory or Tree read into memory.
	DefaultMaxProtoBytes = 64 << 20
	// DefaultResumableMinBytes: ByteStream uploads of blobs this large or larger are staged so
	// that a broken stream can resume (docs/reapi.md). Staging writes the blob twice (the
	// staged file, then the segment); below 8 MiB sending it again costs a client less than
	// that costs the server.
	DefaultResumableMinBytes = 8 << 20
	// messageHeadroom is added to the batch limit to get the gRPC receive limit: it covers
	// the digests and framing around the blob bytes of a full batch (about 85 bytes per item,
	// so a full batch of items of 350 bytes or more fits).
	messageHeadroom = 1 << 20
	// maxHeaderListBytes bounds a call's metadata (see ServerOptions).
	maxHeaderListBytes = 64 << 10
)

// Config holds the REAPI settings. The zero value of every limit means its default.
type Config struct {
	// TenantID owns every object stored through REAPI (KURA_TENANT_ID).
	TenantID string
	// MaxBatchTotalSizeBytes is advertised in the capabilities and enforced: the blob bytes
	// of one BatchUpdateBlobs request and the blob sizes asked for by one BatchReadBlobs
	// request may not add up to more. At least MinBatchTotalSizeBytes.
	MaxBatchTotalSizeBytes int64
	// MaxDecompressedBytes is the decompression-bomb guard of BatchUpdateBlobs: the declared
	// (uncompressed) sizes of the zstd items of one request may not add up to more. Every
	// compressed payload, batched or streamed, is also cut off one byte past its declared
	// size, so a payload that expands beyond what it declared is rejected at once.
	MaxDecompressedBytes int64
	// MaxCASBlobSizeBytes, when positive, is advertised as max_cas_blob_size_bytes and larger
	// uploads are rejected with INVALID_ARGUMENT. 0 means no limit (the disk budget applies).
	MaxCASBlobSizeBytes int64
	// MaxProtoBytes bounds an ActionResult, Directory or Tree that the server reads into
	// memory (GetActionResult's completeness check, GetTree).
	MaxProtoBytes int64
	// ResumableMinBytes is the smallest blob whose uncompressed ByteStream upload is staged
	// to be resumable (when the local store keeps resumable writes, storage.ResumableWrites).
	// 0: DefaultResumableMinBytes; negative: no upload is resumable.
	ResumableMinBytes int64
}

// withDefaults fills zero limits with their defaults.
func (c Config) withDefaults() Config {
	if c.TenantID == "" {
		c.TenantID = DefaultTenantID
	}
	if c.MaxBatchTotalSizeBytes == 0 {
		c.MaxBatchTotalSizeBytes = DefaultMaxBatchTotalSizeBytes
	}
	if c.MaxDecompressedBytes == 0 {
		c.MaxDecompressedBytes = max(DefaultMaxDecompressedBytes, c.MaxBatchTotalSizeBytes)
	}
	if c.MaxProtoBytes == 0 {
		c.MaxProtoBytes = DefaultMaxProtoBytes
	}
	if c.ResumableMinBytes == 0 {
		c.ResumableMinBytes = DefaultResumableMinBytes
	}
	return c
}

// Validate reports every problem of the configuration (after defaults are applied).
func (c Config) Validate() error {
	c = c.withDefaults()
	var errs []error
	if err := storage.ValidateIdentifier("tenant_id", c.TenantID); err != nil {
		errs = append(errs, fmt.Errorf("TenantID: %w", err))
	}
	if c.MaxBatchTotalSizeBytes < MinBatchTotalSizeBytes || c.MaxBatchTotalSizeBytes > maxBatchTotalSizeBytes {
		errs = append(errs, fmt.Errorf("MaxBatchTotalSizeBytes is %d; it must be between %d and %d",
			c.MaxBatchTotalSizeBytes, MinBatchTotalSizeBytes, maxBatchTotalSizeBytes))
	}
	if c.MaxDecompressedBytes < c.MaxBatchTotalSizeBytes {
		errs = append(errs, fmt.Errorf("MaxDecompressedBytes is %d; it must be at least MaxBatchTotalSizeBytes (%d)",
			c.MaxDecompressedBytes, c.MaxBatchTotalSizeBytes))
	}
	if c.MaxCASBlobSizeBytes < 0 {
		errs = append(errs, fmt.Errorf("MaxCASBlobSizeBytes is %d; it must be 0 (no limit) or positive", c.MaxCASBlobSizeBytes))
	}
	if c.MaxProtoBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("MaxProtoBytes is %d; it must be at least 1 MiB", c.MaxProtoBytes))
	}
	return errors.Join(errs...)
}

// maxRecvMsgSize is the gRPC receive limit: a full batch plus its framing.
func (c Config) maxRecvMsgSize() int {
	return int(c.MaxBatchTotalSizeBytes + messageHeadroom)
}

// Deps are the collaborators of the REAPI server.
type Deps struct {
	// Store keeps blobs and action results and serves the read path: reads, FindMissingBlobs
	// and the completeness check, which in a cluster may ask peers. Required.
	Store storage.Store
	// Local is this node's own store, which never asks peers: every write and the write
	// path's existence checks (ByteStream Write's "already here", QueryWriteStatus) go to it,
	// so an upload never waits on a peer (docs/contract.md §5). nil: Store.
	Local storage.Store
	// Registerer receives the metrics. Nil means a private registry (metrics not exported).
	Registerer prometheus.Registerer
	// Logger receives warnings about store failures and bad stored data. Nil discards.
	Logger *slog.Logger
	// Guard, when set, decides every call but health checks (see (*Server).ServerOptions).
	Guard Guard
	// Lifecycle, when set, counts calls in flight and refuses new ones while the node drains.
	Lifecycle *lifecycle.Node
	// TracerProvider, when it traces, gets a server span per call (health checks aside)
	// through the stats handler of (*Server).ServerOptions. nil or no-op: no tracing.
	TracerProvider trace.TracerProvider
}

// Keepalive policy. Bazel and Buck2 keep long-lived channels; the server pings idle
// connections to find dead peers, and tolerates client pings down to every 10 s (the gRPC
// default of 5 min would answer a client's 30 s keepalive with GOAWAY too_many_pings).
const (
	keepaliveTime       = time.Minute      // ping a connection after a minute without activity
	keepaliveTimeout    = 20 * time.Second // close it when the ping is not answered in 20 s
	keepaliveMinClientT = 10 * time.Second // most frequent client ping tolerated
)

// HTTP/2 flow-control windows of the REAPI listener (see ServerOptions).
const (
	streamWindowBytes = 4 << 20
	connWindowBytes   = 16 << 20
	// streamWorkers: goroutines kept to serve calls (see ServerOptions), a few per core's
	// worth of concurrent small writes.
	streamWorkers = 32
)

// ServerOptions returns the gRPC server options the REAPI services need: a receive limit
// consistent with the advertised batch limit (a full BatchUpdateBlobs request fits; bigger
// blobs go through ByteStream in chunks) and the keepalive policy. (*Server).ServerOptions
// adds the interceptors (request ids, metrics, admission, policy) to these.
func ServerOptions(cfg Config) []grpc.ServerOption {
	cfg = cfg.withDefaults()
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.maxRecvMsgSize()),
		// Metadata carries credentials the policy fingerprints and reads; 64 KiB, as for HTTP
		// headers, leaves room for large JWTs while refusing header floods (grpc-go would
		// accept 16 MiB).
		grpc.MaxHeaderListSize(maxHeaderListBytes),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinClientT, PermitWithoutStream: true}),
		// Large flow-control windows let a ByteStream upload keep the socket busy instead
		// of waiting for a WINDOW_UPDATE every 64 KiB: a quarter of the allocations and
		// fewer round trips per MiB (BenchmarkByteStreamWrite64MiB). Setting them turns off
		// grpc-go's BDP estimation, which on loopback never grows the window far. What a
		// client may have in flight is bounded by them: 4 MiB per stream, 16 MiB per
		// connection, received into buffers as fast as the handler consumes them.
		grpc.InitialWindowSize(streamWindowBytes),
		grpc.InitialConnWindowSize(connWindowBytes),
		// ByteStream Read encodes its chunks without copying them (readcodec.go).
		codecOption(),
		// Long-lived workers serve the calls: a fresh goroutine per call grew its stack on
		// every small write, which goes deep into Pebble (a tenth of the server's CPU of an
		// ActionCache update or a 1 KiB BatchUpdateBlobs). Calls beyond the workers still get
		// their own goroutine.
		grpc.NumStreamWorkers(streamWorkers),
	}
}
