// Package telemetry builds the process-wide observability plumbing that internal/app injects
// everywhere else: the structured slog logger on stdout and the Prometheus registry (never the
// global one) with the Go runtime, process and kura_node_info collectors. It imports nothing
// from Kura, so every package may depend on what it returns without cycles.
package telemetry
