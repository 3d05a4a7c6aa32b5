package config

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/policy"
)

// testHost is a 1024-descriptor, 4 GiB, 4-CPU machine.
var testHost = Host{FileDescriptorLimit: 1024, MemoryLimitBytes: 4 * GiB, CPUCount: 4,
	FileDescriptorSource: "test", MemorySource: "test"}

// hermetic returns options that touch neither the machine's probes nor its hostname.
func hermetic() Options {
	h := testHost
	return Options{
		Host:           &h,
		Hostname:       func() (string, error) { return "node-a", nil },
		FilesystemSize: func(string) (uint64, error) { return uint64(100 * GiB), nil },
	}
}

// env returns a base environment with a fresh data dir, plus kv ("NAME=value").
func env(t *testing.T, kv ...string) []string {
	t.Helper()
	return append([]string{"KURA_DATA_DIR=" + filepath.Join(t.TempDir(), "data")}, kv...)
}

func mustLoad(t *testing.T, environ []string) *Config {
	t.Helper()
	c, err := LoadWith(environ, hermetic())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

// loadProblems loads environ, which must be invalid, and returns its problems.
func loadProblems(t *testing.T, environ []string) []Problem {
	t.Helper()
	c, err := LoadWith(environ, hermetic())
	if err == nil {
		t.Fatalf("Load succeeded, want an error; config %+v", c)
	}
	var ve *ValidationError
	if !errors.As(err, &ve) {
		t.Fatalf("error %T %v is not a *ValidationError", err, err)
	}
	if c != nil {
		t.Errorf("Load returned a config with an error")
	}
	return ve.Problems
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaults(t *testing.T) {
	// No variable at all: a working single node, data under ./kura-data of the cwd.
	t.Chdir(t.TempDir())
	c, err := LoadWith(nil, hermetic())
	if err != nil {
		t.Fatal(err)
	}
	cwd, _ := os.Getwd()
	h := testHost
	want := &Config{
		BindAddress: "0.0.0.0", Port: 4000, GRPCPort: 50051, GossipPort: 7946, InternalPort: 7443,
		TenantID: "default", Region: "local", NodeURL: "http://node-a:4000", NodeName: "node-a",
		DataDir: filepath.Join(cwd, "kura-data"), TmpDir: filepath.Join(cwd, "kura-data", "tmp"),
		DiskBudgetBytes: 50 * GiB, MaxKeyValueBytes: 1048576, MaxXcodeBytes: 256 * MiB,
		DrainTimeout: DefaultDrainTimeout, BootstrapTimeout: DefaultBootstrapTimeout,
		HTTPReadHeaderTimeout: DefaultHTTPReadHeaderTimeout, HTTPBodyIdleTimeout: DefaultHTTPBodyIdleTimeout,
		RejoinInterval: DefaultRejoinInterval, AntiEntropyInterval: DefaultAntiEntropyInterval,
		OutboxDropAfter: DefaultOutboxDropAfter, ReadThroughFindTimeout: DefaultReadThroughFindTimeout, ResumableUploadMinBytes: DefaultResumableUploadMinBytes,
		Budgets:   DeriveBudgets(h),
		Host:      h,
		OTel:      OTelConfig{ServiceName: "kura"},
		LogLevel:  slog.LevelInfo,
		LogFormat: LogFormatJSON,
		Extension: ExtensionConfig{
			HookTimeout: 25 * time.Millisecond, AuthCacheAllowTTL: 600 * time.Second, AuthCacheDenyTTL: 3 * time.Second,
			FailClosedAuthenticate: true, FailClosedAuthorize: true, FailOpenResponseHeaders: true,
			CacheMaxEntries: 100_000, HookMemoryBytes: 32 * MiB,
			Signers: map[string]Signer{}, JWTVerifiers: map[string]JWTVerifier{}, HTTPClients: map[string]HTTPClient{},
			Files: map[string]string{}, Env: map[string]string{},
		},
		Analytics: AnalyticsConfig{BatchSize: 100, BatchTimeout: 5 * time.Second, QueueCapacity: 1000,
			RequestTimeout: 5 * time.Second, CircuitBreakerFailureThreshold: 5, CircuitBreakerOpen: 30 * time.Second},
		Derived: []string{EnvDiskBudgetBytes, EnvFDPoolSize, EnvManifestCacheMax, EnvMemoryHardLimit, EnvMemorySoftLimit,
			EnvMetaMaxBGJobs, EnvMetaMaxOpenFiles, EnvMetaMaxWriteBuffers, EnvMetaReadCache, EnvMetaWriteBuffer,
			EnvMetaWriteBufferPool, EnvSegmentHandleCache},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("defaults:\n got %+v\nwant %+v", c, want)
	}
	for _, d := range []string{c.DataDir, c.TmpDir} {
		if st, err := os.Stat(d); err != nil || !st.IsDir() {
			t.Errorf("directory %s not created: %v", d, err)
		}
	}
	if c.InternalTLS.Enabled() || c.OTel.Enabled() || c.Analytics.Enabled() || c.Extension.Enabled {
		t.Errorf("optional subsystems enabled by default: %+v", c)
	}
	if c.HTTPAddr() != "0.0.0.0:4000" || c.GRPCAddr() != "0.0.0.0:50051" || c.GossipAddr() != "0.0.0.0:7946" || c.InternalAddr() != "0.0.0.0:7443" {
		t.Errorf("addresses: %s %s %s %s", c.HTTPAddr(), c.GRPCAddr(), c.GossipAddr(), c.InternalAddr())
	}
	// Sanity of the derived budgets for the 1024-fd, 4 GiB test host.
	if c.Budgets.FileDescriptorPoolSize != 112 || c.Budgets.MemorySoftLimitBytes != 2867*MiB {
		t.Errorf("budgets: %+v", c.Budgets)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings for a default config: %q", c.Warnings)
	}
}

func TestEveryVariableSet(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeFile(t, "ca.pem", "ca"), writeFile(t, "cert.pem", "cert"), writeFile(t, "key.pem", "key")
	script := writeFile(t, "hooks.lua", "function authenticate(ctx) return {anonymous=true} end")
	gossipKey := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	signerKey := []byte{0, 1, 2, 0xff}
	environ := []string{
		"KURA_BIND_ADDRESS=127.0.0.1",
		"KURA_PORT=14000", "KURA_GRPC_PORT=15051", "KURA_GOSSIP_PORT=17946", "KURA_INTERNAL_PORT=17443",
		"KURA_TENANT_ID=acme", "KURA_REGION=eu-central", "KURA_NODE_NAME=kura-1",
		"KURA_NODE_URL=https://cache-1.internal:4000/",
		"KURA_DATA_DIR=" + filepath.Join(dir, "data"), "KURA_TMP_DIR=" + filepath.Join(dir, "scratch"),
		"KURA_DISK_BUDGET_BYTES=10GiB", "KURA_MAX_KEYVALUE_BYTES=2097152", "KURA_MAX_XCODE_BYTES=512 MiB",
		"KURA_PEERS= kura-2:7946 , http://kura-3:4000,[fd00::4]:7000,kura-5,",
		"KURA_DISCOVERY_DNS_NAME=_gossip._tcp.kura-headless.kura.svc.cluster.local.",
		"KURA_GOSSIP_KEY=" + gossipKey,
		"KURA_INTERNAL_TLS_CA_CERT_PATH=" + ca, "KURA_INTERNAL_TLS_CERT_PATH=" + cert, "KURA_INTERNAL_TLS_KEY_PATH=" + key,
		"KURA_FILE_DESCRIPTOR_POOL_SIZE=200", "KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS=750", "KURA_SEGMENT_HANDLE_CACHE_SIZE=50",
		"KURA_MEMORY_SOFT_LIMIT_BYTES=1GiB", "KURA_MEMORY_HARD_LIMIT_BYTES=1536MiB", "KURA_MANIFEST_CACHE_MAX_BYTES=32MiB",
		"KURA_METADATA_STORE_MAX_OPEN_FILES=500", "KURA_METADATA_STORE_MAX_BACKGROUND_JOBS=3",
		"KURA_METADATA_STORE_READ_CACHE_BYTES=64MiB", "KURA_METADATA_STORE_WRITE_BUFFER_POOL_BYTES=96MiB",
		"KURA_METADATA_STORE_WRITE_BUFFER_BYTES=16MiB", "KURA_METADATA_STORE_MAX_WRITE_BUFFERS=6",
		"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://otel-collector:4318/v1/traces",
		"KURA_OTEL_SERVICE_NAME=kura-eu", "KURA_OTEL_DEPLOYMENT_ENVIRONMENT=production",
		"KURA_LOG_LEVEL=DEBUG", "KURA_LOG_FORMAT=text", "KURA_PPROF_ADDRESS=127.0.0.1:16060",
		"KURA_EXTENSION_ENABLED=true", "KURA_EXTENSION_SCRIPT_PATH=" + script, "KURA_EXTENSION_HOOK_TIMEOUT_MS=40",
		"KURA_EXTENSION_AUTH_CACHE_ALLOW_TTL_SECONDS=60", "KURA_EXTENSION_AUTH_CACHE_DENY_TTL_SECONDS=0",
		"KURA_EXTENSION_FAIL_CLOSED_AUTHENTICATE=false", "KURA_EXTENSION_FAIL_CLOSED_AUTHORIZE=no",
		"KURA_EXTENSION_FAIL_OPEN_RESPONSE_HEADERS=0", "KURA_EXTENSION_CACHE_MAX_ENTRIES=5000",
		"KURA_EXTENSION_POOL_SIZE=12", "KURA_EXTENSION_HOOK_MEMORY_BYTES=8MiB", "KURA_EXTENSION_FILE_Tokens_PATH=" + script,
		"KURA_EXTENSION_JWT_VERIFIER_OIDC_JWKS_URL=https://token.actions.example/.well-known/jwks",
		"KURA_EXTENSION_JWT_VERIFIER_OIDC_JWKS_REFRESH_SECONDS=60", "KURA_EXTENSION_JWT_VERIFIER_OIDC_AUDIENCES=kura",
		"KURA_EXTENSION_SIGNER_TUIST_ALGORITHM=HMAC-SHA256", "KURA_EXTENSION_SIGNER_TUIST_SECRET=" + base64.StdEncoding.EncodeToString(signerKey),
		"KURA_EXTENSION_JWT_VERIFIER_MY_APP_ALGORITHM=hs512", "KURA_EXTENSION_JWT_VERIFIER_MY_APP_SECRET=jwt-secret",
		"KURA_EXTENSION_JWT_VERIFIER_MY_APP_ISSUER=tuist", "KURA_EXTENSION_JWT_VERIFIER_MY_APP_AUDIENCES=cli, web,",
		"KURA_EXTENSION_HTTP_CLIENT_tuist_BASE_URL=https://tuist.dev/", "KURA_EXTENSION_HTTP_CLIENT_tuist_CONNECT_TIMEOUT_MS=3000",
		"KURA_EXTENSION_HTTP_CLIENT_tuist_REQUEST_TIMEOUT_MS=4000",
		"KURA_ANALYTICS_SERVER_URL=https://tuist.dev", "KURA_ANALYTICS_SIGNING_KEY=s3cret",
		"KURA_ANALYTICS_BATCH_SIZE=50", "KURA_ANALYTICS_BATCH_TIMEOUT_MS=1000", "KURA_ANALYTICS_QUEUE_CAPACITY=500",
		"KURA_ANALYTICS_REQUEST_TIMEOUT_MS=2000", "KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD=3",
		"KURA_ANALYTICS_CIRCUIT_BREAKER_OPEN_MS=10000", "KURA_READ_THROUGH_FIND_TIMEOUT_MS=1500", "KURA_RESUMABLE_UPLOAD_MIN_BYTES=64MiB",
	}
	c := mustLoad(t, environ)
	wantEnv := map[string]string{}
	for _, kv := range environ {
		k, v, _ := strings.Cut(kv, "=")
		wantEnv[k] = v
	}

	check := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	check("bind", c.BindAddress, "127.0.0.1")
	check("read-through find timeout", c.ReadThroughFindTimeout, 1500*time.Millisecond)
	check("resumable upload min", c.ResumableUploadMinBytes, int64(64*MiB))
	check("ports", []int{c.Port, c.GRPCPort, c.GossipPort, c.InternalPort}, []int{14000, 15051, 17946, 17443})
	check("HTTPAddr", c.HTTPAddr(), "127.0.0.1:14000")
	check("identity", []string{c.TenantID, c.Region, c.NodeName, c.NodeURL}, []string{"acme", "eu-central", "kura-1", "https://cache-1.internal:4000"})
	check("dirs", []string{c.DataDir, c.TmpDir}, []string{filepath.Join(dir, "data"), filepath.Join(dir, "scratch")})
	check("sizes", []int64{c.DiskBudgetBytes, c.MaxKeyValueBytes, c.MaxXcodeBytes}, []int64{10 * GiB, 2 * MiB, 512 * MiB})
	check("peers", c.Peers, []Peer{
		{Raw: "kura-2:7946", Host: "kura-2", Port: 7946},
		{Raw: "http://kura-3:4000", Host: "kura-3", Port: 17946, URL: "http://kura-3:4000"},
		{Raw: "[fd00::4]:7000", Host: "fd00::4", Port: 7000},
		{Raw: "kura-5", Host: "kura-5", Port: 17946},
	})
	check("peer addr", c.Peers[2].Addr(), "[fd00::4]:7000")
	check("dns", c.DiscoveryDNSName, "_gossip._tcp.kura-headless.kura.svc.cluster.local.")
	check("gossip key", string(c.GossipKey), "0123456789abcdef0123456789abcdef")
	check("tls", c.InternalTLS, TLSFiles{CACertPath: ca, CertPath: cert, KeyPath: key})
	check("tls enabled", c.InternalTLS.Enabled(), true)
	check("budgets", c.Budgets, Budgets{
		FileDescriptorPoolSize: 200, FileDescriptorAcquireTimeout: 750 * time.Millisecond, SegmentHandleCacheSize: 50,
		MemorySoftLimitBytes: GiB, MemoryHardLimitBytes: 1536 * MiB, ManifestCacheMaxBytes: 32 * MiB,
		MetadataStoreMaxOpenFiles: 500, MetadataStoreMaxBackgroundJobs: 3, MetadataStoreReadCacheBytes: 64 * MiB,
		MetadataStoreWriteBufferPoolBytes: 96 * MiB, MetadataStoreWriteBufferBytes: 16 * MiB, MetadataStoreMaxWriteBuffers: 6,
	})
	check("derived", c.Derived, []string(nil))
	check("otel", c.OTel, OTelConfig{TracesEndpoint: "http://otel-collector:4318/v1/traces", ServiceName: "kura-eu", DeploymentEnvironment: "production"})
	check("log", []any{c.LogLevel, c.LogFormat}, []any{slog.LevelDebug, LogFormatText})
	check("pprof", c.PprofAddress, "127.0.0.1:16060")
	check("extension", c.Extension, ExtensionConfig{
		Enabled: true, ScriptPath: script, HookTimeout: 40 * time.Millisecond,
		AuthCacheAllowTTL: time.Minute, AuthCacheDenyTTL: 0,
		CacheMaxEntries: 5000, PoolSize: 12, HookMemoryBytes: 8 * MiB,
		Signers: map[string]Signer{"TUIST": {Algorithm: "hmac-sha256", Secret: signerKey}},
		JWTVerifiers: map[string]JWTVerifier{
			"MY_APP": {Algorithms: []string{"HS512"}, Secret: []byte("jwt-secret"), JWKSRefresh: policy.DefaultJWKSRefresh, Issuer: "tuist", Audiences: []string{"cli", "web"}},
			"OIDC": {Algorithms: []string{"RS256", "ES256"}, JWKSURL: "https://token.actions.example/.well-known/jwks",
				JWKSRefresh: time.Minute, Audiences: []string{"kura"}},
		},
		Files:       map[string]string{"TOKENS": script},
		HTTPClients: map[string]HTTPClient{"TUIST": {BaseURL: "https://tuist.dev", ConnectTimeout: 3 * time.Second, RequestTimeout: 4 * time.Second}},
		Env:         wantEnv,
	})
	check("analytics", c.Analytics, AnalyticsConfig{
		ServerURL: "https://tuist.dev", SigningKey: "s3cret", BatchSize: 50, BatchTimeout: time.Second,
		QueueCapacity: 500, RequestTimeout: 2 * time.Second, CircuitBreakerFailureThreshold: 3, CircuitBreakerOpen: 10 * time.Second,
	})
	check("warnings", c.Warnings, []string(nil))
	// The script finds its resources by any spelling of the id.
	if _, ok := c.Extension.HTTPClients[ResourceID("tuist")]; !ok {
		t.Errorf("ResourceID(tuist) does not find the TUIST client")
	}
}

func TestAutoLiteralAndEmptyMeanDefault(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_FILE_DESCRIPTOR_POOL_SIZE=auto", "KURA_MEMORY_SOFT_LIMIT_BYTES=AUTO",
		"KURA_PORT=", "KURA_REGION=   ", "KURA_DISK_BUDGET_BYTES=auto"))
	want := DeriveBudgets(testHost)
	if c.Budgets.FileDescriptorPoolSize != want.FileDescriptorPoolSize || c.Budgets.MemorySoftLimitBytes != want.MemorySoftLimitBytes {
		t.Errorf("auto not derived: %+v", c.Budgets)
	}
	if c.Port != 4000 || c.Region != "local" || c.DiskBudgetBytes != 50*GiB {
		t.Errorf("empty values did not fall back to defaults: port %d region %q disk %d", c.Port, c.Region, c.DiskBudgetBytes)
	}
}

