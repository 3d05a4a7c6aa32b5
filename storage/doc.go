// Package storage defines what every Kura front end (HTTP surfaces, REAPI) relies on to keep
// and serve artifacts: object identities (tenant, namespace, kind, name), the Store and
// Multipart interfaces, the hybrid logical clock that versions every write, the conflict rule
// every node applies to copies of one key (Replaces), and the sentinel
// errors that each protocol maps to its own status codes in exactly one place.
//
// Implementations live in sub-packages: storage/local is the node's own disk (segment files
// plus Pebble metadata); storage/storagetest holds an in-memory fake and the conformance suite
// every implementation and decorator must pass.
package storage
