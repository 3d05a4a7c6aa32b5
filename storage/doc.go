// Package storage defines what every front end and store relies on: object identities, the
// Store and Multipart interfaces, the hybrid logical clock that versions every write, the
// conflict rule every node applies to copies of one key (Replaces), the Change record of the
// replication seam and the sentinel errors each protocol maps in one place. Implementations:
// storage/local (the disk), storage/storagetest (a fake and the conformance suite).
package storage
