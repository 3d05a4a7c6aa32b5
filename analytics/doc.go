// Package analytics reports Xcode CAS and Gradle cache transfers to an analytics server as
// signed, batched webhooks (docs/contract.md §9). Record is called on the request path and never blocks:
// each pipeline has a bounded in-memory queue that drops (and counts) what does not fit, and
// one goroutine per pipeline, owned by Run, batches the queue and POSTs it.
//
// Delivery is best effort by design: a failed batch is counted and dropped, never retried, and
// a per-pipeline circuit breaker stops sending to a server that keeps failing, so an
// analytics outage costs a node neither memory nor request latency.
package analytics
