// Package storagetest holds what every storage implementation is checked against: Memory, an
// in-memory Store and Multipart used by front-end unit tests, and the conformance suite
// (RunStoreSuite, RunMultipartSuite) that every Store, Multipart and decorator must pass.
package storagetest
