// Package config turns the process environment (every KURA_* variable) into one validated,
// typed Config: listeners, identity, storage paths, cluster seeds and secrets, the runtime
// budgets derived from the host, observability, extension and analytics settings. Load
// reports every problem at once, each naming its variable, so an operator fixes a bad
// deployment in one round trip; Usage is the body of `kura --help`.
//
// Runtime budgets follow the original Kura README's rules (docs/contract.md §6) from a Host description
// (RLIMIT_NOFILE, cgroup v2/v1 or physical memory, CPU count). Two constants are ours:
// usable_fds = RLIMIT_NOFILE − ReservedFileDescriptors (128), the headroom kept outside the
// FD pool and the metadata store for stdio, the four listeners, gossip's UDP socket, the
// data-dir lock, DNS lookups and idle client and peer connections; and when RLIMIT_NOFILE
// cannot be read the conservative host default FallbackFileDescriptorLimit (1024, the usual
// Linux soft limit) is assumed. Go raises the soft RLIMIT_NOFILE to the hard limit at
// startup, so the soft value read here is what the process can really use.
//
// Load creates the data and tmp directories (to prove they can be created) but does not
// lock the data directory: the storage layer takes that lock when it opens the store.
package config
