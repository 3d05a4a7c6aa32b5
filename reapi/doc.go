// Package reapi serves the Bazel Remote Execution API v2 cache services (Capabilities, CAS,
// ActionCache, ByteStream, health, reflection) over storage.Store, naming blobs and action
// results exactly as the Bazel HTTP cache in httpapi does, so both protocols share one cache.
// The choices the REAPI leaves to servers are in docs/reapi.md.
package reapi
