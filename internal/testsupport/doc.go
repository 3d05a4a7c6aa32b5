// Package testsupport holds what tests of several packages share: a settable clock and a log
// sink that goroutines may write to while a test reads it. It is imported only by tests.
package testsupport
