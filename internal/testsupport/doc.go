// Package testsupport holds what tests of several packages share: a settable clock, a log
// sink that goroutines may write to while a test reads it, a throwaway certificate authority,
// an OTLP/HTTP traces receiver that decodes what a node exports, and an internal-plane peer
// that never answers. It is imported only by tests.
package testsupport
