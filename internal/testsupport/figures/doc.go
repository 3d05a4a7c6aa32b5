// Package figures records the reliability suite's measured results: each test reports a
// figure (which guarantee, what was measured, the value, what it must be) to its log and,
// when KURA_RELIABILITY_REPORT names a file, as one JSON line there, so tests in several
// packages and processes add to one table that e2e/reliability/table prints.
package figures
