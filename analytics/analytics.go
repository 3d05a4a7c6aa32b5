package analytics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Pipeline is the client family an event belongs to; each has its own webhook, queue, worker
// and circuit breaker.
type Pipeline string

// The pipelines of docs/contract.md §9. The values are the pipeline label of the metrics.
const (
	Xcode  Pipeline = "xcode"
	Gradle Pipeline = "gradle"
)

// Action is what happened to the artifact. The values are the webhook's "action" field.
type Action string

// Actions reported.
const (
	Upload   Action = "upload"
	Download Action = "download"
)

// Event is one successful transfer. Key is the Xcode CAS id or the Gradle cache key.
type Event struct {
	Pipeline    Pipeline
	TenantID    string
	NamespaceID string
	Action      Action
	Size        int64
	Key         string
}

// Defaults for Config fields left at zero; they match the KURA_ANALYTICS_* defaults.
const (
	// DefaultBatchSize: 100 events of ~250 JSON bytes keep a request near 25 KB, small enough
	// for any webhook receiver, large enough that a busy node sends a few requests a second.
	DefaultBatchSize = 100
	// DefaultBatchTimeout bounds how stale a partial batch gets on a quiet node.
	DefaultBatchTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds one webhook request, so a server that accepts and hangs
	// costs a pipeline at most this much per batch.
	DefaultRequestTimeout = 5 * time.Second
	// DefaultQueueCapacity: ten full batches per pipeline (~100 KB of events) ride out a
	// slow request or two before anything is dropped.
	DefaultQueueCapacity = 1000
	// DefaultBreakerFailureThreshold: five consecutive failed batches are an outage, not a
	// blip.
	DefaultBreakerFailureThreshold = 5
	// DefaultBreakerOpen: how long a failing server is left alone before one trial batch.
	DefaultBreakerOpen = 30 * time.Second
)

// maxFlushTime caps the final flush after Run's context is cancelled, so analytics never hold
// up a node's shutdown by more than a couple of seconds, whatever the request timeout.
const maxFlushTime = 2 * time.Second

// Config configures a Reporter.
type Config struct {
	// ServerURL is the analytics server's base URL (http or https, no query). Required.
	ServerURL string
	// SigningKey keys the HMAC-SHA256 of x-cache-signature; its bytes are used as written.
	// Required.
	SigningKey string
	// NodeURL is this node's public URL; its host[:port] is sent as x-cache-endpoint.
	// Required.
	NodeURL string
	// BatchSize is the most events per request (default DefaultBatchSize).
	BatchSize int
	// BatchTimeout is how long the first event of a partial batch waits for company before
	// the batch is sent anyway (default DefaultBatchTimeout).
	BatchTimeout time.Duration
	// RequestTimeout bounds one webhook request (default DefaultRequestTimeout).
	RequestTimeout time.Duration
	// QueueCapacity is the number of events each pipeline buffers; beyond it Record drops
	// (default DefaultQueueCapacity).
	QueueCapacity int
	// BreakerFailureThreshold is the number of consecutive failed batches that opens a
	// pipeline's breaker (default DefaultBreakerFailureThreshold).
	BreakerFailureThreshold int
	// BreakerOpen is how long an open breaker drops batches before it lets one trial batch
	// through (default DefaultBreakerOpen).
	BreakerOpen time.Duration
	// HTTPClient sends the webhooks (nil: a client of the Reporter's own, whose idle
	// connections are closed when Run returns). Per-request deadlines come from
	// RequestTimeout, so the client needs no Timeout.
	HTTPClient *http.Client
	// Logger receives breaker transitions (nil: discarded).
	Logger *slog.Logger
	// Registerer receives the kura_analytics_* metrics (nil: a private registry).
	Registerer prometheus.Registerer
	// Now stamps events (observed_at_ms) and drives the circuit breaker (nil: time.Now).
	// Batch and request timeouts always use the real clock.
	Now func() time.Time
}

// Reporter batches events and delivers them. Record is safe for concurrent use and on a nil
// *Reporter; Run owns every goroutine the Reporter starts.
type Reporter struct {
	cfg        Config
	client     *http.Client
	ownClient  bool
	key        []byte
	endpoint   string // x-cache-endpoint
	serverURL  string // redacted, for logs and errors
	log        *slog.Logger
	now        func() time.Time
	flushLimit time.Duration
	xcode      *pipeline
	gradle     *pipeline
	running    atomic.Bool
}

