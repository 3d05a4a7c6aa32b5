// Package fdpool is the one budget of file descriptors (KURA_FILE_DESCRIPTOR_POOL_SIZE) that
// every file the store opens checks out of. Without it, descriptor pressure surfaces as EMFILE
// at a random open, in a request or in background work alike; with it, a checkout waits
// briefly and then fails with storage.ErrBusy (503 / RESOURCE_EXHAUSTED), shedding load where
// it can be answered. Design notes: docs/fdpool.md.
package fdpool
