// Package analytics reports Xcode CAS and Gradle transfers to an analytics server as signed,
// batched webhooks (docs/contract.md §9). Recording never blocks and delivery is best effort, with
// bounded queues and a circuit breaker, so an analytics outage costs a node neither memory nor
// request latency. Design notes: docs/analytics.md.
package analytics
