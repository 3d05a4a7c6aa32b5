// Package harness starts real kura processes for black-box tests: it builds the binary once
// per test binary (Main), gives each node its own ports and data directory, and offers
// graceful stop, kill -9 and restart on the same directory. It is imported only by tests
// (the e2e suite and e2e/reliability).
package harness