func TestLastDuplicateWins(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_PORT=5000", "KURA_PORT=6000"))
	if c.Port != 6000 {
		t.Errorf("port = %d, want the last value 6000", c.Port)
	}
}

func TestOverridesMoveDependants(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_FILE_DESCRIPTOR_POOL_SIZE=40", "KURA_MEMORY_SOFT_LIMIT_BYTES=3GiB"))
	b := c.Budgets
	if b.SegmentHandleCacheSize != 16 {
		t.Errorf("handle cache = %d, want 16 (derived from the overridden pool 40)", b.SegmentHandleCacheSize)
	}
	// 85% of 4 GiB = 3481 MiB ≥ 3 GiB + 64 MiB = 3136 MiB.
	if b.MemoryHardLimitBytes != 3481*MiB || b.ManifestCacheMaxBytes != 64*MiB {
		t.Errorf("hard %s manifest %s", formatBytes(b.MemoryHardLimitBytes), formatBytes(b.ManifestCacheMaxBytes))
	}
	if slices.Contains(c.Derived, EnvFDPoolSize) || !slices.Contains(c.Derived, EnvSegmentHandleCache) {
		t.Errorf("derived = %v", c.Derived)
	}
}

func TestHostIsProbedWhenNotInjected(t *testing.T) {
	root := testsupport.FileTree(t, map[string]string{
		"sys/fs/cgroup/memory.max": "2147483648\n",
		"proc/meminfo":             meminfo16GiB,
	})
	opts := hermetic()
	opts.Host = nil
	opts.Probe = HostProbe{Root: root, Getrlimit: func() (uint64, error) { return 2176, nil }, Sysinfo: noSysinfo, NumCPU: func() int { return 16 }}
	c, err := LoadWith(env(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if c.Host.MemoryLimitBytes != 2*GiB || c.Host.FileDescriptorLimit != 2176 || c.Host.CPUCount != 16 {
		t.Fatalf("host = %+v", c.Host)
	}
	b := c.Budgets
	if b.FileDescriptorPoolSize != 256 || b.MetadataStoreMaxOpenFiles != 1024 || b.MetadataStoreMaxBackgroundJobs != 8 ||
		b.MemorySoftLimitBytes != 1433*MiB || b.MetadataStoreReadCacheBytes != 64*MiB {
		t.Errorf("budgets from the probed host: %+v", b)
	}
}

func TestRealLoad(t *testing.T) {
	// The unhermetic entry point: real probes, real hostname, real statfs.
	c, err := Load([]string{"KURA_DATA_DIR=" + t.TempDir(), "KURA_BIND_ADDRESS=127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName == "" || c.DiskBudgetBytes < MiB || c.Host.CPUCount < 1 {
		t.Errorf("config from the real machine: %+v", c)
	}
}

func TestDiskBudget(t *testing.T) {
	t.Run("auto is half the filesystem", func(t *testing.T) {
		opts := hermetic()
		var asked string
		opts.FilesystemSize = func(dir string) (uint64, error) { asked = dir; return 1000 * uint64(MiB), nil }
		e := env(t)
		c, err := LoadWith(e, opts)
		if err != nil {
			t.Fatal(err)
		}
		if c.DiskBudgetBytes != 500*MiB || asked != c.DataDir {
			t.Errorf("budget %d asked for %q", c.DiskBudgetBytes, asked)
		}
	})
	t.Run("auto fails loudly when statfs fails", func(t *testing.T) {
		opts := hermetic()
		opts.FilesystemSize = func(string) (uint64, error) { return 0, errors.New("ENOSYS") }
		_, err := LoadWith(env(t), opts)
		if err == nil || !strings.Contains(err.Error(), "KURA_DISK_BUDGET_BYTES: auto needs the size") || !strings.Contains(err.Error(), "ENOSYS") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("auto on a tiny filesystem is an error", func(t *testing.T) {
		opts := hermetic()
		opts.FilesystemSize = func(string) (uint64, error) { return 1 << 20, nil }
		_, err := LoadWith(env(t), opts)
		if err == nil || !strings.Contains(err.Error(), "KURA_DISK_BUDGET_BYTES: auto gives 524288 bytes (half of the 1048576-byte filesystem") {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("explicit budget needs no statfs; larger than the disk warns", func(t *testing.T) {
		opts := hermetic()
		opts.FilesystemSize = func(string) (uint64, error) { return uint64(GiB), nil }
		c, err := LoadWith(env(t, "KURA_DISK_BUDGET_BYTES=2GiB"), opts)
		if err != nil {
			t.Fatal(err)
		}
		if c.DiskBudgetBytes != 2*GiB || len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "KURA_DISK_BUDGET_BYTES: 2 GiB is more than the 1 GiB filesystem") {
			t.Errorf("budget %d warnings %q", c.DiskBudgetBytes, c.Warnings)
		}
	})
}

func TestPeers(t *testing.T) {
	valid := []struct {
		in   string
		want []string // Addr of each peer
	}{
		{"a:1", []string{"a:1"}},
		{"a:7946,b:7946", []string{"a:7946", "b:7946"}},
		{"a:7946, a:7946 ,", []string{"a:7946"}}, // duplicates dropped, trailing comma ok
		{"10.0.0.1:8000", []string{"10.0.0.1:8000"}},
		{"[::1]:8000", []string{"[::1]:8000"}},
		{"::1", []string{"[::1]:7946"}},
		{"[::1]", []string{"[::1]:7946"}},
		{"kura-0.kura.svc.cluster.local", []string{"kura-0.kura.svc.cluster.local:7946"}},
		{"http://kura-1:4000", []string{"kura-1:7946"}},
		{"https://kura-1.example.com/", []string{"kura-1.example.com:7946"}},
	}
	for _, tt := range valid {
		peers, problems := parsePeers(tt.in, 7946)
		var got []string
		for _, p := range peers {
			got = append(got, p.Addr())
		}
		if len(problems) > 0 || !slices.Equal(got, tt.want) {
			t.Errorf("parsePeers(%q) = %v %q, want %v", tt.in, got, problems, tt.want)
		}
	}
	invalid := []struct{ in, want string }{
		{"a:abc", `entry 1 "a:abc": port "abc" is not a port number`},
		{"a:0", `port "0" is not a port number`},
		{"a:70000", `port "70000" is not a port number`},
		{"a:", `port "" is not a port number`},
		{":7946", "missing host"},
		{"ftp://a:1", "must be an http:// or https:// URL"},
		{"http://", "has no host"},
		{"http://a:1?x=1", "must not have a query"},
		{"bad host:1", "not host:port, a host or an http(s) URL"},
		{"a_b..c:1", "is not a valid host name"},
		{"-a:1", "is not a valid host name"},
		{"a:1:2", "not host:port"},
		{"ok:1,,also bad", `entry 3 "also bad"`},
	}
	for _, tt := range invalid {
		_, problems := parsePeers(tt.in, 7946)
		if len(problems) != 1 || !strings.Contains(problems[0], tt.want) {
			t.Errorf("parsePeers(%q) problems %q, want one containing %q", tt.in, problems, tt.want)
		}
	}
}

func TestParseBytes(t *testing.T) {
	good := map[string]int64{"0": 0, "1": 1, "1048576": MiB, "512KiB": 512 * KiB, "2 MiB": 2 * MiB, "3GiB": 3 * GiB, "1TiB": TiB, "-1MiB": -MiB}
	for in, want := range good {
		if got, err := parseBytes(in); err != nil || got != want {
			t.Errorf("parseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "1.5GiB", "1MB", "1 mb", "GiB", "ten", "9223372036854775807KiB", "0x10"} {
		if got, err := parseBytes(in); err == nil {
			t.Errorf("parseBytes(%q) = %d, want an error", in, got)
		}
	}
	for n, want := range map[int64]string{0: "0 bytes", 1: "1 byte", 1000: "1000 bytes", 2048: "2 KiB", 3 * MiB: "3 MiB", 5 * GiB: "5 GiB", MiB + 1: "1048577 bytes"} {
		if got := formatBytes(n); got != want {
			t.Errorf("formatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestGossipKey(t *testing.T) {
	for _, n := range []int{16, 24, 32} {
		k := bytes.Repeat([]byte{7}, n)
		c := mustLoad(t, env(t, "KURA_GOSSIP_KEY="+base64.StdEncoding.EncodeToString(k)))
		if !bytes.Equal(c.GossipKey, k) {
			t.Errorf("%d-byte key not decoded", n)
		}
	}
	for in, want := range map[string]string{
		base64.StdEncoding.EncodeToString(make([]byte, 20)): "decodes to 20 bytes; an AES key is 16, 24 or 32 bytes",
		"not*base64": "is not valid base64",
		"c2hvcnQ=":   "decodes to 5 bytes",
		"YWJjZA":     "is not valid base64", // unpadded
	} {
		problems := loadProblems(t, env(t, "KURA_GOSSIP_KEY="+in))
		if len(problems) != 1 || problems[0].Variable != EnvGossipKey || !strings.Contains(problems[0].Message, want) {
			t.Errorf("key %q: problems %v, want %q", in, problems, want)
		}
	}
}

func TestExtensionEnabling(t *testing.T) {
	script := writeFile(t, "hooks.lua", "-- policy")
	tests := []struct {
		name    string
		kv      []string
		enabled bool
	}{
		{"off by default", nil, false},
		{"script path alone enables", []string{"KURA_EXTENSION_SCRIPT_PATH=" + script}, true},
		{"explicit false wins over a script path", []string{"KURA_EXTENSION_ENABLED=false", "KURA_EXTENSION_SCRIPT_PATH=" + script}, false},
		{"explicit true", []string{"KURA_EXTENSION_ENABLED=on", "KURA_EXTENSION_SCRIPT_PATH=" + script}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c := mustLoad(t, env(t, tt.kv...)); c.Extension.Enabled != tt.enabled {
				t.Errorf("enabled = %v, want %v", c.Extension.Enabled, tt.enabled)
			}
		})
	}
}

func TestUnknownVariablesWarn(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_PROT=4001", "KURA_EXTENSION_HTTP_CLIENT_TUIST_HEADERS_AUTHORIZATION=Bearer x",
		"KURA_EXTENSION_SIGNER_A_SECRET=YWJj", "OTHER_VAR=1"))
	want := []string{
		"KURA_EXTENSION_HTTP_CLIENT_TUIST_HEADERS_AUTHORIZATION: unknown variable, ignored (kura --help lists every variable)",
		"KURA_PROT: unknown variable, ignored (kura --help lists every variable)",
	}
	if !slices.Equal(c.Warnings, want) {
		t.Errorf("warnings = %q\nwant %q", c.Warnings, want)
	}
}

func TestFileDescriptorWarning(t *testing.T) {
	opts := hermetic()
	opts.Host = &Host{FileDescriptorLimit: 256, MemoryLimitBytes: 4 * GiB, CPUCount: 2, FileDescriptorSource: "RLIMIT_NOFILE"}
	c, err := LoadWith(env(t), opts)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "FD pool 64 + metadata store 128 + 128 reserved = 320 exceeds the limit of 256") {
		t.Errorf("warnings = %q", c.Warnings)
	}
}

func TestHardLimitAboveMemoryWarns(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_MEMORY_HARD_LIMIT_BYTES=8GiB"))
	if len(c.Warnings) != 1 || !strings.Contains(c.Warnings[0], "KURA_MEMORY_HARD_LIMIT_BYTES: 8 GiB is above the detected memory limit 4 GiB") {
		t.Errorf("warnings = %q", c.Warnings)
	}
}

func TestLogAttrsHideSecrets(t *testing.T) {
	gossip := base64.StdEncoding.EncodeToString([]byte("GOSSIPKEY-GOSSIPKEY-GOSSIPKEY-32"))
	signer := base64.StdEncoding.EncodeToString([]byte("SIGNER-SECRET-BYTES"))
	script := writeFile(t, "hooks.lua", "-- policy")
	c := mustLoad(t, env(t,
		"KURA_GOSSIP_KEY="+gossip,
		"KURA_ANALYTICS_SERVER_URL=https://user:URLPASSWORD@tuist.dev", "KURA_ANALYTICS_SIGNING_KEY=ANALYTICS-SECRET",
		"KURA_EXTENSION_SCRIPT_PATH="+script,
		"KURA_EXTENSION_SIGNER_S_SECRET="+signer,
		"KURA_EXTENSION_JWT_VERIFIER_J_SECRET=JWT-SECRET",
		"KURA_EXTENSION_HTTP_CLIENT_H_BASE_URL=https://bot:CLIENTPASSWORD@api.example.com",
		"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=https://x:OTELPASSWORD@collector/v1/traces",
		"POLICY_API_TOKEN=ENV-SECRET", // reaches kura.env through Extension.Env
	))
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).LogAttrs(context.Background(), slog.LevelInfo, "configuration", c.LogAttrs()...)
	out := buf.String()
	for _, secret := range []string{gossip, "GOSSIPKEY", signer, "SIGNER-SECRET", "ANALYTICS-SECRET", "JWT-SECRET", "URLPASSWORD", "CLIENTPASSWORD", "OTELPASSWORD", "POLICY_API_TOKEN", "ENV-SECRET"} {
		if strings.Contains(out, secret) {
			t.Errorf("log output contains secret %q:\n%s", secret, out)
		}
	}
	for _, want := range []string{`"gossip_key":"(set)"`, `"signing_key":"(set)"`, `"S hmac-sha256 secret=(set)"`, `J HS256 secret=(set)`,
		`"file_descriptor_pool_size":112`, `"tenant_id":"default"`, `"derived":[`, `https://user:xxxxx@tuist.dev`} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %s:\n%s", want, out)
		}
	}
}

// TestExtensionEnvIsTheGivenEnviron: kura.env sees the environ Load was given, as written
// (last duplicate wins, values untrimmed, every name, not only KURA_*), and never the real
// environment.
func TestExtensionEnvIsTheGivenEnviron(t *testing.T) {
	t.Setenv("KURA_TEST_ONLY_IN_THE_REAL_ENVIRONMENT", "x")
	dataDir := filepath.Join(t.TempDir(), "data")
	c := mustLoad(t, []string{"KURA_DATA_DIR=" + dataDir,
		"TEAM=mobile", "TEAM=ios", "PADDED= a b ", "EMPTY=", "NO_EQUALS_SIGN", "=nameless", "KURA_TENANT_ID=acme"})
	want := map[string]string{"KURA_DATA_DIR": dataDir,
		"TEAM": "ios", "PADDED": " a b ", "EMPTY": "", "KURA_TENANT_ID": "acme"}
	if !reflect.DeepEqual(c.Extension.Env, want) {
		t.Errorf("Extension.Env = %#v, want %#v", c.Extension.Env, want)
	}
}

func TestUsageListsEveryVariableLoadReads(t *testing.T) {
	script := writeFile(t, "hooks.lua", "-- policy")
	// Set the families too, so their names are read.
	_, p := load(env(t, "KURA_EXTENSION_SCRIPT_PATH="+script, "KURA_EXTENSION_SIGNER_X_SECRET=YWJj",
		"KURA_EXTENSION_JWT_VERIFIER_X_SECRET=s", "KURA_EXTENSION_HTTP_CLIENT_X_BASE_URL=http://x"), hermetic())
	usage := Usage()
	for name := range p.read {
		family := false
		for prefix := range familyFields {
			if _, field, ok := splitFamily(prefix, name); ok {
				family = true
				if !strings.Contains(usage, prefix+"<ID>_"+field) {
					t.Errorf("Usage lacks family %s<ID>_%s", prefix, field)
				}
			}
		}
		if strings.HasPrefix(name, EnvRetentionMaxAgePrefix) {
			family = true
		}
		if !family && !knownVariable(name) {
			t.Errorf("Load reads %s, which is not in the variables table", name)
		}
	}
	for _, g := range variables {
		for _, v := range g.vars {
			if !strings.Contains(usage, "  "+v.name+" = "+v.def+"\n      "+v.meaning+"\n") {
				t.Errorf("Usage lacks %s", v.name)
			}
			if !v.family && !p.read[v.name] {
				t.Errorf("%s is documented but Load never reads it", v.name)
			}
		}
	}
	for _, title := range []string{"Listeners and identity", "Storage", "Cluster", "Runtime budgets", "Observability", "Extensions and policy", "Runtime analytics"} {
		if !strings.Contains(usage, "\n"+title) {
			t.Errorf("Usage lacks group %q", title)
		}
	}
}

func TestResumableUploadMinBytes(t *testing.T) {
	for _, c := range []struct {
		value string
		want  int64
	}{{"off", -1}, {"OFF", -1}, {"1", 1}, {"16MiB", 16 * MiB}} {
		if got := mustLoad(t, []string{"KURA_RESUMABLE_UPLOAD_MIN_BYTES=" + c.value}).ResumableUploadMinBytes; got != c.want {
			t.Errorf("KURA_RESUMABLE_UPLOAD_MIN_BYTES=%s: %d, want %d", c.value, got, c.want)
		}
	}
	for _, bad := range []string{"0", "-3", "lots"} {
		if _, err := LoadWith([]string{"KURA_RESUMABLE_UPLOAD_MIN_BYTES=" + bad}, hermetic()); err == nil ||
			!strings.Contains(err.Error(), "KURA_RESUMABLE_UPLOAD_MIN_BYTES") {
			t.Errorf("KURA_RESUMABLE_UPLOAD_MIN_BYTES=%s: error %v, want one naming the variable", bad, err)
		}
	}
}

// TestHTTPSlowClientTimeouts: the public listener's slow-client bounds are read in
// milliseconds and refuse values too small to let any real client through.
func TestHTTPSlowClientTimeouts(t *testing.T) {
	c := mustLoad(t, env(t, "KURA_HTTP_READ_HEADER_TIMEOUT_MS=1500", "KURA_HTTP_BODY_IDLE_TIMEOUT_MS=2500"))
	if c.HTTPReadHeaderTimeout != 1500*time.Millisecond || c.HTTPBodyIdleTimeout != 2500*time.Millisecond {
		t.Fatalf("timeouts = %v, %v; want 1.5s, 2.5s", c.HTTPReadHeaderTimeout, c.HTTPBodyIdleTimeout)
	}
	for _, name := range []string{EnvHTTPReadHeaderTimeoutMS, EnvHTTPBodyIdleTimeoutMS} {
		problems := loadProblems(t, env(t, name+"=10"))
		if len(problems) != 1 || problems[0].Variable != name {
			t.Fatalf("%s=10: problems %+v, want one naming it", name, problems)
		}
	}
}
