package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestManyProblemsReportedTogether sets many bad variables at once: every one must be
// reported, named, in a single error, and nothing else may be blamed.
func TestManyProblemsReportedTogether(t *testing.T) {
	dir := t.TempDir()
	aFile := writeFile(t, "not-a-dir", "x")
	ca := writeFile(t, "ca.pem", "ca")
	environ := []string{
		"KURA_PORT=abc",
		"KURA_GRPC_PORT=70000",
		"KURA_GOSSIP_PORT=7443", // collides with the default internal port
		"KURA_BIND_ADDRESS=localhost",
		"KURA_TENANT_ID=acme corp",
		"KURA_NODE_URL=ftp://node",
		"KURA_DATA_DIR=" + filepath.Join(aFile, "data"),
		"KURA_TMP_DIR=" + filepath.Join(dir, "tmp"),
		"KURA_MAX_KEYVALUE_BYTES=0",
		"KURA_MAX_XCODE_BYTES=-5",
		"KURA_PEERS=good:1,bad:port",
		"KURA_DISCOVERY_DNS_NAME=not a name",
		"KURA_GOSSIP_KEY=c2hvcnQ=",
		"KURA_INTERNAL_TLS_CA_CERT_PATH=" + ca,
		"KURA_FILE_DESCRIPTOR_POOL_SIZE=100",
		"KURA_SEGMENT_HANDLE_CACHE_SIZE=100",
		"KURA_MEMORY_SOFT_LIMIT_BYTES=2GiB",
		"KURA_MEMORY_HARD_LIMIT_BYTES=1GiB",
		"KURA_METADATA_STORE_MAX_BACKGROUND_JOBS=0",
		"KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS=soon",
		"KURA_LOG_LEVEL=verbose",
		"KURA_LOG_FORMAT=xml",
		"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector:4318",
		"KURA_EXTENSION_ENABLED=true",
		"KURA_EXTENSION_HOOK_TIMEOUT_MS=0",
		"KURA_EXTENSION_FAIL_CLOSED_AUTHORIZE=maybe",
		"KURA_EXTENSION_SIGNER_S_ALGORITHM=rsa",
		"KURA_EXTENSION_JWT_VERIFIER_J_ISSUER=tuist",
		"KURA_EXTENSION_HTTP_CLIENT_H_BASE_URL=nope",
		"KURA_ANALYTICS_SIGNING_KEY=key",
		"KURA_ANALYTICS_BATCH_SIZE=0",
	}
	want := []struct{ variable, message string }{
		{EnvBindAddress, `"localhost" is not an IP address`},
		{EnvPort, `"abc" is not a port number (1..65535)`},
		{EnvGRPCPort, `"70000" is not a port number (1..65535)`},
		{EnvInternalPort, "port 7443 is already KURA_GOSSIP_PORT's; every listener needs its own port"},
		{EnvTenantID, `"acme corp" contains whitespace`},
		{EnvNodeURL, `"ftp://node" must be an http:// or https:// URL`},
		{EnvDataDir, "cannot create the directory"},
		{EnvMaxKeyValueBytes, "must be at least 1 byte, got 0 bytes"},
		{EnvMaxXcodeBytes, "must be at least 1 byte, got -5 bytes"},
		{EnvPeers, `entry 2 "bad:port": port "port" is not a port number`},
		{EnvDiscoveryDNSName, `"not a name" is not a valid DNS name`},
		{EnvGossipKey, "decodes to 5 bytes"},
		{EnvInternalTLSCert, "must be set because KURA_INTERNAL_TLS_CA_CERT_PATH is: internal mTLS needs all three"},
		{EnvInternalTLSKey, "must be set because KURA_INTERNAL_TLS_CA_CERT_PATH is"},
		{EnvFDAcquireTimeoutMS, `"soon" is not a whole number of milliseconds`},
		{EnvMetaMaxBGJobs, "must be at least 1, got 0"},
		{EnvSegmentHandleCache, "100 must be below KURA_FILE_DESCRIPTOR_POOL_SIZE 100"},
		{EnvMemorySoftLimit, "2 GiB is above KURA_MEMORY_HARD_LIMIT_BYTES 1 GiB"},
		{EnvOTelEndpoint, "must be an http:// or https:// URL"},
		{EnvLogLevel, `"verbose" is not a log level (debug, info, warn, error)`},
		{EnvLogFormat, `"xml" is not a log format (json, text)`},
		{EnvExtensionScriptPath, "required when KURA_EXTENSION_ENABLED is true"},
		{EnvExtensionHookTimeoutMS, "must be at least 1 millisecond, got 0"},
		{EnvExtensionFailClosedAuthz, `"maybe" is not a boolean`},
		{"KURA_EXTENSION_SIGNER_S_ALGORITHM", `unsupported signer algorithm "rsa"`},
		{"KURA_EXTENSION_SIGNER_S_SECRET", "required because KURA_EXTENSION_SIGNER_S_ALGORITHM is set"},
		{"KURA_EXTENSION_JWT_VERIFIER_J_SECRET", "required for HS256 because KURA_EXTENSION_JWT_VERIFIER_J_ISSUER is set"},
		{"KURA_EXTENSION_HTTP_CLIENT_H_BASE_URL", `"nope" must be an http:// or https:// URL`},
		{EnvAnalyticsServerURL, "must be set because KURA_ANALYTICS_SIGNING_KEY is (analytics need both or neither)"},
		{EnvAnalyticsBatchSize, "must be at least 1, got 0"},
	}
	problems := loadProblems(t, environ)
	_, err := LoadWith(environ, hermetic())
	text := err.Error()
	if !strings.HasPrefix(text, fmt.Sprintf("invalid configuration (%d problems):", len(want))) {
		t.Errorf("error header: %q", strings.SplitN(text, "\n", 2)[0])
	}
	for _, w := range want {
		found := false
		for _, p := range problems {
			if p.Variable == w.variable && strings.Contains(p.Message, w.message) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem %s: …%s…", w.variable, w.message)
		}
		if !strings.Contains(text, "\n  "+w.variable+": ") {
			t.Errorf("error text does not name %s", w.variable)
		}
	}
	if len(problems) != len(want) {
		t.Errorf("%d problems, want %d:\n%s", len(problems), len(want), text)
	}
	t.Logf("the operator sees:\n%s", text)
}

