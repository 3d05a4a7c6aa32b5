// Package peerpb holds the generated protobuf and gRPC code of the internal plane
// (peer.proto). Regenerate with `go generate ./cluster/peer/peerpb` (needs protoc,
// protoc-gen-go and protoc-gen-go-grpc on PATH); the generated files are committed so
// builds and CI need neither.
package peerpb

//go:generate protoc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative peer.proto
