package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kuracache/kura/internal/testsupport"
)

// publicTLSNode starts a node serving HTTPS and gRPC over TLS with a certificate of ca for
// 127.0.0.1; clientCA, when set, makes client certificates required.
func publicTLSNode(t *testing.T, ca *testsupport.CA, clientCA string, clientCert *tls.Certificate) (*Node, string, string) {
	t.Helper()
	dir := t.TempDir()
	leaf := ca.Issue(t, "kura-v1")
	certPath := testsupport.WriteFile(t, dir, "tls.crt", leaf.CertPEM)
	keyPath := testsupport.WriteFile(t, dir, "tls.key", leaf.KeyPEM)
	env := map[string]string{"KURA_PUBLIC_TLS_CERT_PATH": certPath, "KURA_PUBLIC_TLS_KEY_PATH": keyPath}
	clientTLS := &tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		env["KURA_PUBLIC_TLS_CLIENT_CA_PATH"] = clientCA
		clientTLS.Certificates = []tls.Certificate{*clientCert}
	}
	return StartNode(t, NodeOptions{Env: env, ClientTLS: clientTLS}), certPath, keyPath
}

// TestPublicTLS: HTTPS on KURA_PORT (curl --cacert), TLS on KURA_GRPC_PORT, a certificate
// rotated in place is served without a restart, and with a client CA a client without a
// certificate is refused.
func TestPublicTLS(t *testing.T) {
	t.Parallel()
	curl := requireCommand(t, "curl")
	ca := t.TempDir()
	authority := testsupport.NewCA(t, "kura e2e public CA")
	caPath := testsupport.WriteFile(t, ca, "ca.pem", authority.PEM)
	node, certPath, keyPath := publicTLSNode(t, authority, "", nil)
	if !strings.HasPrefix(node.URL(), "https://") {
		t.Fatalf("node URL %s", node.URL())
	}

	out := runClient(t, ca, clientEnv(), curl, "-sS", "--fail", "--cacert", caPath, node.URL()+"/up")
	if !strings.Contains(out, `"status":"ok"`) {
		t.Fatalf("curl --cacert %s/up: %s", node.URL(), out)
	}
	upload := runClient(t, ca, clientEnv(), curl, "-sS", "--fail", "--cacert", caPath, "-X", "PUT", "--data-binary", "over https",
		"-H", "Content-Type: application/octet-stream", node.URL()+"/v1/cache/4242", "-w", "%{http_code}")
	if !strings.HasSuffix(strings.TrimSpace(upload), "200") {
		t.Fatalf("PUT over https: %s", upload)
	}
	if out, err := runClientErr(t, ca, clientEnv(), curl, "-sS", "--fail", node.URL()+"/up"); err == nil {
		t.Fatalf("curl without the CA trusted a certificate it cannot verify: %s", out)
	}
	// Plain HTTP on the TLS port is answered only with Go's 400 "Client sent an HTTP request
	// to an HTTPS server", never served.
	if resp, err := http.Get("http://" + node.HTTPAddr() + "/up"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("plain HTTP on the TLS port: %d", resp.StatusCode)
		}
	}

	// gRPC over TLS.
	conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: authority.Pool})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{}); err != nil {
		t.Fatalf("GetCapabilities over TLS: %v", err)
	}

	// Rotation in place, as a Secret update does it.
	next := authority.Issue(t, "kura-v2")
	for path, data := range map[string][]byte{certPath: next.CertPEM, keyPath: next.KeyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	PollUntil(t, 30*time.Second, "the rotated certificate to be served", func() (bool, string) {
		cn := servedCommonName(t, node.HTTPAddr(), authority.Pool)
		return cn == "kura-v2", "serving " + cn
	})
	figure(t, "a certificate rotated in place was served %v later, without a restart", time.Since(start).Round(100*time.Millisecond))
}

func servedCommonName(t *testing.T, addr string, roots *x509.CertPool) string {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1"})
	if err != nil {
		return err.Error()
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Subject.CommonName
}

// TestPublicTLSClientCertificates: with KURA_PUBLIC_TLS_CLIENT_CA_PATH, HTTP and gRPC clients
// without a certificate of that CA are refused at the handshake.
func TestPublicTLSClientCertificates(t *testing.T) {
	t.Parallel()
	curl := requireCommand(t, "curl")
	dir := t.TempDir()
	serverCA := testsupport.NewCA(t, "kura e2e server CA")
	clientCA := testsupport.NewCA(t, "kura e2e client CA")
	client := clientCA.Issue(t, "ci-runner")
	stranger := testsupport.NewCA(t, "someone else").Issue(t, "stranger")
	node, _, _ := publicTLSNode(t, serverCA, testsupport.WriteFile(t, dir, "client-ca.pem", clientCA.PEM), &client.TLS)
	caPath := testsupport.WriteFile(t, dir, "ca.pem", serverCA.PEM)
	certPath := testsupport.WriteFile(t, dir, "client.crt", client.CertPEM)
	keyPath := testsupport.WriteFile(t, dir, "client.key", client.KeyPEM)

	if out, err := runClientErr(t, dir, clientEnv(), curl, "-sS", "--fail", "--cacert", caPath, node.URL()+"/up"); err == nil {
		t.Fatalf("curl without a client certificate was served: %s", out)
	}
	strangerCert := testsupport.WriteFile(t, dir, "stranger.crt", stranger.CertPEM)
	strangerKey := testsupport.WriteFile(t, dir, "stranger.key", stranger.KeyPEM)
	if out, err := runClientErr(t, dir, clientEnv(), curl, "-sS", "--fail", "--cacert", caPath,
		"--cert", strangerCert, "--key", strangerKey, node.URL()+"/up"); err == nil {
		t.Fatalf("a certificate of another CA was accepted: %s", out)
	}
	out := runClient(t, dir, clientEnv(), curl, "-sS", "--fail", "--cacert", caPath, "--cert", certPath, "--key", keyPath, node.URL()+"/up")
	if !strings.Contains(out, `"status":"ok"`) {
		t.Fatalf("with the client certificate: %s", out)
	}
	for name, certs := range map[string][]tls.Certificate{"no certificate": nil, "the client's": {client.TLS}} {
		conn, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: serverCA.Pool, Certificates: certs})))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_, err = repb.NewCapabilitiesClient(conn).GetCapabilities(ctx, &repb.GetCapabilitiesRequest{})
		cancel()
		conn.Close()
		if (err == nil) != (certs != nil) {
			t.Fatalf("gRPC with %s: %v", name, err)
		}
	}
}

