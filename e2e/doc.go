// Package e2e holds Kura's black-box tests: real `kura` processes on loopback, driven over
// real protocols by the real clients (Nx, Metro, Gradle, Bazel) and by each other as a
// cluster, importing nothing of the server but its wire stubs, so the suite sees what an
// operator, a peer and a build tool see. How to run it: docs/e2e.md.
package e2e
