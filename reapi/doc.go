// Package reapi serves the Bazel Remote Execution API v2 cache services (Capabilities,
// ContentAddressableStorage, ActionCache, ByteStream, plus gRPC health and reflection) on top
// of storage.Store. Blobs are storage.KindCAS objects named by their lowercase hex SHA-256 and
// action results storage.KindAC objects named by the action digest's hash, exactly as the Bazel
// HTTP cache in httpapi names them, so both protocols share one cache; the namespace is the
// instance name ("default" when empty) and the tenant is the configured one.
//
// Design notes, for the choices the REAPI leaves to servers:
//
//   - Request ids, panic recovery, the kura_grpc_* request metrics and the call's log line
//     are the first interceptors of (*Server).ServerOptions (the package-level ServerOptions
//     only sees the Config, while the metrics belong on the Deps' Registerer), so every call
//     is counted alike, unary or streaming, including those a draining node or the policy
//     refuses. A unary request message gRPC cannot receive (over the receive limit, say) is
//     refused by grpc-go before any interceptor runs, and is not counted.
//   - Uploads are not resumable: a ByteStream Write streams straight into Store.Put, which
//     hashes and verifies before it commits, so nothing partial is kept. A first write_offset
//     other than 0 is INVALID_ARGUMENT and QueryWriteStatus answers NOT_FOUND for anything that
//     is not a complete blob. Bazel restarts failed uploads from offset 0, which is all it needs.
//   - A stream closed without finish_write ends the data: the store then checks the size and
//     hash, so a short upload fails with INVALID_ARGUMENT and nothing is stored.
//   - Compressed reads honour read_offset (in uncompressed bytes, as the REAPI says) by
//     compressing the blob's tail; read_limit must be 0 for them (the REAPI requires it).
//   - FindMissingBlobs and the ActionCache completeness check look blobs up by hash only (the
//     size is not part of a CAS name); a hash stored with another size is answered NOT_FOUND
//     when it is read. This keeps FindMissingBlobs one batched call of Deps.Store.FindMissing.
//     In a node that store is the cluster's read-through: it answers locally and asks the
//     live peers only about the digests missing here, in one batched call per peer under a
//     short deadline (antientropy.DefaultFindTimeout), so a blob a peer holds is neither
//     uploaded again nor turns an action-cache hit into a miss; a slow or dead peer leaves
//     the local answer. Without peers it is the local call and nothing more.
//   - Writes and the write path's existence checks (ByteStream Write's "already here",
//     QueryWriteStatus, BatchUpdateBlobs, UpdateActionResult) go to Deps.Local, this node's
//     store alone: an upload never waits on a peer.
//   - The ContentAddressableStorage chunking RPCs (SplitBlob, SpliceBlob, GetChunkMapping,
//     RegisterChunkMapping) answer UNIMPLEMENTED, as the REAPI prescribes for servers whose
//     capabilities do not advertise split or splice support.
//   - Artifact metrics (the kura_artifact_* families shared with httpapi, client "bazel")
//     count the blobs and action results clients asked for (ByteStream, batch items,
//     ActionCache); the server's own look-ups (GetTree directories, completeness checks) are
//     not artifact reads, and requests the client cancelled are left to
//     kura_grpc_requests_total.
//   - Every call gets a request id (the client's x-request-id metadata when sane, else a new
//     one), sent back as header metadata and carried in the context every log line of the
//     call is written with. With a tracer provider, the otelgrpc stats handler of
//     (*Server).ServerOptions opens a server span per call under the client's traceparent;
//     health checks are not traced.
//   - Errors become gRPC codes in one place (codeOf in errors.go): malformed input is
//     INVALID_ARGUMENT, storage.ErrNotFound and ErrCorrupt NOT_FOUND, ErrInsufficientStorage
//     and ErrBusy (the file-descriptor pool is exhausted) RESOURCE_EXHAUSTED, ErrUnavailable
//     UNAVAILABLE, a read_offset outside the blob
//     OUT_OF_RANGE (ByteStream's own rule). A batch over the advertised limit is
//     INVALID_ARGUMENT; a message over the gRPC receive limit is refused by gRPC itself with
//     RESOURCE_EXHAUSTED before it is decoded.
package reapi