// TestBazelHTTPSCache: Bazel 4.2 against --remote_cache=https://… fills the cache and then gets
// every action from it. In 4.2 --tls_certificate only applies to gRPC, so Bazel trusts the CA
// through a JVM trust store, as a company CA is usually trusted.
func TestBazelHTTPSCache(t *testing.T) {
	t.Parallel()
	keytool := requireCommand(t, "keytool")
	ws := newBazelWorkspace(t)
	authority := testsupport.NewCA(t, "kura e2e bazel CA")
	dir := t.TempDir()
	caPath := testsupport.WriteFile(t, dir, "ca.pem", authority.PEM)
	trustStore := filepath.Join(dir, "trust.jks")
	runClient(t, dir, clientEnv(), keytool, "-importcert", "-noprompt", "-alias", "kura", "-file", caPath,
		"-keystore", trustStore, "-storepass", "changeit")
	ws.startupFlags = []string{"--host_jvm_args=-Djavax.net.ssl.trustStore=" + trustStore,
		"--host_jvm_args=-Djavax.net.ssl.trustStorePassword=changeit"}
	node, _, _ := publicTLSNode(t, authority, "", nil)
	filled := ws.build(node.URL())
	checkNoRemoteHits(t, filled)
	ws.clean()
	hits := ws.build(node.URL())
	checkAllRemoteHits(t, filled, hits)
	figure(t, "bazel over https: %d/%d remote cache hits", hits.RemoteHits(), len(hits.Spawns))
}

// debianBazelLibraryPath is the java.library.path Debian's Bazel gives its server JVM (its
// install base); a --host_jvm_args that sets the property must keep it first.
const debianBazelLibraryPath = "/usr/share/bazel/"

// tcnativeDir returns a directory holding Debian's netty-tcnative JNI library under the name
// netty looks for. Debian's Bazel 4.2 has no ALPN of its own: its netty was built without the
// JDK ALPN code ("JDK provider does not support ALPN protocol"), so TLS gRPC needs netty's
// OpenSSL engine, which is the libnetty-tcnative-jni package. netty loads it only as
// libnetty_tcnative.so and refuses a symlink (it checks the resolved file name), hence a copy.
func tcnativeDir(t *testing.T) string {
	t.Helper()
	matches, _ := filepath.Glob("/usr/lib/*/jni/libnetty-tcnative.so")
	if len(matches) == 0 {
		missingClient(t, "libnetty-tcnative-jni is not installed (Debian's Bazel needs it for grpcs://)")
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "libnetty_tcnative.so"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBazelGRPCSCache: Bazel 4.2 against --remote_cache=grpcs://… with --tls_certificate fills
// the cache over TLS and then gets every action from it; without --tls_certificate the same
// build cannot connect, so the CA really is what Bazel verified the node with.
func TestBazelGRPCSCache(t *testing.T) {
	t.Parallel()
	ws := newBazelWorkspace(t)
	ws.startupFlags = []string{"--host_jvm_args=-Djava.library.path=" + debianBazelLibraryPath + ":" + tcnativeDir(t)}
	authority := testsupport.NewCA(t, "kura e2e bazel grpcs CA")
	caPath := testsupport.WriteFile(t, t.TempDir(), "ca.pem", authority.PEM)
	node, _, _ := publicTLSNode(t, authority, "", nil)
	remote := "grpcs://" + node.GRPCAddr()

	out, err := ws.tryBuild(remote, "--remote_timeout=10")
	if err == nil {
		t.Fatalf("bazel trusted the node without --tls_certificate:\n%s", out)
	}
	// The refusal must be the handshake (OpenSSL's engine rejecting the unknown CA), not a TLS
	// stack that failed to load ("JDK provider does not support ALPN protocol").
	if !strings.Contains(out, "OpenSslEngine problem") && !strings.Contains(out, "PKIX path building failed") {
		t.Fatalf("bazel without --tls_certificate failed, but not on the certificate: %v\n%s", err, out)
	}
	filled := ws.build(remote, "--tls_certificate="+caPath)
	checkNoRemoteHits(t, filled)
	ws.clean()
	hits := ws.build(remote, "--tls_certificate="+caPath)
	checkAllRemoteHits(t, filled, hits)
	figure(t, "bazel over grpcs: %d/%d remote cache hits", hits.RemoteHits(), len(hits.Spawns))
}
