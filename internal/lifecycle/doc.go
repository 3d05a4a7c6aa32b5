// Package lifecycle is a node's traffic state (joining → serving → draining) and the count of
// requests in flight that a drain waits for. The front ends consult it on every request: a
// draining node refuses new work with a retryable answer while what it already accepted
// finishes; internal/app drives the transitions.
package lifecycle