// New validates cfg and builds a Reporter. Nothing is sent until Run.
func New(cfg Config) (*Reporter, error) {
	if err := applyDefaults(&cfg); err != nil {
		return nil, err
	}
	server, err := url.Parse(cfg.ServerURL)
	if err != nil || (server.Scheme != "http" && server.Scheme != "https") || server.Host == "" {
		return nil, fmt.Errorf("new analytics reporter: server URL %q is not an http(s) URL with a host", cfg.ServerURL)
	}
	if cfg.SigningKey == "" {
		return nil, errors.New("new analytics reporter: no signing key")
	}
	node, err := url.Parse(cfg.NodeURL)
	if err != nil || node.Host == "" {
		return nil, fmt.Errorf("new analytics reporter: node URL %q has no host", cfg.NodeURL)
	}
	r := &Reporter{
		cfg:        cfg,
		client:     cfg.HTTPClient,
		key:        []byte(cfg.SigningKey),
		endpoint:   node.Host,
		serverURL:  server.Redacted(),
		log:        cfg.Logger,
		now:        cfg.Now,
		flushLimit: min(cfg.RequestTimeout, maxFlushTime),
	}
	if r.client == nil {
		r.client = &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
		r.ownClient = true
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.now == nil {
		r.now = time.Now
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	base := strings.TrimRight(cfg.ServerURL, "/")
	r.xcode = newPipeline(r, Xcode, base+"/webhooks/cache", m)
	r.gradle = newPipeline(r, Gradle, base+"/webhooks/gradle-cache", m)
	if err := m.registerGauges(cfg.Registerer, r.xcode, r.gradle); err != nil {
		return nil, err
	}
	return r, nil
}

func applyDefaults(cfg *Config) error {
	for name, v := range map[string]int64{
		"batch size": int64(cfg.BatchSize), "batch timeout": int64(cfg.BatchTimeout),
		"request timeout": int64(cfg.RequestTimeout), "queue capacity": int64(cfg.QueueCapacity),
		"breaker failure threshold": int64(cfg.BreakerFailureThreshold), "breaker open time": int64(cfg.BreakerOpen),
	} {
		if v < 0 {
			return fmt.Errorf("new analytics reporter: %s must not be negative (got %d)", name, v)
		}
	}
	setDefault(&cfg.BatchSize, DefaultBatchSize)
	setDefault(&cfg.BatchTimeout, DefaultBatchTimeout)
	setDefault(&cfg.RequestTimeout, DefaultRequestTimeout)
	setDefault(&cfg.QueueCapacity, DefaultQueueCapacity)
	setDefault(&cfg.BreakerFailureThreshold, DefaultBreakerFailureThreshold)
	setDefault(&cfg.BreakerOpen, DefaultBreakerOpen)
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
	}
	return nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// ServerURL is the configured server URL with any password redacted, for logs.
func (r *Reporter) ServerURL() string { return r.serverURL }

// Record queues e for delivery. It never blocks and does not allocate: when e's pipeline queue
// is full the event is dropped and counted. Events of an unknown pipeline or action are
// ignored. A nil Reporter ignores everything, so callers need no nil check.
func (r *Reporter) Record(e Event) {
	if r == nil {
		return
	}
	var p *pipeline
	switch e.Pipeline {
	case Xcode:
		p = r.xcode
	case Gradle:
		p = r.gradle
	default:
		return
	}
	if e.Action != Upload && e.Action != Download {
		return
	}
	p.enqueue(queued{Event: e, at: r.now().UnixMilli()})
}

// Run delivers queued events until ctx is cancelled: one goroutine per pipeline batches and
// sends, and Run returns only after both stopped. On cancellation each pipeline flushes what
// is queued once more; the whole stop, an in-flight request included, is bounded by
// min(RequestTimeout, 2 s), after which unsent events are dropped. Run returns nil after a
// cancellation, and an error only when it is already running.
func (r *Reporter) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("run analytics reporter: already running")
	}
	defer r.running.Store(false)
	if r.ownClient {
		defer r.client.CloseIdleConnections()
	}
	// Requests do not inherit ctx's cancellation: the final flush must still be able to send
	// after ctx is done. sends is cancelled instead once the flush time is up.
	sends, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelSends()
	var wg sync.WaitGroup
	for _, p := range []*pipeline{r.xcode, r.gradle} {
		wg.Go(func() { p.run(ctx, sends) })
	}
	stopped := make(chan struct{})
	go func() {
		wg.Wait()
		close(stopped)
	}()
	<-ctx.Done()
	flush := time.NewTimer(r.flushLimit)
	defer flush.Stop()
	select {
	case <-stopped:
	case <-flush.C:
		cancelSends()
		<-stopped
	}
	return nil
}
