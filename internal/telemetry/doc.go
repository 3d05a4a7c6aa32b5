// Package telemetry builds the process-wide observability plumbing that internal/app injects
// everywhere else: the structured slog logger on stdout (whose handler adds the request id and
// trace correlation fields of a record's context), the Prometheus registry (never the global
// one) with the Go runtime, process and kura_node_info collectors, and the OpenTelemetry
// tracer provider (a no-op one when tracing is off). It also defines the request-id context
// value and header names the front ends share. It imports nothing from Kura, so every package
// may depend on what it returns without cycles.
package telemetry
