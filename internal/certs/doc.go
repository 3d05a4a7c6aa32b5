// Package certs loads a certificate, its key and optionally a CA bundle from files, checks
// them, and reloads them when the files change, so TLS listeners rotate certificates (a
// cert-manager Secret rewritten in place) without a restart. The internal plane's mTLS and
// the public listeners' TLS both build their tls.Configs on it.
package certs
