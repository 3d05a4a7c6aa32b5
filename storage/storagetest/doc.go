// Package storagetest holds what every storage implementation is checked against: Memory, an
// in-memory Store, Multipart and Index used by front-end unit tests, and the conformance suite
// (RunStoreSuite, RunMultipartSuite, RunIndexSuite) that every Store, Multipart, Index and
// decorator must pass.
package storagetest
