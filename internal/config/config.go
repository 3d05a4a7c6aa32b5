package config

import (
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// LogFormat selects the slog handler.
type LogFormat string

// The log formats KURA_LOG_FORMAT accepts.
const (
	LogFormatJSON LogFormat = "json"
	LogFormatText LogFormat = "text"
)

// Config is the validated, effective configuration of one node. Every field has a value
// after Load: defaults and derived budgets are filled in.
type Config struct {
	// Listeners: every listener binds BindAddress; the four ports are distinct.
	BindAddress  string // KURA_BIND_ADDRESS, an IP literal
	Port         int    // KURA_PORT, public HTTP API
	GRPCPort     int    // KURA_GRPC_PORT, REAPI
	GossipPort   int    // KURA_GOSSIP_PORT, memberlist TCP+UDP
	InternalPort int    // KURA_INTERNAL_PORT, internal gRPC plane

	// Identity.
	TenantID string // KURA_TENANT_ID
	Region   string // KURA_REGION
	NodeURL  string // KURA_NODE_URL, absolute http(s) URL without trailing slash
	NodeName string // KURA_NODE_NAME

	// PublicTLS serves HTTPS and gRPC over TLS (KURA_PUBLIC_TLS_*); zero = plaintext.
	PublicTLS PublicTLS
	// HTTPReadHeaderTimeout bounds how long a client may take to send its request headers
	// (KURA_HTTP_READ_HEADER_TIMEOUT_MS); HTTPBodyIdleTimeout how long a body transfer may make
	// no progress (KURA_HTTP_BODY_IDLE_TIMEOUT_MS).
	HTTPReadHeaderTimeout, HTTPBodyIdleTimeout time.Duration
	// DrainTimeout is the one deadline of a graceful shutdown (KURA_DRAIN_TIMEOUT_MS).
	DrainTimeout time.Duration
	// BootstrapTimeout bounds how long a node with seeds stays "joining" waiting for its first
	// anti-entropy round (KURA_BOOTSTRAP_TIMEOUT_MS).
	BootstrapTimeout time.Duration

	// Storage. DataDir and TmpDir are absolute and exist (Load created them).
	DataDir          string // KURA_DATA_DIR
	TmpDir           string // KURA_TMP_DIR
	DiskBudgetBytes  int64  // KURA_DISK_BUDGET_BYTES (auto: half the data filesystem)
	MaxKeyValueBytes int64  // KURA_MAX_KEYVALUE_BYTES
	MaxXcodeBytes    int64  // KURA_MAX_XCODE_BYTES
	// Retention removes objects by age of last use (KURA_RETENTION_*); zero = off.
	Retention RetentionConfig

	// Cluster.
	Peers            []Peer   // KURA_PEERS, parsed; nil when unset
	DiscoveryDNSName string   // KURA_DISCOVERY_DNS_NAME
	GossipKey        []byte   // KURA_GOSSIP_KEY decoded: nil, or 16/24/32 bytes
	InternalTLS      TLSFiles // KURA_INTERNAL_TLS_*
	// DiscoveryDNSServer is the host:port of the DNS server asked for DiscoveryDNSName; empty
	// means the system resolver. [beyond] It lets tests and split-horizon setups name their own.
	DiscoveryDNSServer  string        // KURA_DISCOVERY_DNS_SERVER
	RejoinInterval      time.Duration // KURA_GOSSIP_REJOIN_INTERVAL_MS: re-resolve seeds and re-join
	AntiEntropyInterval time.Duration // KURA_ANTI_ENTROPY_INTERVAL_MS: between anti-entropy sweeps
	OutboxDropAfter     time.Duration // KURA_OUTBOX_DROP_AFTER_MS: a departed peer's queue is dropped after this
	// ReadThroughFindTimeout bounds the peers' answer when an existence question
	// (FindMissingBlobs, an action result's completeness check) finds keys missing here
	// (KURA_READ_THROUGH_FIND_TIMEOUT_MS).
	ReadThroughFindTimeout time.Duration
	// ResumableUploadMinBytes is the smallest blob whose ByteStream upload is staged so it can
	// be resumed (KURA_RESUMABLE_UPLOAD_MIN_BYTES); -1 ("off"): no upload is staged.
	ResumableUploadMinBytes int64

	// Budgets holds the runtime budgets (docs/contract.md §6), derived from Host unless set. It is
	// embedded so callers write cfg.FileDescriptorPoolSize as well as cfg.Budgets.
	Budgets
	// Host is what the budgets were derived from.
	Host Host

	OTel      OTelConfig
	LogLevel  slog.Level // KURA_LOG_LEVEL
	LogFormat LogFormat  // KURA_LOG_FORMAT
	// PprofAddress is the ip:port of the opt-in profiling listener (KURA_PPROF_ADDRESS); empty
	// = off. Its port is never one of the node's own listeners.
	PprofAddress string

	Extension ExtensionConfig
	Analytics AnalyticsConfig

	// Derived lists, sorted, the variables whose value was derived ("auto") rather than set.
	Derived []string
	// Warnings are non-fatal observations to log at startup (unknown KURA_* variables,
	// budgets larger than the host), sorted within each kind.
	Warnings []string
}

// TLSFiles are the internal plane's mTLS files; all three set or none.
type TLSFiles struct {
	CACertPath string // KURA_INTERNAL_TLS_CA_CERT_PATH
	CertPath   string // KURA_INTERNAL_TLS_CERT_PATH
	KeyPath    string // KURA_INTERNAL_TLS_KEY_PATH
}

// Enabled reports whether mTLS is configured (Load guarantees all three or none).
func (t TLSFiles) Enabled() bool { return t.CACertPath != "" && t.CertPath != "" && t.KeyPath != "" }

// PublicTLS are the files of the public listeners' TLS.
type PublicTLS struct {
	CertPath     string // KURA_PUBLIC_TLS_CERT_PATH
	KeyPath      string // KURA_PUBLIC_TLS_KEY_PATH
	ClientCAPath string // KURA_PUBLIC_TLS_CLIENT_CA_PATH; empty = no client certificates asked
}

// Enabled reports whether the public listeners serve TLS (Load guarantees cert and key together).
func (t PublicTLS) Enabled() bool { return t.CertPath != "" && t.KeyPath != "" }

// Defaults of the lifecycle, with their reasons.
const (
	// DefaultDrainTimeout stays below Kubernetes' default 30 s termination grace period, so
	// the drain finishes before the kubelet's SIGKILL.
	DefaultDrainTimeout = 25 * time.Second
	// DefaultBootstrapTimeout: an empty or small cluster bootstraps in a second; a node whose
	// peers are all down must still become ready and serve what it has.
	DefaultBootstrapTimeout = 30 * time.Second
	// DefaultHTTPReadHeaderTimeout and DefaultHTTPBodyIdleTimeout: headers are a few KiB, so
	// 10 s is generous even on a bad link; a body gets two minutes without progress because a
	// build client may pause while it produces the next chunk.
	DefaultHTTPReadHeaderTimeout = 10 * time.Second
	DefaultHTTPBodyIdleTimeout   = 2 * time.Minute
)

// OTelConfig configures OTLP/HTTP trace export.
type OTelConfig struct {
	TracesEndpoint        string // KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; empty = tracing off
	ServiceName           string // KURA_OTEL_SERVICE_NAME, "kura"
	DeploymentEnvironment string // KURA_OTEL_DEPLOYMENT_ENVIRONMENT
}

// Enabled reports whether traces are exported.
func (o OTelConfig) Enabled() bool { return o.TracesEndpoint != "" }

// RedactedEndpoint is TracesEndpoint with any credentials in it replaced, for logs.
func (o OTelConfig) RedactedEndpoint() string { return redactURL(o.TracesEndpoint) }

// AnalyticsConfig configures the runtime analytics webhooks (docs/contract.md §9).
type AnalyticsConfig struct {
	ServerURL                      string        // KURA_ANALYTICS_SERVER_URL, no trailing slash; empty = off
	SigningKey                     string        // KURA_ANALYTICS_SIGNING_KEY, HMAC key as written
	BatchSize                      int           // KURA_ANALYTICS_BATCH_SIZE, 100
	BatchTimeout                   time.Duration // KURA_ANALYTICS_BATCH_TIMEOUT_MS, 5s
	QueueCapacity                  int           // KURA_ANALYTICS_QUEUE_CAPACITY, 1000
	RequestTimeout                 time.Duration // KURA_ANALYTICS_REQUEST_TIMEOUT_MS, 5s
	CircuitBreakerFailureThreshold int           // KURA_ANALYTICS_CIRCUIT_BREAKER_FAILURE_THRESHOLD, 5
	CircuitBreakerOpen             time.Duration // KURA_ANALYTICS_CIRCUIT_BREAKER_OPEN_MS, 30s
}

// Enabled reports whether analytics are sent (Load guarantees URL and key together).
func (a AnalyticsConfig) Enabled() bool { return a.ServerURL != "" }

// HTTPAddr is the public HTTP listen address.
func (c *Config) HTTPAddr() string { return joinPort(c.BindAddress, c.Port) }

// GRPCAddr is the REAPI listen address.
func (c *Config) GRPCAddr() string { return joinPort(c.BindAddress, c.GRPCPort) }

// GossipAddr is the memberlist bind address (TCP and UDP).
func (c *Config) GossipAddr() string { return joinPort(c.BindAddress, c.GossipPort) }

// InternalAddr is the internal gRPC plane's listen address.
func (c *Config) InternalAddr() string { return joinPort(c.BindAddress, c.InternalPort) }

func joinPort(host string, port int) string { return net.JoinHostPort(host, strconv.Itoa(port)) }

// Options injects what Load would otherwise take from the machine, so tests are hermetic.
type Options struct {
	// Host, when set, is used as is instead of probing.
	Host *Host
	// Probe detects the Host when Host is nil; its zero value probes the real machine.
	Probe HostProbe
	// Hostname supplies the default node name and URL; nil uses os.Hostname.
	Hostname func() (string, error)
	// FilesystemSize returns the total bytes of the filesystem holding a directory, for
	// the auto disk budget; nil uses statfs(2).
	FilesystemSize func(dir string) (uint64, error)
}

// Load builds the configuration from environ (formatted like os.Environ(); the real
// environment is never read) and the real machine. It returns a *ValidationError listing
// every problem found.
func Load(environ []string) (*Config, error) { return LoadWith(environ, Options{}) }

// LoadWith is Load with injected host probes.
func LoadWith(environ []string, opts Options) (*Config, error) {
	c, p := load(environ, opts)
	if len(p.problems) > 0 {
		return nil, &ValidationError{Problems: p.problems}
	}
	return c, nil
}

func load(environ []string, opts Options) (*Config, *parser) {
	p := newParser(environ)
	c := &Config{}
	p.listeners(c)
	p.identity(c, opts.Hostname)
	p.storage(c, opts.FilesystemSize)
	p.retention(c)
	p.cluster(c)
	p.runtime(c, opts)
	p.observability(c)
	c.Extension = p.extension()
	c.Analytics = p.analytics()
	c.Warnings = append(c.Warnings, p.unknownVariables()...)
	sort.Strings(c.Derived)
	return c, p
}

// listeners reads the bind address and the four ports, which must all differ.
func (p *parser) listeners(c *Config) {
	c.BindAddress = p.str(EnvBindAddress, "0.0.0.0")
	if net.ParseIP(c.BindAddress) == nil {
		p.problem(EnvBindAddress, "%q is not an IP address (0.0.0.0 or :: listen on all interfaces)", c.BindAddress)
	}
	c.Port = p.port(EnvPort, 4000)
	c.GRPCPort = p.port(EnvGRPCPort, 50051)
	c.GossipPort = p.port(EnvGossipPort, 7946)
	c.InternalPort = p.port(EnvInternalPort, 7443)
	listeners := []struct {
		name string
		port int
	}{{EnvPort, c.Port}, {EnvGRPCPort, c.GRPCPort}, {EnvGossipPort, c.GossipPort}, {EnvInternalPort, c.InternalPort}}
	for i, l := range listeners {
		for _, earlier := range listeners[:i] {
			if l.port == earlier.port && !p.failed(l.name, earlier.name) {
				p.problem(l.name, "port %d is already %s's; every listener needs its own port", l.port, earlier.name)
				break
			}
		}
	}
}

// identity reads tenant, region, node name and node URL. The hostname, which defaults the
// last two, is read at most once and only when one of them is unset; nil uses os.Hostname.
// It needs c.Port, so listeners runs first.
func (p *parser) identity(c *Config, hostnameFunc func() (string, error)) {
	if hostnameFunc == nil {
		hostnameFunc = os.Hostname
	}
	hostname := sync.OnceValues(func() (string, error) {
		h, err := hostnameFunc()
		if err == nil && h == "" {
			err = fmt.Errorf("hostname is empty")
		}
		return h, err
	})
	c.TenantID = p.str(EnvTenantID, "default")
	p.identifier(EnvTenantID, c.TenantID, 128)
	c.Region = p.str(EnvRegion, "local")
	p.identifier(EnvRegion, c.Region, 64)
	if v, ok := p.get(EnvNodeName); ok {
		c.NodeName = v
		p.identifier(EnvNodeName, v, 128)
	} else if h, err := hostname(); err != nil {
		p.problem(EnvNodeName, "not set, and the hostname cannot be read to default it: %v", err)
	} else {
		c.NodeName = h
	}
	if v, ok := p.get(EnvNodeURL); ok {
		u, err := httpURL(v)
		if err != nil {
			p.problem(EnvNodeURL, "%v", err)
		}
		c.NodeURL = u
	} else if h, err := hostname(); err != nil {
		p.problem(EnvNodeURL, "not set, and the hostname cannot be read to default it: %v", err)
	} else {
		c.NodeURL = "http://" + joinPort(h, c.Port)
	}
}

// storage reads the data and staging directories, the disk budget (auto = half of the
// filesystem; fsSize nil uses statfs(2)) and the body limits.
func (p *parser) storage(c *Config, fsSize func(dir string) (uint64, error)) {
	c.DataDir = p.dir(EnvDataDir, "./kura-data")
	if _, set := p.get(EnvTmpDir); set || !p.failed(EnvDataDir) {
		c.TmpDir = p.dir(EnvTmpDir, filepath.Join(c.DataDir, "tmp"))
	} else {
		// The default lives inside the data directory, whose problem already covers it.
		c.TmpDir = filepath.Join(c.DataDir, "tmp")
	}
	if fsSize == nil {
		fsSize = filesystemSize
	}
	c.DiskBudgetBytes = p.autoSize(EnvDiskBudgetBytes, MiB)
	if !p.failed(EnvDataDir, EnvDiskBudgetBytes) {
		size, err := fsSize(c.DataDir)
		switch {
		case c.DiskBudgetBytes == 0 && err != nil:
			p.problem(EnvDiskBudgetBytes, "auto needs the size of the filesystem holding %s, which cannot be read (%v); set it explicitly", c.DataDir, err)
		case c.DiskBudgetBytes == 0 && size/2 < uint64(MiB):
			p.problem(EnvDiskBudgetBytes, "auto gives %d bytes (half of the %d-byte filesystem holding %s); set it explicitly", size/2, size, c.DataDir)
		case c.DiskBudgetBytes == 0:
			c.DiskBudgetBytes = int64(min(size/2, 1<<62))
			c.Derived = append(c.Derived, EnvDiskBudgetBytes)
		case err == nil && uint64(c.DiskBudgetBytes) > size:
			c.Warnings = append(c.Warnings, fmt.Sprintf("%s: %s is more than the %s filesystem holding %s; the disk fills before eviction starts",
				EnvDiskBudgetBytes, formatBytes(c.DiskBudgetBytes), formatBytes(int64(min(size, 1<<62))), c.DataDir))
		}
	}
	c.MaxKeyValueBytes = p.size(EnvMaxKeyValueBytes, 1048576, 1)
	c.MaxXcodeBytes = p.size(EnvMaxXcodeBytes, 256*MiB, 1)
}

// cluster reads seeds, discovery, the periodic intervals, the gossip key, both TLS sets and
// the drain and bootstrap deadlines. It needs c.GossipPort, the default port of a seed.
func (p *parser) cluster(c *Config) {
	if v, ok := p.get(EnvPeers); ok {
		var problems []string
		c.Peers, problems = parsePeers(v, c.GossipPort)
		for _, m := range problems {
			p.problem(EnvPeers, "%s", m)
		}
	}
	c.DiscoveryDNSName = p.str(EnvDiscoveryDNSName, "")
	if c.DiscoveryDNSName != "" && !validHostname(c.DiscoveryDNSName) {
		p.problem(EnvDiscoveryDNSName, "%q is not a valid DNS name", c.DiscoveryDNSName)
	}
	c.DiscoveryDNSServer = p.str(EnvDiscoveryDNSServer, "")
	if c.DiscoveryDNSServer != "" {
		if _, port, err := net.SplitHostPort(c.DiscoveryDNSServer); err != nil || port == "" {
			p.problem(EnvDiscoveryDNSServer, "%q is not host:port", c.DiscoveryDNSServer)
		}
	}
	c.RejoinInterval = p.duration(EnvRejoinIntervalMS, DefaultRejoinInterval, time.Millisecond, 100)
	c.AntiEntropyInterval = p.duration(EnvAntiEntropyIntervalMS, DefaultAntiEntropyInterval, time.Millisecond, 100)
	c.OutboxDropAfter = p.duration(EnvOutboxDropAfterMS, DefaultOutboxDropAfter, time.Millisecond, 1000)
	c.ReadThroughFindTimeout = p.duration(EnvReadThroughFindTimeoutMS, DefaultReadThroughFindTimeout, time.Millisecond, 1)
	c.ResumableUploadMinBytes = DefaultResumableUploadMinBytes
	if v, ok := p.get(EnvResumableUploadMinBytes); ok {
		if strings.EqualFold(v, "off") {
			c.ResumableUploadMinBytes = -1
		} else {
			c.ResumableUploadMinBytes = p.parseSize(EnvResumableUploadMinBytes, v, DefaultResumableUploadMinBytes, 1)
		}
	}
	if v, ok := p.get(EnvGossipKey); ok {
		key, err := base64.StdEncoding.DecodeString(v)
		switch {
		case err != nil:
			p.problem(EnvGossipKey, "is not valid base64: %v", err)
		case len(key) != 16 && len(key) != 24 && len(key) != 32:
			p.problem(EnvGossipKey, "decodes to %d bytes; an AES key is 16, 24 or 32 bytes (e.g. `head -c 32 /dev/urandom | base64`)", len(key))
		default:
			c.GossipKey = key
		}
	}
	c.InternalTLS = p.tlsFiles()
	c.PublicTLS = p.publicTLS()
	c.DrainTimeout = p.duration(EnvDrainTimeoutMS, DefaultDrainTimeout, time.Millisecond, 100)
	c.HTTPReadHeaderTimeout = p.duration(EnvHTTPReadHeaderTimeoutMS, DefaultHTTPReadHeaderTimeout, time.Millisecond, 100)
	c.HTTPBodyIdleTimeout = p.duration(EnvHTTPBodyIdleTimeoutMS, DefaultHTTPBodyIdleTimeout, time.Millisecond, 100)
	c.BootstrapTimeout = p.duration(EnvBootstrapTimeoutMS, DefaultBootstrapTimeout, time.Millisecond, 0)
}

// runtime detects the host (or takes the injected one) and derives the runtime budgets
// from it, keeping the variables derived so far (the disk budget) in c.Derived.
func (p *parser) runtime(c *Config, opts Options) {
	if opts.Host != nil {
		c.Host = *opts.Host
	} else {
		c.Host = opts.Probe.Detect()
	}
	c.Budgets, c.Derived = p.budgets(c.Host, c.Derived)
	c.Warnings = append(c.Warnings, budgetWarnings(c)...)
}

// observability reads the OTLP traces endpoint, the service identity and the log settings.
func (p *parser) observability(c *Config) {
	p.pprof(c)
	if v, ok := p.get(EnvOTelEndpoint); ok {
		u, err := httpURL(v)
		if err != nil {
			p.problem(EnvOTelEndpoint, "%v", err)
		}
		c.OTel.TracesEndpoint = u
	}
	c.OTel.ServiceName = p.str(EnvOTelServiceName, "kura")
	c.OTel.DeploymentEnvironment = p.str(EnvOTelEnvironment, "")
	c.LogLevel = slog.LevelInfo
	if v, ok := p.get(EnvLogLevel); ok {
		switch strings.ToLower(v) {
		case "debug":
			c.LogLevel = slog.LevelDebug
		case "info":
			c.LogLevel = slog.LevelInfo
		case "warn", "warning":
			c.LogLevel = slog.LevelWarn
		case "error":
			c.LogLevel = slog.LevelError
		default:
			p.problem(EnvLogLevel, "%q is not a log level (debug, info, warn, error)", v)
		}
	}
	c.LogFormat = LogFormatJSON
	if v, ok := p.get(EnvLogFormat); ok {
		switch f := LogFormat(strings.ToLower(v)); f {
		case LogFormatJSON, LogFormatText:
			c.LogFormat = f
		default:
			p.problem(EnvLogFormat, "%q is not a log format (json, text)", v)
		}
	}
}

// dir resolves a directory variable to an absolute path and proves it can be created and
// written, so a bad volume mount fails at startup with the variable's name rather than on
// the first upload.
func (p *parser) dir(name, def string) string {
	d := p.str(name, def)
	abs, err := filepath.Abs(d)
	if err != nil {
		p.problem(name, "cannot resolve %q to an absolute path: %v", d, err)
		return d
	}
	if err := os.MkdirAll(abs, 0o750); err != nil {
		p.problem(name, "cannot create the directory: %v", err)
		return abs
	}
	probe, err := os.CreateTemp(abs, ".kura-write-probe-*")
	if err != nil {
		p.problem(name, "directory %s is not writable: %v", abs, err)
		return abs
	}
	// The probe only proved writability; failing to remove it would itself be reported
	// by the next start, so the errors are not interesting here.
	_ = probe.Close()
	_ = os.Remove(probe.Name())
	return abs
}

func (p *parser) tlsFiles() TLSFiles {
	names := []string{EnvInternalTLSCACert, EnvInternalTLSCert, EnvInternalTLSKey}
	values := make([]string, len(names))
	var set []string
	for i, n := range names {
		values[i] = p.str(n, "")
		if values[i] != "" {
			set = append(set, n)
		}
	}
	switch len(set) {
	case 0:
		return TLSFiles{}
	case len(names):
		for i, n := range names {
			if err := checkReadableFile(values[i]); err != nil {
				p.problem(n, "cannot read the file: %v", err)
			}
		}
	default:
		verb := "is"
		if len(set) > 1 {
			verb = "are"
		}
		for i, n := range names {
			if values[i] == "" {
				p.problem(n, "must be set because %s %s: internal mTLS needs all three TLS paths (or none)", strings.Join(set, " and "), verb)
			}
		}
	}
	return TLSFiles{CACertPath: values[0], CertPath: values[1], KeyPath: values[2]}
}

func (p *parser) publicTLS() PublicTLS {
	t := PublicTLS{
		CertPath:     p.str(EnvPublicTLSCert, ""),
		KeyPath:      p.str(EnvPublicTLSKey, ""),
		ClientCAPath: p.str(EnvPublicTLSClientCA, ""),
	}
	switch {
	case t.CertPath != "" && t.KeyPath == "":
		p.problem(EnvPublicTLSKey, "must be set because %s is: public TLS needs the certificate and its key", EnvPublicTLSCert)
	case t.KeyPath != "" && t.CertPath == "":
		p.problem(EnvPublicTLSCert, "must be set because %s is: public TLS needs the certificate and its key", EnvPublicTLSKey)
	}
	if t.ClientCAPath != "" && !t.Enabled() {
		p.problem(EnvPublicTLSClientCA, "needs %s and %s: client certificates are asked for only over TLS", EnvPublicTLSCert, EnvPublicTLSKey)
	}
	for name, path := range map[string]string{EnvPublicTLSCert: t.CertPath, EnvPublicTLSKey: t.KeyPath, EnvPublicTLSClientCA: t.ClientCAPath} {
		if path != "" {
			if err := checkReadableFile(path); err != nil {
				p.problem(name, "cannot read the file: %v", err)
			}
		}
	}
	return t
}

// budgets parses the budget overrides, derives the rest from h and checks the relations
// between them. derived gets the names of the variables left to derivation.
func (p *parser) budgets(h Host, derived []string) (Budgets, []string) {
	set := Budgets{
		FileDescriptorPoolSize:            p.autoCount(EnvFDPoolSize, 2),
		FileDescriptorAcquireTimeout:      p.duration(EnvFDAcquireTimeoutMS, DefaultFileDescriptorAcquireTimeout, time.Millisecond, 1),
		SegmentHandleCacheSize:            p.autoCount(EnvSegmentHandleCache, 1),
		MemorySoftLimitBytes:              p.autoSize(EnvMemorySoftLimit, MiB),
		MemoryHardLimitBytes:              p.autoSize(EnvMemoryHardLimit, MiB),
		ManifestCacheMaxBytes:             p.autoSize(EnvManifestCacheMax, MiB),
		MetadataStoreMaxOpenFiles:         p.autoCount(EnvMetaMaxOpenFiles, 1),
		MetadataStoreMaxBackgroundJobs:    p.autoCount(EnvMetaMaxBGJobs, 1),
		MetadataStoreReadCacheBytes:       p.autoSize(EnvMetaReadCache, MiB),
		MetadataStoreWriteBufferPoolBytes: p.autoSize(EnvMetaWriteBufferPool, MiB),
		MetadataStoreWriteBufferBytes:     p.autoSize(EnvMetaWriteBuffer, MiB),
		MetadataStoreMaxWriteBuffers:      p.autoCount(EnvMetaMaxWriteBuffers, 2),
	}
	auto := map[string]bool{
		EnvFDPoolSize:          set.FileDescriptorPoolSize == 0,
		EnvSegmentHandleCache:  set.SegmentHandleCacheSize == 0,
		EnvMemorySoftLimit:     set.MemorySoftLimitBytes == 0,
		EnvMemoryHardLimit:     set.MemoryHardLimitBytes == 0,
		EnvManifestCacheMax:    set.ManifestCacheMaxBytes == 0,
		EnvMetaMaxOpenFiles:    set.MetadataStoreMaxOpenFiles == 0,
		EnvMetaMaxBGJobs:       set.MetadataStoreMaxBackgroundJobs == 0,
		EnvMetaReadCache:       set.MetadataStoreReadCacheBytes == 0,
		EnvMetaWriteBufferPool: set.MetadataStoreWriteBufferPoolBytes == 0,
		EnvMetaWriteBuffer:     set.MetadataStoreWriteBufferBytes == 0,
		EnvMetaMaxWriteBuffers: set.MetadataStoreMaxWriteBuffers == 0,
	}
	for name, isAuto := range auto {
		if isAuto {
			derived = append(derived, name)
		}
	}
	b := deriveBudgets(h, set)

	note := func(name string) string {
		if auto[name] {
			return " (auto)"
		}
		return ""
	}
	if b.SegmentHandleCacheSize >= b.FileDescriptorPoolSize && !p.failed(EnvSegmentHandleCache, EnvFDPoolSize) {
		p.problem(EnvSegmentHandleCache, "%d must be below %s %d%s, so transient file work always finds a descriptor",
			b.SegmentHandleCacheSize, EnvFDPoolSize, b.FileDescriptorPoolSize, note(EnvFDPoolSize))
	}
	if b.MemorySoftLimitBytes > b.MemoryHardLimitBytes && !p.failed(EnvMemorySoftLimit, EnvMemoryHardLimit) {
		p.problem(EnvMemorySoftLimit, "%s%s is above %s %s%s; the soft watermark must come first",
			formatBytes(b.MemorySoftLimitBytes), note(EnvMemorySoftLimit), EnvMemoryHardLimit, formatBytes(b.MemoryHardLimitBytes), note(EnvMemoryHardLimit))
	}
	if b.ManifestCacheMaxBytes >= b.MemorySoftLimitBytes && !p.failed(EnvManifestCacheMax, EnvMemorySoftLimit) {
		p.problem(EnvManifestCacheMax, "%s%s must be below %s %s%s, or warming the cache alone crosses the watermark",
			formatBytes(b.ManifestCacheMaxBytes), note(EnvManifestCacheMax), EnvMemorySoftLimit, formatBytes(b.MemorySoftLimitBytes), note(EnvMemorySoftLimit))
	}
	if b.MetadataStoreWriteBufferBytes > b.MetadataStoreWriteBufferPoolBytes && !p.failed(EnvMetaWriteBuffer, EnvMetaWriteBufferPool) {
		p.problem(EnvMetaWriteBuffer, "%s%s is larger than %s %s%s; one buffer cannot exceed the pool",
			formatBytes(b.MetadataStoreWriteBufferBytes), note(EnvMetaWriteBuffer), EnvMetaWriteBufferPool, formatBytes(b.MetadataStoreWriteBufferPoolBytes), note(EnvMetaWriteBufferPool))
	}
	return b, derived
}

// budgetWarnings flags budgets that do not fit the host: legal (an operator may know
// better, e.g. a limit raised after start) but worth a line in the log.
func budgetWarnings(c *Config) []string {
	var w []string
	b, h := c.Budgets, c.Host
	if need := b.FileDescriptorPoolSize + b.MetadataStoreMaxOpenFiles + ReservedFileDescriptors; need > h.FileDescriptorLimit {
		w = append(w, fmt.Sprintf("file descriptors: FD pool %d + metadata store %d + %d reserved = %d exceeds the limit of %d (%s); raise the limit (ulimit -n) or lower %s / %s",
			b.FileDescriptorPoolSize, b.MetadataStoreMaxOpenFiles, ReservedFileDescriptors, need, h.FileDescriptorLimit, h.FileDescriptorSource, EnvFDPoolSize, EnvMetaMaxOpenFiles))
	}
	if b.MemoryHardLimitBytes > h.MemoryLimitBytes {
		w = append(w, fmt.Sprintf("%s: %s is above the detected memory limit %s (%s); the process may be killed before the watermark is reached",
			EnvMemoryHardLimit, formatBytes(b.MemoryHardLimitBytes), formatBytes(h.MemoryLimitBytes), h.MemorySource))
	}
	return w
}

func (p *parser) analytics() AnalyticsConfig {
	a := AnalyticsConfig{}
	url, urlSet := p.get(EnvAnalyticsServerURL)
	key, keySet := p.get(EnvAnalyticsSigningKey)
	switch {
	case urlSet && !keySet:
		p.problem(EnvAnalyticsSigningKey, "must be set because %s is (analytics need both or neither)", EnvAnalyticsServerURL)
	case keySet && !urlSet:
		p.problem(EnvAnalyticsServerURL, "must be set because %s is (analytics need both or neither)", EnvAnalyticsSigningKey)
	}
	if urlSet {
		u, err := httpURL(url)
		if err != nil {
			p.problem(EnvAnalyticsServerURL, "%v", err)
		}
		a.ServerURL = u
	}
	a.SigningKey = key
	a.BatchSize = p.count(EnvAnalyticsBatchSize, 100, 1)
	a.BatchTimeout = p.duration(EnvAnalyticsBatchTimeoutMS, 5*time.Second, time.Millisecond, 1)
	a.QueueCapacity = p.count(EnvAnalyticsQueueCapacity, 1000, 1)
	a.RequestTimeout = p.duration(EnvAnalyticsRequestTimeout, 5*time.Second, time.Millisecond, 1)
	a.CircuitBreakerFailureThreshold = p.count(EnvAnalyticsBreakerFailures, 5, 1)
	a.CircuitBreakerOpen = p.duration(EnvAnalyticsBreakerOpenMS, 30*time.Second, time.Millisecond, 1)
	return a
}

// unknownVariables warns about KURA_* names nothing reads: almost always a typo that would
// otherwise silently leave a default in place.
func (p *parser) unknownVariables() []string {
	var w []string
	for name := range p.env {
		if !strings.HasPrefix(name, "KURA_") || knownVariable(name) || strings.HasPrefix(name, EnvRetentionMaxAgePrefix) {
			continue
		}
		family := false
		for prefix := range familyFields {
			if _, _, ok := splitFamily(prefix, name); ok {
				family = true
			}
		}
		if !family {
			w = append(w, fmt.Sprintf("%s: unknown variable, ignored (kura --help lists every variable)", name))
		}
	}
	sort.Strings(w)
	return w
}