// TestInvalidValues checks one bad variable at a time: exactly one problem, naming it.
func TestInvalidValues(t *testing.T) {
	aFile := writeFile(t, "plain-file", "x")
	dirNotFile := t.TempDir()
	tests := []struct {
		name     string
		kv       []string
		variable string
		message  string
	}{
		{"port zero", []string{"KURA_PORT=0"}, EnvPort, `"0" is not a port number (1..65535)`},
		{"DNS server without a port", []string{"KURA_DISCOVERY_DNS_SERVER=127.0.0.1"}, EnvDiscoveryDNSServer, "is not host:port"},
		{"rejoin interval too short", []string{"KURA_GOSSIP_REJOIN_INTERVAL_MS=5"}, EnvRejoinIntervalMS, "must be at least 100"},
		{"anti-entropy interval not a number", []string{"KURA_ANTI_ENTROPY_INTERVAL_MS=soon"}, EnvAntiEntropyIntervalMS, "is not a whole number"},
		{"outbox drop-after too short", []string{"KURA_OUTBOX_DROP_AFTER_MS=10"}, EnvOutboxDropAfterMS, "must be at least 1000"},
		{"port negative", []string{"KURA_INTERNAL_PORT=-1"}, EnvInternalPort, "is not a port number"},
		{"port 65536", []string{"KURA_GOSSIP_PORT=65536"}, EnvGossipPort, "is not a port number"},
		{"http and grpc share a port", []string{"KURA_GRPC_PORT=4000"}, EnvGRPCPort, "port 4000 is already KURA_PORT's"},
		{"gossip and http share a port", []string{"KURA_PORT=7946"}, EnvGossipPort, "port 7946 is already KURA_PORT's"},
		{"pprof without a port", []string{"KURA_PPROF_ADDRESS=127.0.0.1"}, EnvPprofAddress, "is not ip:port"},
		{"pprof on a hostname", []string{"KURA_PPROF_ADDRESS=localhost:6060"}, EnvPprofAddress, "the host must be an IP address"},
		{"pprof port zero", []string{"KURA_PPROF_ADDRESS=127.0.0.1:0"}, EnvPprofAddress, "is not a port number"},
		{"pprof on the public port", []string{"KURA_PPROF_ADDRESS=127.0.0.1:4000"}, EnvPprofAddress, "port 4000 is already KURA_PORT's"},
		{"pprof on the internal port", []string{"KURA_PPROF_ADDRESS=[::1]:7443"}, EnvPprofAddress, "port 7443 is already KURA_INTERNAL_PORT's"},
		{"region with a newline", []string{"KURA_REGION=eu\nwest"}, EnvRegion, "whitespace or control characters"},
		{"tenant too long", []string{"KURA_TENANT_ID=" + strings.Repeat("t", 129)}, EnvTenantID, "is 129 bytes long, at most 128"},
		{"node name with a space", []string{"KURA_NODE_NAME=node 1"}, EnvNodeName, "whitespace"},
		{"node URL with query", []string{"KURA_NODE_URL=http://n:4000/?x=1"}, EnvNodeURL, "must not have a query"},
		{"node URL without host", []string{"KURA_NODE_URL=http:///x"}, EnvNodeURL, "has no host"},
		{"node URL bad port", []string{"KURA_NODE_URL=http://n:99999"}, EnvNodeURL, "not a port number"},
		{"data dir is a file", []string{"KURA_DATA_DIR=" + aFile}, EnvDataDir, "cannot create the directory"},
		{"tmp dir under a file", []string{"KURA_TMP_DIR=" + filepath.Join(aFile, "tmp")}, EnvTmpDir, "cannot create the directory"},
		{"disk budget zero", []string{"KURA_DISK_BUDGET_BYTES=0"}, EnvDiskBudgetBytes, "must be at least 1 MiB, got 0 bytes"},
		{"disk budget unit typo", []string{"KURA_DISK_BUDGET_BYTES=10GB"}, EnvDiskBudgetBytes, `"10GB" is not a byte size`},
		{"pool of one", []string{"KURA_FILE_DESCRIPTOR_POOL_SIZE=1"}, EnvFDPoolSize, "must be at least 2, got 1"},
		{"pool not a number", []string{"KURA_FILE_DESCRIPTOR_POOL_SIZE=many"}, EnvFDPoolSize, `"many" is not a whole number`},
		{"pool absurd", []string{"KURA_FILE_DESCRIPTOR_POOL_SIZE=99999999999"}, EnvFDPoolSize, "is too large"},
		{"handle cache equals the auto pool", []string{"KURA_SEGMENT_HANDLE_CACHE_SIZE=112"}, EnvSegmentHandleCache,
			"112 must be below KURA_FILE_DESCRIPTOR_POOL_SIZE 112 (auto)"},
		{"handle cache zero", []string{"KURA_SEGMENT_HANDLE_CACHE_SIZE=0"}, EnvSegmentHandleCache, "must be at least 1, got 0"},
		{"soft above the auto hard limit", []string{"KURA_MEMORY_HARD_LIMIT_BYTES=1GiB"}, EnvMemorySoftLimit,
			"2867 MiB (auto) is above KURA_MEMORY_HARD_LIMIT_BYTES 1 GiB"},
		{"memory limit in the wrong unit", []string{"KURA_MEMORY_SOFT_LIMIT_BYTES=512"}, EnvMemorySoftLimit, "must be at least 1 MiB, got 512 bytes"},
		{"manifest cache above the soft limit", []string{"KURA_MANIFEST_CACHE_MAX_BYTES=3GiB"}, EnvManifestCacheMax,
			"3 GiB must be below KURA_MEMORY_SOFT_LIMIT_BYTES 2867 MiB (auto)"},
		{"write buffer larger than its pool", []string{"KURA_METADATA_STORE_WRITE_BUFFER_POOL_BYTES=8MiB", "KURA_METADATA_STORE_WRITE_BUFFER_BYTES=16MiB"},
			EnvMetaWriteBuffer, "16 MiB is larger than KURA_METADATA_STORE_WRITE_BUFFER_POOL_BYTES 8 MiB"},
		{"one write buffer", []string{"KURA_METADATA_STORE_MAX_WRITE_BUFFERS=1"}, EnvMetaMaxWriteBuffers, "must be at least 2, got 1"},
		{"acquire timeout zero", []string{"KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS=0"}, EnvFDAcquireTimeoutMS, "must be at least 1 millisecond, got 0"},
		{"timeout too long", []string{"KURA_ANALYTICS_REQUEST_TIMEOUT_MS=999999999999"}, EnvAnalyticsRequestTimeout, "is too long"},
		{"negative TTL", []string{"KURA_EXTENSION_AUTH_CACHE_DENY_TTL_SECONDS=-1"}, EnvExtensionDenyTTLSeconds, "must be at least 0 seconds, got -1"},
		{"mTLS without CA", []string{"KURA_INTERNAL_TLS_CERT_PATH=" + aFile, "KURA_INTERNAL_TLS_KEY_PATH=" + aFile}, EnvInternalTLSCACert,
			"must be set because KURA_INTERNAL_TLS_CERT_PATH and KURA_INTERNAL_TLS_KEY_PATH are: internal mTLS needs all three"},
		{"mTLS file missing", []string{"KURA_INTERNAL_TLS_CA_CERT_PATH=" + aFile, "KURA_INTERNAL_TLS_CERT_PATH=" + aFile,
			"KURA_INTERNAL_TLS_KEY_PATH=" + filepath.Join(dirNotFile, "missing.pem")}, EnvInternalTLSKey, "no such file or directory"},
		{"mTLS path is a directory", []string{"KURA_INTERNAL_TLS_CA_CERT_PATH=" + dirNotFile, "KURA_INTERNAL_TLS_CERT_PATH=" + aFile,
			"KURA_INTERNAL_TLS_KEY_PATH=" + aFile}, EnvInternalTLSCACert, "not a regular file"},
		{"script missing", []string{"KURA_EXTENSION_SCRIPT_PATH=" + filepath.Join(dirNotFile, "nope.lua")}, EnvExtensionScriptPath,
			"cannot read the script: open "},
		{"script is a directory", []string{"KURA_EXTENSION_ENABLED=1", "KURA_EXTENSION_SCRIPT_PATH=" + dirNotFile}, EnvExtensionScriptPath, "not a regular file"},
		{"signer secret not base64", []string{"KURA_EXTENSION_SIGNER_S_SECRET=***"}, "KURA_EXTENSION_SIGNER_S_SECRET", "is not base64"},
		{"signer secret unpadded", []string{"KURA_EXTENSION_SIGNER_S_SECRET=YWJjZA"}, "KURA_EXTENSION_SIGNER_S_SECRET", "is not base64"},
		{"jwt algorithm", []string{"KURA_EXTENSION_JWT_VERIFIER_J_SECRET=s", "KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM=PS256"},
			"KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM", `unsupported JWT algorithm "PS256"`},
		{"jwt public-key algorithm without JWKS", []string{"KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM=RS256"},
			"KURA_EXTENSION_JWT_VERIFIER_J_JWKS_URL", "required for RS256 because KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM is set"},
		{"jwt mixed algorithms", []string{"KURA_EXTENSION_JWT_VERIFIER_J_SECRET=s", "KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM=HS256,RS256"},
			"KURA_EXTENSION_JWT_VERIFIER_J_ALGORITHM", "mixes HMAC and public-key algorithms"},
		{"jwt secret with JWKS", []string{"KURA_EXTENSION_JWT_VERIFIER_J_SECRET=s", "KURA_EXTENSION_JWT_VERIFIER_J_JWKS_URL=https://issuer/keys"},
			"KURA_EXTENSION_JWT_VERIFIER_J_SECRET", "only applies to HS* algorithms"},
		{"jwks URL malformed", []string{"KURA_EXTENSION_JWT_VERIFIER_J_JWKS_URL=issuer/keys"},
			"KURA_EXTENSION_JWT_VERIFIER_J_JWKS_URL", "must be an http:// or https:// URL"},
		{"extension file missing", []string{"KURA_EXTENSION_FILE_TOKENS_PATH=" + filepath.Join(dirNotFile, "tokens")},
			"KURA_EXTENSION_FILE_TOKENS_PATH", "cannot read the file"},
		{"cache max entries zero", []string{"KURA_EXTENSION_CACHE_MAX_ENTRIES=0"}, EnvExtensionCacheMaxEntries, "must be at least 1, got 0"},
		{"pool size zero", []string{"KURA_EXTENSION_POOL_SIZE=0"}, EnvExtensionPoolSize, "must be at least 1, got 0"},
		{"hook memory too small", []string{"KURA_EXTENSION_HOOK_MEMORY_BYTES=1KiB"}, EnvExtensionHookMemoryBytes, "must be at least 1 MiB"},
		{"http client without base URL", []string{"KURA_EXTENSION_HTTP_CLIENT_H_REQUEST_TIMEOUT_MS=100"},
			"KURA_EXTENSION_HTTP_CLIENT_H_BASE_URL", "required because KURA_EXTENSION_HTTP_CLIENT_H_REQUEST_TIMEOUT_MS is set"},
		{"http client timeout", []string{"KURA_EXTENSION_HTTP_CLIENT_H_BASE_URL=http://h", "KURA_EXTENSION_HTTP_CLIENT_H_CONNECT_TIMEOUT_MS=x"},
			"KURA_EXTENSION_HTTP_CLIENT_H_CONNECT_TIMEOUT_MS", "is not a whole number of milliseconds"},
		{"analytics URL without key", []string{"KURA_ANALYTICS_SERVER_URL=https://a"}, EnvAnalyticsSigningKey, "must be set because KURA_ANALYTICS_SERVER_URL is"},
		{"analytics URL malformed", []string{"KURA_ANALYTICS_SERVER_URL=a.example", "KURA_ANALYTICS_SIGNING_KEY=k"}, EnvAnalyticsServerURL, "must be an http:// or https:// URL"},
		{"analytics queue zero", []string{"KURA_ANALYTICS_QUEUE_CAPACITY=0"}, EnvAnalyticsQueueCapacity, "must be at least 1, got 0"},
		{"breaker threshold zero", []string{"KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD=0"}, EnvAnalyticsBreakerFailures, "must be at least 1"},
		{"public TLS without key", []string{"KURA_PUBLIC_TLS_CERT_PATH=" + aFile}, EnvPublicTLSKey, "must be set because KURA_PUBLIC_TLS_CERT_PATH is"},
		{"public TLS key missing", []string{"KURA_PUBLIC_TLS_CERT_PATH=" + aFile, "KURA_PUBLIC_TLS_KEY_PATH=" + filepath.Join(dirNotFile, "nope.pem")},
			EnvPublicTLSKey, "cannot read the file"},
		{"client CA without TLS", []string{"KURA_PUBLIC_TLS_CLIENT_CA_PATH=" + aFile}, EnvPublicTLSClientCA, "client certificates are asked for only over TLS"},
		{"drain timeout too short", []string{"KURA_DRAIN_TIMEOUT_MS=10"}, EnvDrainTimeoutMS, "must be at least 100 milliseconds"},
		{"bind address hostname", []string{"KURA_BIND_ADDRESS=0.0.0.0:4000"}, EnvBindAddress, "is not an IP address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			problems := loadProblems(t, env(t, tt.kv...))
			if len(problems) != 1 || problems[0].Variable != tt.variable || !strings.Contains(problems[0].Message, tt.message) {
				t.Errorf("problems = %v\nwant exactly one: %s: …%s…", problems, tt.variable, tt.message)
			}
		})
	}
}

