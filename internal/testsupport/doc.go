// Package testsupport holds what tests of several packages share: bounded polling waits, a
// settable clock, a log sink that goroutines may write to while a test reads it, counting and
// pattern readers, a throwaway certificate authority, and an OTLP/HTTP traces receiver that
// decodes what a node exports. It is imported only by tests, and imports no Kura package, so
// any package's tests (and storage/storagetest) can use it without an import cycle.
package testsupport
