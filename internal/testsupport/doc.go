// Package testsupport holds what tests of several packages share: bounded polling waits, a
// settable clock, a log sink that goroutines may write to while a test reads it, counting and
// pattern readers, fake file trees, a throwaway certificate authority, an OTLP/HTTP traces
// receiver that decodes what a node exports, and an internal-plane peer that never answers.
// It is imported only by tests, so any package's tests (and storage/storagetest) can use it.
package testsupport
