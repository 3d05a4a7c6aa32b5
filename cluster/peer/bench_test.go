package peer

import (
	"bytes"
	"fmt"
	"io"
	"testing"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
)

// BenchmarkPush measures replication pushes of 4 MiB objects into the disk store over
// loopback (each one fsynced and committed on the receiver), plaintext and mTLS.
func BenchmarkPush(b *testing.B) {
	for _, mode := range []string{"plaintext", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			scfg, ccfg := benchTLS(b, mode)
			p := startPlane(b, diskStore(b), scfg, ccfg)
			body := bytes.Repeat([]byte("kura"), 1<<20)
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for i := range b.N {
				info := infoFor(key(storage.KindGradle, fmt.Sprintf("bench-%d", i)), body, version(i+1))
				if applied, err := p.client.PushObject(testCtx(b), p.addr, info, bytes.NewReader(body)); err != nil || !applied {
					b.Fatalf("push: %v %v", applied, err)
				}
			}
		})
	}
}

// BenchmarkFetch measures fetching (and verifying) a 4 MiB object from the disk store.
func BenchmarkFetch(b *testing.B) {
	for _, mode := range []string{"plaintext", "mtls"} {
		b.Run(mode, func(b *testing.B) {
			scfg, ccfg := benchTLS(b, mode)
			p := startPlane(b, diskStore(b), scfg, ccfg)
			body := bytes.Repeat([]byte("kura"), 1<<20)
			info := infoFor(key(storage.KindGradle, "bench"), body, version(1))
			if _, err := p.client.PushObject(testCtx(b), p.addr, info, bytes.NewReader(body)); err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(len(body)))
			b.ResetTimer()
			for range b.N {
				r, err := p.client.FetchObject(testCtx(b), p.addr, info.Key)
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, r); err != nil || n != int64(len(body)) {
					b.Fatalf("fetch: %d bytes, %v", n, err)
				}
				_ = r.Close()
			}
		})
	}
}

func benchTLS(b *testing.B, mode string) (ServerConfig, ClientConfig) {
	if mode != "mtls" {
		return ServerConfig{}, ClientConfig{}
	}
	dir := b.TempDir()
	ca := testsupport.NewCA(b, "cluster")
	caPath := testsupport.WriteFile(b, dir, "cluster-ca.pem", ca.PEM)
	cert, key := ca.Issue(b, "node").WriteFiles(b, dir, "node")
	s, c := mustLoadTLS(b, caPath, cert, key)
	return ServerConfig{TLS: s}, ClientConfig{TLS: c}
}
