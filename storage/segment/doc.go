// Package segment stores blob bodies in append-only segment files, each record footer-framed
// with a CRC per 64 KiB block and the body's SHA-256, and hands back its Location. Appending
// with group commit makes a small write cost a share of one fdatasync, a footer lets a body of
// unknown length stream in, and per-block checks mean no corrupt byte is ever served. A record
// checked whole is remembered for a while (verified.go), so hot large reads skip the checks
// and can go out with sendfile while the file is provably unchanged. Record format,
// durability and the verified-record rule: docs/segments.md.
package segment
