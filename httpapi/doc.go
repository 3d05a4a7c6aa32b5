// Package httpapi is Kura's public HTTP front end: one echo server for every client protocol
// of docs/contract.md §3 plus /up and /metrics, turning requests into storage calls after asking the
// Guard. Parsing, limits, streaming and the one error-to-status mapping are shared so every
// protocol behaves the same at the edges. Design notes: docs/httpapi.md.
package httpapi
