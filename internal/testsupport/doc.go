// Package testsupport holds what tests of several packages share: a settable clock, a log
// sink that goroutines may write to while a test reads it, and a throwaway certificate
// authority. It is imported only by tests.
package testsupport
