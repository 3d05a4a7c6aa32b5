// Package load is the load-generating half of the benchmarks: a runner that drives N workers
// for a fixed time and collects latencies, a cheap generator of unique blobs, and the REAPI
// scenarios. bench/reapi (one server, many concurrency levels) and bench/suite (Kura and
// bazel-remote side by side, plus HTTP, replication and restart) both use it.
//
// The load generator shares the machine's cores with the server under test, so it is built to
// stay out of the way: each worker reuses its buffers, blob digests cost hashing 32 bytes
// (BlobGen), and latencies go into per-worker slices merged once at the end.
package load
