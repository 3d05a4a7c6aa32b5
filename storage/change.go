package storage

import "go.opentelemetry.io/otel/trace"

// ChangeOp says what a committing write does.
type ChangeOp int

// The changes a store reports to its commit observer.
const (
	// ChangePut: an object was written (Created) or replaced (Replaced: a newer
	// last-writer-wins version, or a replicated immutable copy that is the cluster's first
	// writer).
	ChangePut ChangeOp = iota + 1
	// ChangeDeleteNamespace: a namespace was cleaned and its tombstone recorded.
	ChangeDeleteNamespace
)

// Change describes a committing write to whoever must act on it in the same batch: the
// replication seam between a store (storage/local reports it to its CommitObserver) and the
// outbox (which turns it into a queue entry). It lives here, beside the types it is made of,
// so that neither side imports the other.
type Change struct {
	Op ChangeOp
	// Info describes the stored object (ChangePut).
	Info Info
	// Replaced is true when the put replaced a stored body (ChangePut): a newer last-writer-wins
	// version, or, for an immutable kind, a replicated copy that wins by Replaces.
	// Filling an evicted stub is not a replacement.
	Replaced bool
	// Replicated is true when the caller supplied the version (PutOptions.Version or
	// DeleteNamespace's version): a write applied from a peer (push, anti-entropy,
	// read-through, repair) rather than one that originated here. The outbox forwards only
	// writes that originated here, so a replicated write is not echoed back around the
	// cluster.
	Replicated bool
	// Tenant and Namespace name the cleaned namespace (ChangeDeleteNamespace).
	Tenant, Namespace string
	// Version is the object's version (ChangePut) or the effective tombstone
	// (ChangeDeleteNamespace).
	Version Version
	// Trace is the span context of the commit (invalid when tracing is off), so that what
	// replicates the change later continues the write's trace.
	Trace trace.SpanContext
}
