package config

import (
	"strings"
	"time"
)

// Variable names. Load reads exactly these (plus the extension families below); Usage and
// the unknown-variable warning are generated from the variables table, so the three never
// drift apart (a test checks it).
const (
	EnvBindAddress  = "KURA_BIND_ADDRESS"
	EnvPort         = "KURA_PORT"
	EnvGRPCPort     = "KURA_GRPC_PORT"
	EnvGossipPort   = "KURA_GOSSIP_PORT"
	EnvInternalPort = "KURA_INTERNAL_PORT"
	EnvTenantID     = "KURA_TENANT_ID"
	EnvRegion       = "KURA_REGION"
	EnvNodeURL      = "KURA_NODE_URL"
	EnvNodeName     = "KURA_NODE_NAME"

	EnvDrainTimeoutMS     = "KURA_DRAIN_TIMEOUT_MS"
	EnvBootstrapTimeoutMS = "KURA_BOOTSTRAP_TIMEOUT_MS"
	EnvPublicTLSCert      = "KURA_PUBLIC_TLS_CERT_PATH"
	EnvPublicTLSKey       = "KURA_PUBLIC_TLS_KEY_PATH"
	EnvPublicTLSClientCA  = "KURA_PUBLIC_TLS_CLIENT_CA_PATH"
	// EnvHTTPReadHeaderTimeoutMS and EnvHTTPBodyIdleTimeoutMS are the public HTTP listener's
	// slow-client bounds (slow headers; a body or response that makes no progress).
	EnvHTTPReadHeaderTimeoutMS = "KURA_HTTP_READ_HEADER_TIMEOUT_MS"
	EnvHTTPBodyIdleTimeoutMS   = "KURA_HTTP_BODY_IDLE_TIMEOUT_MS"

	EnvDataDir          = "KURA_DATA_DIR"
	EnvTmpDir           = "KURA_TMP_DIR"
	EnvDiskBudgetBytes  = "KURA_DISK_BUDGET_BYTES"
	EnvMaxKeyValueBytes = "KURA_MAX_KEYVALUE_BYTES"
	EnvMaxXcodeBytes    = "KURA_MAX_XCODE_BYTES"

	EnvPeers                 = "KURA_PEERS"
	EnvDiscoveryDNSName      = "KURA_DISCOVERY_DNS_NAME"
	EnvDiscoveryDNSServer    = "KURA_DISCOVERY_DNS_SERVER"
	EnvRejoinIntervalMS      = "KURA_GOSSIP_REJOIN_INTERVAL_MS"
	EnvAntiEntropyIntervalMS = "KURA_ANTI_ENTROPY_INTERVAL_MS"
	// EnvReadThroughFindTimeoutMS bounds how long an existence question waits for peers.
	EnvReadThroughFindTimeoutMS = "KURA_READ_THROUGH_FIND_TIMEOUT_MS"
	// EnvResumableUploadMinBytes sets which ByteStream uploads are staged to be resumable.
	EnvResumableUploadMinBytes = "KURA_RESUMABLE_UPLOAD_MIN_BYTES"
	EnvOutboxDropAfterMS       = "KURA_OUTBOX_DROP_AFTER_MS"
	EnvGossipKey               = "KURA_GOSSIP_KEY"
	EnvInternalTLSCACert       = "KURA_INTERNAL_TLS_CA_CERT_PATH"
	EnvInternalTLSCert         = "KURA_INTERNAL_TLS_CERT_PATH"
	EnvInternalTLSKey          = "KURA_INTERNAL_TLS_KEY_PATH"
	EnvFDPoolSize              = "KURA_FILE_DESCRIPTOR_POOL_SIZE"
	EnvFDAcquireTimeoutMS      = "KURA_FILE_DESCRIPTOR_ACQUIRE_TIMEOUT_MS"
	EnvSegmentHandleCache      = "KURA_SEGMENT_HANDLE_CACHE_SIZE"
	EnvMemorySoftLimit         = "KURA_MEMORY_SOFT_LIMIT_BYTES"
	EnvMemoryHardLimit         = "KURA_MEMORY_HARD_LIMIT_BYTES"
	EnvManifestCacheMax        = "KURA_MANIFEST_CACHE_MAX_BYTES"
	EnvMetaMaxOpenFiles        = "KURA_METADATA_STORE_MAX_OPEN_FILES"
	EnvMetaMaxBGJobs           = "KURA_METADATA_STORE_MAX_BACKGROUND_JOBS"
	EnvMetaReadCache           = "KURA_METADATA_STORE_READ_CACHE_BYTES"
	EnvMetaWriteBufferPool     = "KURA_METADATA_STORE_WRITE_BUFFER_POOL_BYTES"
	EnvMetaWriteBuffer         = "KURA_METADATA_STORE_WRITE_BUFFER_BYTES"
	EnvMetaMaxWriteBuffers     = "KURA_METADATA_STORE_MAX_WRITE_BUFFERS"

	EnvOTelEndpoint    = "KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvOTelServiceName = "KURA_OTEL_SERVICE_NAME"
	EnvOTelEnvironment = "KURA_OTEL_DEPLOYMENT_ENVIRONMENT"
	EnvLogLevel        = "KURA_LOG_LEVEL"
	EnvLogFormat       = "KURA_LOG_FORMAT"
	EnvPprofAddress    = "KURA_PPROF_ADDRESS"

	EnvExtensionEnabled            = "KURA_EXTENSION_ENABLED"
	EnvExtensionScriptPath         = "KURA_EXTENSION_SCRIPT_PATH"
	EnvExtensionHookTimeoutMS      = "KURA_EXTENSION_HOOK_TIMEOUT_MS"
	EnvExtensionAllowTTLSeconds    = "KURA_EXTENSION_AUTH_CACHE_ALLOW_TTL_SECONDS"
	EnvExtensionDenyTTLSeconds     = "KURA_EXTENSION_AUTH_CACHE_DENY_TTL_SECONDS"
	EnvExtensionFailClosedAuthn    = "KURA_EXTENSION_FAIL_CLOSED_AUTHENTICATE"
	EnvExtensionFailClosedAuthz    = "KURA_EXTENSION_FAIL_CLOSED_AUTHORIZE"
	EnvExtensionFailOpenRespHeader = "KURA_EXTENSION_FAIL_OPEN_RESPONSE_HEADERS"
	EnvExtensionCacheMaxEntries    = "KURA_EXTENSION_CACHE_MAX_ENTRIES"
	EnvExtensionPoolSize           = "KURA_EXTENSION_POOL_SIZE"
	EnvExtensionHookMemoryBytes    = "KURA_EXTENSION_HOOK_MEMORY_BYTES"

	// Prefixes of the per-resource extension families: <prefix><ID>_<FIELD>.
	EnvSignerPrefix      = "KURA_EXTENSION_SIGNER_"
	EnvJWTVerifierPrefix = "KURA_EXTENSION_JWT_VERIFIER_"
	EnvHTTPClientPrefix  = "KURA_EXTENSION_HTTP_CLIENT_"
	EnvFilePrefix        = "KURA_EXTENSION_FILE_"

	EnvAnalyticsServerURL       = "KURA_ANALYTICS_SERVER_URL"
	EnvAnalyticsSigningKey      = "KURA_ANALYTICS_SIGNING_KEY"
	EnvAnalyticsBatchSize       = "KURA_ANALYTICS_BATCH_SIZE"
	EnvAnalyticsBatchTimeoutMS  = "KURA_ANALYTICS_BATCH_TIMEOUT_MS"
	EnvAnalyticsQueueCapacity   = "KURA_ANALYTICS_QUEUE_CAPACITY"
	EnvAnalyticsRequestTimeout  = "KURA_ANALYTICS_REQUEST_TIMEOUT_MS"
	EnvAnalyticsBreakerFailures = "KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD"
	EnvAnalyticsBreakerOpenMS   = "KURA_ANALYTICS_CIRCUIT_BREAKER_OPEN_MS"
)

