// Package app is Kura's one composition root: from a validated config.Config it opens the
// local store, builds the HTTP and gRPC front ends around it, and owns every long-running
// actor's lifecycle in one oklog/run group, so shutdown is a single ordered drain (stop
// accepting, finish in-flight requests, then close Pebble). No other package imports it.
package app
