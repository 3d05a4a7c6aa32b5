// Package reliability is the failure suite: real kura processes on loopback (or in network
// namespaces it creates) are crashed, partitioned, corrupted and attacked, and each guarantee
// is reported as a figure (internal/testsupport/figures) that table prints as one table.
// The default is the short mode CI runs; KURA_RELIABILITY_LONG=1 (`task reliability`) runs
// the full sizes. Design notes and the list of guarantees are in docs/reliability.md.
package reliability