// varSpec documents one variable for Usage.
type varSpec struct {
	name    string
	def     string // the default as shown by --help ("auto: rule" for derived values)
	meaning string
	family  bool // a <ID> pattern, not a literal name
}

type varGroup struct {
	title string
	vars  []varSpec
}

// variables is the single table behind Usage and unknown-variable detection, grouped like
// docs/contract.md §1.
var variables = []varGroup{
	{"Listeners and identity", []varSpec{
		{name: EnvBindAddress, def: "0.0.0.0", meaning: "IP address every listener binds to (127.0.0.1 in tests)"},
		{name: EnvPort, def: "4000", meaning: "public HTTP API port"},
		{name: EnvGRPCPort, def: "50051", meaning: "REAPI gRPC port (Bazel, Buck2)"},
		{name: EnvGossipPort, def: "7946", meaning: "memberlist gossip port (TCP and UDP)"},
		{name: EnvInternalPort, def: "7443", meaning: "internal gRPC plane between nodes; never served on the public port"},
		{name: EnvTenantID, def: "default", meaning: "tenant for protocols that carry none, and the mesh identity: nodes only join peers of the same tenant"},
		{name: EnvRegion, def: "local", meaning: "region label advertised in gossip, /up and metrics"},
		{name: EnvNodeURL, def: "http://<hostname>:$KURA_PORT", meaning: "canonical public URL of this node"},
		{name: EnvNodeName, def: "<hostname>", meaning: "unique member name in gossip"},
		{name: EnvPublicTLSCert, def: "empty", meaning: "certificate (PEM chain) for HTTPS on KURA_PORT and TLS on KURA_GRPC_PORT; re-read when the file changes"},
		{name: EnvPublicTLSKey, def: "empty", meaning: "its private key; certificate and key: both or neither"},
		{name: EnvPublicTLSClientCA, def: "empty", meaning: "CA bundle client certificates must chain to; set = client certificates required"},
		{name: EnvHTTPReadHeaderTimeoutMS, def: "10000", meaning: "how long an HTTP client may take to send its request headers before the connection is closed (slowloris)"},
		{name: EnvHTTPBodyIdleTimeoutMS, def: "120000", meaning: "how long an HTTP request body may stall, or a response may fail to drain, before the connection is dropped; a slow but steady transfer is never cut"},
	}},
	{"Lifecycle", []varSpec{
		{name: EnvDrainTimeoutMS, def: "25000", meaning: "one deadline for the whole drain after SIGTERM: in-flight requests, the outbox flush and closing the store"},
		{name: EnvBootstrapTimeoutMS, def: "30000", meaning: "in a cluster, how long a starting node waits for its first anti-entropy round before it reports ready anyway"},
	}},
	{"Storage", []varSpec{
		{name: EnvDataDir, def: "./kura-data", meaning: "persistent state (metadata store, segment files); locked by one process"},
		{name: EnvTmpDir, def: "$KURA_DATA_DIR/tmp", meaning: "staged request bodies and multipart parts"},
		{name: EnvDiskBudgetBytes, def: "auto: 50% of the data directory's filesystem size", meaning: "segment bytes kept before cold data is evicted"},
		{name: EnvMaxKeyValueBytes, def: "1048576", meaning: "keyvalue payload limit (public and replication)"},
		{name: EnvMaxXcodeBytes, def: "268435456 (256 MiB)", meaning: "Xcode CAS upload limit"},
	}},
	{"Retention by age (ages: a Go duration such as 90m or 72h, a number of days such as 30d, or 0 / off)", []varSpec{
		{name: EnvRetentionMaxAge, def: "0 (off)", meaning: "objects not read nor written on this node for longer than this are removed by its retention sweep"},
		{name: EnvRetentionMaxAgePrefix + "<NAMESPACE>", def: "KURA_RETENTION_MAX_AGE", meaning: "the age for one namespace, named by its env form: upper-cased, every character other than A-Z and 0-9 as _ (0 keeps it)", family: true},
		{name: EnvRetentionFile, def: "empty", meaning: "file of \"namespace = age\" lines (exact namespace ids, # comments); wins over the variables above"},
	}},
	{"Cluster", []varSpec{
		{name: EnvPeers, def: "empty", meaning: "seed peers, comma-separated host:port of their gossip listener, or URLs (gossip on $KURA_GOSSIP_PORT)"},
		{name: EnvDiscoveryDNSName, def: "empty", meaning: "DNS name whose A/AAAA (or SRV) records are gossip seeds; re-resolved periodically"},
		{name: EnvDiscoveryDNSServer, def: "empty (system resolver)", meaning: "host:port of the DNS server asked for KURA_DISCOVERY_DNS_NAME"},
		{name: EnvRejoinIntervalMS, def: "15000", meaning: "how often seeds are re-resolved and re-joined, so healed partitions and restarted peers rejoin"},
		{name: EnvAntiEntropyIntervalMS, def: "30000", meaning: "pause between anti-entropy sweeps that compare digests with every peer and pull what is missing"},
		{name: EnvResumableUploadMinBytes, def: "8388608 (8 MiB)", meaning: "smallest blob whose ByteStream upload is staged so a broken upload can resume (QueryWriteStatus); `off` streams every upload straight into the store (cheaper, not resumable)"},
		{name: EnvReadThroughFindTimeoutMS, def: "300", meaning: "how long FindMissingBlobs and an action result's completeness check wait for peers about keys missing here; a peer slower than this counts as not having them"},
		{name: EnvOutboxDropAfterMS, def: "3600000 (1 h)", meaning: "a peer gone this long loses its replication queue; anti-entropy repairs it when it returns"},
		{name: EnvGossipKey, def: "empty", meaning: "base64 AES key (16, 24 or 32 bytes) encrypting gossip; nodes without it never join"},
		{name: EnvInternalTLSCACert, def: "empty", meaning: "CA that client and server certificates of the internal plane must chain to"},
		{name: EnvInternalTLSCert, def: "empty", meaning: "this node's certificate (server and client auth) for the internal plane"},
		{name: EnvInternalTLSKey, def: "empty", meaning: "private key of that certificate; all three TLS paths set = mTLS, some set = error"},
	}},
	{"Runtime budgets (usable_fds = RLIMIT_NOFILE - 128; memory = the smaller of the cgroup limit and physical memory)", []varSpec{
		{name: EnvFDPoolSize, def: "auto: usable_fds/8 clamped to [64, 256]", meaning: "descriptors request and background file I/O may hold at once"},
		{name: EnvFDAcquireTimeoutMS, def: "5000", meaning: "wait for a pooled descriptor before failing with 503 / RESOURCE_EXHAUSTED"},
		{name: EnvSegmentHandleCache, def: "auto: pool/4 clamped to [16, 64], below the pool", meaning: "segment read handles kept open; must stay below the FD pool"},
		{name: EnvMemorySoftLimit, def: "auto: 70% of memory (MiB-rounded), min 128 MiB", meaning: "above it Kura sheds optional memory use (cache admission, refresh)"},
		{name: EnvMemoryHardLimit, def: "auto: 85% of memory (MiB-rounded), >= soft + 64 MiB", meaning: "above it Kura pauses replication work and trims caches"},
		{name: EnvManifestCacheMax, def: "auto: soft/16 (MiB-rounded) clamped to [8, 64] MiB", meaning: "in-memory manifest hot cache; must stay below the soft limit"},
		{name: EnvMetaMaxOpenFiles, def: "auto: usable_fds/2 clamped to [128, 1024]", meaning: "descriptors the metadata store (Pebble) may keep open"},
		{name: EnvMetaMaxBGJobs, def: "auto: CPU count clamped to [1, 8]", meaning: "metadata store flush and compaction concurrency"},
		{name: EnvMetaReadCache, def: "auto: memory/32 (MiB-rounded) clamped to [16, 128] MiB", meaning: "metadata store block cache"},
		{name: EnvMetaWriteBufferPool, def: "auto: memory/32 (MiB-rounded) clamped to [16, 128] MiB", meaning: "total memory for metadata write buffers"},
		{name: EnvMetaWriteBuffer, def: "auto: pool/4 (MiB-rounded) clamped to [4, 32] MiB", meaning: "size of one metadata write buffer (memtable) before flush"},
		{name: EnvMetaMaxWriteBuffers, def: "auto: pool/buffer clamped to [2, 8]", meaning: "metadata write buffers kept in memory before writes stall"},
	}},
	{"Observability", []varSpec{
		{name: EnvOTelEndpoint, def: "empty (tracing off)", meaning: "OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces (without a path: /v1/traces)"},
		{name: EnvOTelServiceName, def: "kura", meaning: "service.name of exported traces"},
		{name: EnvOTelEnvironment, def: "empty", meaning: "deployment.environment of exported traces"},
		{name: EnvLogLevel, def: "info", meaning: "debug, info, warn or error"},
		{name: EnvLogFormat, def: "json", meaning: "json, or text for humans (logs go to stdout)"},
		{name: EnvPprofAddress, def: "empty (off)", meaning: "ip:port of a separate listener serving net/http/pprof under /debug/pprof/; loopback or a private interface only, never the public port"},
	}},
	{"Extensions and policy (<ID> is any name; scripts refer to it case-insensitively)", []varSpec{
		{name: EnvExtensionEnabled, def: "false (true when the script path is set)", meaning: "run the Lua policy script"},
		{name: EnvExtensionScriptPath, def: "empty", meaning: "the Lua script; required and readable when enabled"},
		{name: EnvExtensionHookTimeoutMS, def: "25", meaning: "time limit of one hook call, enforced even against an infinite loop"},
		{name: EnvExtensionAllowTTLSeconds, def: "600", meaning: "how long allow decisions are cached (0 = not cached)"},
		{name: EnvExtensionDenyTTLSeconds, def: "3", meaning: "how long deny decisions are cached (0 = not cached)"},
		{name: EnvExtensionFailClosedAuthn, def: "true", meaning: "a failing authenticate hook answers 401 (false: anonymous)"},
		{name: EnvExtensionFailClosedAuthz, def: "true", meaning: "a failing authorize hook answers 403 (false: allow)"},
		{name: EnvExtensionFailOpenRespHeader, def: "true", meaning: "a failing response_headers hook is skipped and the response goes out without its headers (false: with x-kura-extension-error)"},
		{name: EnvExtensionCacheMaxEntries, def: "100000", meaning: "decisions kept in the cache, least recently used out first"},
		{name: EnvExtensionPoolSize, def: "auto: 4 per CPU, between 4 and 64", meaning: "Lua interpreters running hooks at once"},
		{name: EnvExtensionHookMemoryBytes, def: "32MiB", meaning: "what one hook call may allocate before it is aborted"},
		{name: EnvSignerPrefix + "<ID>_ALGORITHM", def: "hmac-sha256", meaning: "signer <ID> for kura.sign_hmac_base64", family: true},
		{name: EnvSignerPrefix + "<ID>_SECRET", def: "required", meaning: "base64 of the signer's raw key bytes", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_ALGORITHM", def: "HS256 (RS256,ES256 with a JWKS URL)", meaning: "verifier <ID> for kura.jwt_verify: comma-separated HS256, HS384, HS512, or RS256, RS384, RS512, ES256, ES384, ES512", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_SECRET", def: "required for HS*", meaning: "HMAC secret, used as written", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_JWKS_URL", def: "required for RS*/ES*", meaning: "JWKS document of the public keys (an OIDC issuer's jwks_uri)", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_JWKS_REFRESH_SECONDS", def: "300", meaning: "how often the JWKS keys are fetched again (an unknown kid also fetches, at most once a minute)", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_ISSUER", def: "empty (not checked)", meaning: "required iss claim", family: true},
		{name: EnvJWTVerifierPrefix + "<ID>_AUDIENCES", def: "empty (not checked)", meaning: "comma-separated accepted aud values", family: true},
		{name: EnvHTTPClientPrefix + "<ID>_BASE_URL", def: "required", meaning: "base URL of client <ID> for kura.http_json", family: true},
		{name: EnvHTTPClientPrefix + "<ID>_CONNECT_TIMEOUT_MS", def: "500", meaning: "connect timeout", family: true},
		{name: EnvHTTPClientPrefix + "<ID>_REQUEST_TIMEOUT_MS", def: "1500", meaning: "whole-request timeout (the hook's own deadline still applies)", family: true},
		{name: EnvFilePrefix + "<ID>_PATH", def: "required", meaning: "file <ID> for kura.file (a token list, say), re-read within 5 s of a change", family: true},
	}},
	{"Runtime analytics (server URL and signing key: both or neither)", []varSpec{
		{name: EnvAnalyticsServerURL, def: "empty (analytics off)", meaning: "webhook server; events go to /webhooks/cache and /webhooks/gradle-cache"},
		{name: EnvAnalyticsSigningKey, def: "empty", meaning: "HMAC-SHA256 key of the x-cache-signature header"},
		{name: EnvAnalyticsBatchSize, def: "100", meaning: "events per webhook request"},
		{name: EnvAnalyticsBatchTimeoutMS, def: "5000", meaning: "longest wait before a partial batch is sent"},
		{name: EnvAnalyticsQueueCapacity, def: "1000", meaning: "events buffered in memory; beyond it events are dropped, never blocking a request"},
		{name: EnvAnalyticsRequestTimeout, def: "5000", meaning: "timeout of one webhook request"},
		{name: EnvAnalyticsBreakerFailures, def: "5", meaning: "consecutive failures that open a pipeline's circuit breaker"},
		{name: EnvAnalyticsBreakerOpenMS, def: "30000", meaning: "how long the breaker stays open before half-opening"},
	}},
}

// knownVariable reports whether name is a literal variable of the table.
func knownVariable(name string) bool {
	for _, g := range variables {
		for _, v := range g.vars {
			if !v.family && v.name == name {
				return true
			}
		}
	}
	return false
}

// familyFields maps each extension family prefix to its field suffixes.
var familyFields = map[string][]string{
	EnvSignerPrefix:      {"ALGORITHM", "SECRET"},
	EnvJWTVerifierPrefix: {"ALGORITHM", "SECRET", "ISSUER", "AUDIENCES", "JWKS_URL", "JWKS_REFRESH_SECONDS"},
	EnvHTTPClientPrefix:  {"BASE_URL", "CONNECT_TIMEOUT_MS", "REQUEST_TIMEOUT_MS"},
	EnvFilePrefix:        {"PATH"},
}

// splitFamily splits "<prefix><ID>_<FIELD>" into the normalized ID and the field, for a
// known prefix and field. IDs may contain underscores; the longest matching field wins
// (none of the fields is a suffix of another, so the match is unique).
func splitFamily(prefix, name string) (id, field string, ok bool) {
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok {
		return "", "", false
	}
	for _, f := range familyFields[prefix] {
		if raw, found := strings.CutSuffix(rest, "_"+f); found && strings.TrimSpace(raw) != "" {
			return ResourceID(raw), f, true
		}
	}
	return "", "", false
}

// ResourceID normalizes an extension resource id the way the maps of ExtensionConfig are
// keyed: trimmed and upper-cased, so a script's kura.sign_hmac_base64("tuist", …) finds
// KURA_EXTENSION_SIGNER_TUIST_*.
func ResourceID(id string) string { return strings.ToUpper(strings.TrimSpace(id)) }

// Cluster timing defaults, with the reason for each.
const (
	// DefaultRejoinInterval: a restarted peer or a healed partition is back within ~15 s, while
	// DNS and join traffic stays negligible.
	DefaultRejoinInterval = 15 * time.Second
	// DefaultAntiEntropyInterval: the outbox delivers almost everything; sweeps only mop up,
	// and a sweep that finds equal digests costs one 32 KiB exchange per peer.
	DefaultAntiEntropyInterval = 30 * time.Second
	// DefaultOutboxDropAfter: long enough for a reboot or a rolling upgrade to keep its queue,
	// short enough that a decommissioned node's backlog does not grow without bound.
	DefaultOutboxDropAfter = time.Hour
	// DefaultReadThroughFindTimeout: peers in one region answer a batched FindObjects in a few
	// milliseconds; 300 ms keeps a Bazel FindMissingBlobs quick when a peer is slow, while
	// clusters spread over distant regions (or heavily loaded) may need more.
	DefaultReadThroughFindTimeout = 300 * time.Millisecond
	// DefaultResumableUploadMinBytes: below 8 MiB a broken upload costs little to send again,
	// and staging costs a second pass over the bytes (docs/reapi.md).
	DefaultResumableUploadMinBytes = 8 << 20
)
