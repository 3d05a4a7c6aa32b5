package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
	"golang.org/x/time/rate"
)

// Resource attribute names Kura adds to service.name and friends: the node's identity, as
// on kura_node_info, so a trace can be filtered by node, region or tenant.
const (
	AttrNodeName = "kura.node.name"
	AttrRegion   = "kura.region"
	AttrTenantID = "kura.tenant_id"
	// AttrRequestID is the span attribute holding the request id of a server span.
	AttrRequestID = "kura.request_id"
)

// defaultTracesPath is appended to an endpoint given without a path: OTLP/HTTP receivers
// (the collector, Tempo, Jaeger) listen there, and "http://collector:4318" is what people
// type.
const defaultTracesPath = "/v1/traces"

// TracingConfig configures trace export.
type TracingConfig struct {
	// Endpoint is the OTLP/HTTP traces URL (KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), used as
	// is, or with /v1/traces when it has no path. Empty: tracing off.
	Endpoint string
	// ServiceName is service.name (KURA_OTEL_SERVICE_NAME; empty: "kura").
	ServiceName string
	// Environment is deployment.environment (KURA_OTEL_DEPLOYMENT_ENVIRONMENT; empty: unset).
	Environment string
	// NodeName, Region, TenantID and Version describe this node (service.instance.id,
	// kura.node.name, kura.region, kura.tenant_id, service.version).
	NodeName, Region, TenantID, Version string
	// Logger receives export failures, at most one a minute (nil: discarded).
	Logger *slog.Logger
	// Options are added to the SDK provider's options (tests use sdktrace.WithSyncer).
	Options []sdktrace.TracerProviderOption
}

// Tracing is the process's tracer provider. The zero value is not usable; build it with
// NewTracing. It is safe for concurrent use.
type Tracing struct {
	provider trace.TracerProvider
	sdk      *sdktrace.TracerProvider // nil when tracing is off
}

// NewTracing builds the tracer provider: with no endpoint a no-op provider (tracing off: spans
// cost nothing and nothing is exported); otherwise an SDK provider batching spans to the
// OTLP/HTTP endpoint. The batch processor and the exporter honour the standard OTEL_BSP_*,
// OTEL_TRACES_SAMPLER* and OTEL_EXPORTER_OTLP_* variables (headers, timeout, TLS), and
// OTEL_RESOURCE_ATTRIBUTES adds resource attributes; the KURA_* settings win where both name
// the same thing. Nothing is sent until the first span ends, so an unreachable collector does
// not delay startup. Shutdown flushes and stops it.
func NewTracing(ctx context.Context, cfg TracingConfig) (*Tracing, error) {
	if cfg.Endpoint == "" {
		return &Tracing{provider: noop.NewTracerProvider()}, nil
	}
	endpoint, err := tracesURL(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	res, err := tracingResource(ctx, cfg)
	if err != nil {
		return nil, err
	}
	exp, err := otlptracehttp.New(ctx,
		otlptracehttp.WithEndpointURL(endpoint),
		otlptracehttp.WithCompression(otlptracehttp.GzipCompression),
	)
	if err != nil {
		return nil, fmt.Errorf("build the OTLP/HTTP trace exporter for %s: %w", endpoint, err)
	}
	opts := append([]sdktrace.TracerProviderOption{
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
	}, cfg.Options...)
	sdk := sdktrace.NewTracerProvider(opts...)
	return &Tracing{provider: sdk, sdk: sdk}, nil
}

// tracesURL checks the endpoint and gives a bare host the default traces path.
func tracesURL(endpoint string) (string, error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("traces endpoint %q: %w", endpoint, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("traces endpoint %q: want an http:// or https:// URL", endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = defaultTracesPath
	}
	return u.String(), nil
}

// tracingResource describes this node. Later detectors win, so the KURA_* values override
// OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES.
func tracingResource(ctx context.Context, cfg TracingConfig) (*resource.Resource, error) {
	name := cfg.ServiceName
	if name == "" {
		name = "kura"
	}
	attrs := []attribute.KeyValue{
		semconv.ServiceName(name),
		semconv.ServiceInstanceID(cfg.NodeName),
		attribute.String(AttrNodeName, cfg.NodeName),
		attribute.String(AttrRegion, cfg.Region),
		attribute.String(AttrTenantID, cfg.TenantID),
	}
	if cfg.Version != "" {
		attrs = append(attrs, semconv.ServiceVersion(cfg.Version))
	}
	if cfg.Environment != "" {
		// Both spellings: deployment.environment is what Tempo's and Jaeger's UIs and most
		// dashboards still filter on; deployment.environment.name is the current convention.
		attrs = append(attrs, attribute.String("deployment.environment", cfg.Environment),
			semconv.DeploymentEnvironmentNameKey.String(cfg.Environment))
	}
	res, err := resource.New(ctx,
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithTelemetrySDK(),
		resource.WithHost(),
		resource.WithFromEnv(),
		resource.WithAttributes(attrs...),
	)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("describe the node for traces: %w", err)
	}
	return res, nil
}

// Provider is the tracer provider to inject (a no-op one when tracing is off).
func (t *Tracing) Provider() trace.TracerProvider { return t.provider }

// Enabled reports whether spans are exported.
func (t *Tracing) Enabled() bool { return t.sdk != nil }

// Shutdown exports the spans still buffered and stops the provider, giving up when ctx ends.
// Spans started afterwards are dropped.
func (t *Tracing) Shutdown(ctx context.Context) error {
	if t.sdk == nil {
		return nil
	}
	if err := t.sdk.Shutdown(ctx); err != nil {
		return fmt.Errorf("flush traces: %w", err)
	}
	return nil
}

// Propagator is the W3C trace context (traceparent, tracestate) and baggage propagator Kura
// accepts from clients and sends across the internal plane.
func Propagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// TracingEnabled reports whether tp records anything: false for nil and for the no-op
// provider, so front ends can leave their tracing middleware out entirely.
func TracingEnabled(tp trace.TracerProvider) bool {
	if tp == nil {
		return false
	}
	_, off := tp.(noop.TracerProvider)
	return !off
}

// ErrorHandler returns an otel.ErrorHandler that logs the SDK's errors (failed exports,
// mostly) at warn, at most once a minute: a collector that is down must not flood the log.
func ErrorHandler(logger *slog.Logger) otel.ErrorHandler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	limit := &rate.Sometimes{Interval: time.Minute}
	return otel.ErrorHandlerFunc(func(err error) {
		limit.Do(func() { logger.Warn("trace export failed (repeats are not logged for a minute)", "error", err) })
	})
}

// ChildSpansOnly wraps tp so that it starts spans only inside an existing trace: where the
// context carries no span context (local or received), Start returns the context unchanged
// and a non-recording span. The internal plane uses it, so that pushes, read-throughs and
// fetches made for a traced request are traced, while the background traffic of anti-entropy
// and bootstrap (a few calls per peer every sweep) does not open a trace of its own.
func ChildSpansOnly(tp trace.TracerProvider) trace.TracerProvider {
	return childOnlyProvider{tp: tp}
}

type childOnlyProvider struct {
	embedded.TracerProvider
	tp trace.TracerProvider
}

func (p childOnlyProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return childOnlyTracer{t: p.tp.Tracer(name, opts...)}
}

type childOnlyTracer struct {
	embedded.Tracer
	t trace.Tracer
}

func (t childOnlyTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ctx, trace.SpanFromContext(ctx)
	}
	return t.t.Start(ctx, name, opts...)
}
