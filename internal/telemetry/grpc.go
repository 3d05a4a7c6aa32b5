package telemetry

import (
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/stats"
)

// otelgrpcOptions are the options every Kura gRPC stats handler shares: the injected provider,
// the W3C propagator, and no metrics (a no-op meter: the kura_grpc_* and kura_peer_* families
// already count calls, on the injected Prometheus registry).
func otelgrpcOptions(tp trace.TracerProvider) []otelgrpc.Option {
	return []otelgrpc.Option{
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithPropagators(Propagator()),
		otelgrpc.WithMeterProvider(metricnoop.NewMeterProvider()),
	}
}

// GRPCServerHandler opens a server span per call of a public gRPC server (the REAPI),
// continuing the client's traceparent metadata, or returns nil when tp does not trace. Health
// checks are not traced: load balancers probe every few seconds.
func GRPCServerHandler(tp trace.TracerProvider) stats.Handler {
	if !TracingEnabled(tp) {
		return nil
	}
	return otelgrpc.NewServerHandler(append(otelgrpcOptions(tp), otelgrpc.WithFilter(filters.Not(filters.HealthCheck())))...)
}

// InternalPlaneHandlers trace the internal plane between nodes: a client span for every call
// made inside a trace (a replication push, a read-through for a traced request), whose
// traceparent the peer's server span continues. Calls outside any trace (anti-entropy sweeps,
// bootstrap) open none on either side (see ChildSpansOnly). Both are nil when tp does not
// trace.
func InternalPlaneHandlers(tp trace.TracerProvider) (client, server stats.Handler) {
	if !TracingEnabled(tp) {
		return nil, nil
	}
	opts := otelgrpcOptions(ChildSpansOnly(tp))
	return otelgrpc.NewClientHandler(opts...), otelgrpc.NewServerHandler(opts...)
}
