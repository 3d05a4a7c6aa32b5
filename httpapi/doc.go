// Package httpapi is Kura's public HTTP front end: one echo server that speaks every client
// protocol of docs/contract.md §3 (Xcode CAS, keyvalue, Gradle, module multipart, Nx, Bazel's HTTP cache,
// Metro, namespace clean) plus /up and /metrics, and turns each request into calls on the
// storage.Store and storage.Multipart interfaces after asking the Guard whether it may proceed;
// successful Xcode CAS and Gradle transfers are reported to an optional EventRecorder
// (the analytics webhooks).
//
// Each surface lives in its own file; request parsing, the Guard call, body limits, the
// streaming read path and the single storage-error-to-status mapping (errors.go) are shared so
// every protocol behaves the same way at the edges. Request bodies are never buffered whole
// except keyvalue documents and multipart completion lists, which are read under a hard cap.
//
// The outermost middleware (tracing.go) gives every request its x-request-id and puts it in
// the request's context, which every log line of the request is written with; with a tracer
// provider it also continues the client's traceparent in a server span named after the route
// pattern. /up and /metrics get ids but no spans, so probes and scrapes do not fill the
// tracing backend.
package httpapi
