// Package e2e holds Kura's black-box tests: they build the real `kura` binary once, start
// nodes as separate processes on loopback ports with fresh data directories, and drive them
// over real HTTP with the real third-party clients (Nx, Metro, Gradle, Bazel), plus crash and
// restart checks, and several nodes as a cluster. Nothing here imports the server's packages
// except the generated wire stubs a peer or a REAPI client would use (the internal plane's
// peerpb, the REAPI protos), so the suite sees exactly what an operator, a peer and a build
// tool see.
//
// Run it with `go test ./e2e/` (or scripts/test). `-short` skips it. A test whose client is
// not installed (scripts/install-test-deps installs them all) is skipped locally and fails
// when CI=true or KURA_E2E_REQUIRE_CLIENTS=1. KURA_E2E_BINARY=/path/to/kura tests a prebuilt
// binary instead of building one; KURA_E2E_RACE=1 or 0 forces the race detector on or off in
// that build (default: on when the tests themselves run with -race).
// KURA_E2E_CLUSTER_LARGE=1 makes the cluster restart and bootstrap tests use 10,000 writes
// (the figures in the README) instead of 500.
package e2e
