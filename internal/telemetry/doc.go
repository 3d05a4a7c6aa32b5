// Package telemetry builds the observability plumbing internal/app injects everywhere: the
// slog logger (with request-id and trace fields from the context), a Prometheus registry that
// is never the global one, and the OpenTelemetry tracer provider (no-op when off). It imports
// nothing from Kura, so any package may depend on it without cycles.
package telemetry
