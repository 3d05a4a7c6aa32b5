// Package antientropy makes a node converge with its peers whatever pushes were lost:
// periodic range-digest sweeps pull what is missing or newer, a new node bootstraps the same
// way, corrupt records reported on the store's Corrupted channel are re-fetched, and the
// ReadThrough serves local misses (and FindMissing) from peers. Design notes:
// docs/replication.md.
package antientropy