func TestHostnameFailure(t *testing.T) {
	opts := hermetic()
	opts.Hostname = func() (string, error) { return "", fmt.Errorf("uts namespace gone") }
	_, err := LoadWith(env(t), opts)
	if err == nil {
		t.Fatal("Load succeeded without a hostname or KURA_NODE_NAME / KURA_NODE_URL")
	}
	for _, want := range []string{"KURA_NODE_NAME: not set, and the hostname cannot be read", "KURA_NODE_URL: not set", "uts namespace gone"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	// Setting both makes the hostname unnecessary.
	if _, err := LoadWith(env(t, "KURA_NODE_NAME=n1", "KURA_NODE_URL=http://n1:4000"), opts); err != nil {
		t.Errorf("with name and URL set: %v", err)
	}
}

func TestDataDirNotWritable(t *testing.T) {
	if os.Geteuid() == 0 {
		// Root writes anywhere; the unwritable case is covered by "data dir is a file".
		t.Skip("running as root: permissions do not restrict writes")
	}
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	problems := loadProblems(t, []string{"KURA_DATA_DIR=" + dir})
	if len(problems) == 0 || problems[0].Variable != EnvDataDir || !strings.Contains(problems[0].Message, "is not writable") {
		t.Errorf("problems = %v", problems)
	}
}
