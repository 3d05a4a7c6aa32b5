package config

import (
	"log/slog"
	"net/url"
	"sort"
	"strings"
)

// LogAttrs describes the effective configuration for the startup log, one group per
// area, e.g. logger.LogAttrs(ctx, slog.LevelInfo, "configuration", cfg.LogAttrs()...).
// Secrets (gossip key, analytics signing key, signer and JWT secrets) are shown only as
// "(set)" or "(unset)", and passwords in URLs are masked.
func (c *Config) LogAttrs() []slog.Attr {
	peers := make([]string, len(c.Peers))
	for i, p := range c.Peers {
		peers[i] = p.Addr()
	}
	b := c.Budgets
	return []slog.Attr{
		slog.Group("listen",
			slog.String("bind_address", c.BindAddress),
			slog.Int("http_port", c.Port),
			slog.Int("grpc_port", c.GRPCPort),
			slog.Int("gossip_port", c.GossipPort),
			slog.Int("internal_port", c.InternalPort),
			slog.String("pprof_address", c.PprofAddress),
			slog.Bool("public_tls", c.PublicTLS.Enabled()),
			slog.String("public_tls_cert_path", c.PublicTLS.CertPath),
			slog.String("public_tls_client_ca_path", c.PublicTLS.ClientCAPath),
		),
		slog.Group("lifecycle",
			slog.Duration("drain_timeout", c.DrainTimeout),
			slog.Duration("http_read_header_timeout", c.HTTPReadHeaderTimeout),
			slog.Duration("http_body_idle_timeout", c.HTTPBodyIdleTimeout),
			slog.Duration("bootstrap_timeout", c.BootstrapTimeout),
		),
		slog.Group("node",
			slog.String("tenant_id", c.TenantID),
			slog.String("region", c.Region),
			slog.String("name", c.NodeName),
			slog.String("url", redactURL(c.NodeURL)),
		),
		slog.Group("storage",
			slog.String("data_dir", c.DataDir),
			slog.String("tmp_dir", c.TmpDir),
			slog.Int64("disk_budget_bytes", c.DiskBudgetBytes),
			slog.Int64("max_keyvalue_bytes", c.MaxKeyValueBytes),
			slog.Int64("max_xcode_bytes", c.MaxXcodeBytes),
		),
		slog.Group("retention",
			slog.Duration("max_age", c.Retention.MaxAge),
			slog.Int("namespace_overrides", len(c.Retention.ByEnvName)+len(c.Retention.ByNamespace)),
			slog.String("file", c.Retention.File),
			slog.Duration("sweep_interval", c.Retention.SweepInterval),
		),
		slog.Group("cluster",
			slog.Any("peers", peers),
			slog.String("discovery_dns_name", c.DiscoveryDNSName),
			slog.String("discovery_dns_server", c.DiscoveryDNSServer),
			slog.Duration("rejoin_interval", c.RejoinInterval),
			slog.Duration("anti_entropy_interval", c.AntiEntropyInterval),
			slog.Duration("outbox_drop_after", c.OutboxDropAfter),
			slog.Duration("read_through_find_timeout", c.ReadThroughFindTimeout),
			slog.Int64("resumable_upload_min_bytes", c.ResumableUploadMinBytes),
			slog.String("gossip_key", secret(len(c.GossipKey) > 0)),
			slog.Bool("internal_mtls", c.InternalTLS.Enabled()),
			slog.String("internal_tls_ca_cert_path", c.InternalTLS.CACertPath),
			slog.String("internal_tls_cert_path", c.InternalTLS.CertPath),
			slog.String("internal_tls_key_path", c.InternalTLS.KeyPath),
		),
		slog.Group("host",
			slog.Int("file_descriptor_limit", c.Host.FileDescriptorLimit),
			slog.String("file_descriptor_source", c.Host.FileDescriptorSource),
			slog.Int64("memory_limit_bytes", c.Host.MemoryLimitBytes),
			slog.String("memory_source", c.Host.MemorySource),
			slog.Int("cpu_count", c.Host.CPUCount),
		),
		slog.Group("budgets",
			slog.Int("file_descriptor_pool_size", b.FileDescriptorPoolSize),
			slog.Duration("file_descriptor_acquire_timeout", b.FileDescriptorAcquireTimeout),
			slog.Int("segment_handle_cache_size", b.SegmentHandleCacheSize),
			slog.Int64("memory_soft_limit_bytes", b.MemorySoftLimitBytes),
			slog.Int64("memory_hard_limit_bytes", b.MemoryHardLimitBytes),
			slog.Int64("manifest_cache_max_bytes", b.ManifestCacheMaxBytes),
			slog.Int("metadata_store_max_open_files", b.MetadataStoreMaxOpenFiles),
			slog.Int("metadata_store_max_background_jobs", b.MetadataStoreMaxBackgroundJobs),
			slog.Int64("metadata_store_read_cache_bytes", b.MetadataStoreReadCacheBytes),
			slog.Int64("metadata_store_write_buffer_pool_bytes", b.MetadataStoreWriteBufferPoolBytes),
			slog.Int64("metadata_store_write_buffer_bytes", b.MetadataStoreWriteBufferBytes),
			slog.Int("metadata_store_max_write_buffers", b.MetadataStoreMaxWriteBuffers),
			slog.Any("derived", c.Derived),
		),
		slog.Group("otel",
			slog.String("traces_endpoint", redactURL(c.OTel.TracesEndpoint)),
			slog.String("service_name", c.OTel.ServiceName),
			slog.String("deployment_environment", c.OTel.DeploymentEnvironment),
		),
		slog.Group("log",
			slog.String("level", c.LogLevel.String()),
			slog.String("format", string(c.LogFormat)),
		),
		c.Extension.logAttr(),
		slog.Group("analytics",
			slog.Bool("enabled", c.Analytics.Enabled()),
			slog.String("server_url", redactURL(c.Analytics.ServerURL)),
			slog.String("signing_key", secret(c.Analytics.SigningKey != "")),
			slog.Int("batch_size", c.Analytics.BatchSize),
			slog.Duration("batch_timeout", c.Analytics.BatchTimeout),
			slog.Int("queue_capacity", c.Analytics.QueueCapacity),
			slog.Duration("request_timeout", c.Analytics.RequestTimeout),
			slog.Int("circuit_breaker_failure_threshold", c.Analytics.CircuitBreakerFailureThreshold),
			slog.Duration("circuit_breaker_open", c.Analytics.CircuitBreakerOpen),
		),
	}
}

func (e ExtensionConfig) logAttr() slog.Attr {
	var signers, verifiers, clients []string
	for id, s := range e.Signers {
		signers = append(signers, id+" "+s.Algorithm+" secret="+secret(len(s.Secret) > 0))
	}
	for id, j := range e.JWTVerifiers {
		verifiers = append(verifiers, id+" "+strings.Join(j.Algorithms, ",")+" secret="+secret(len(j.Secret) > 0)+
			" jwks="+redactURL(j.JWKSURL)+" issuer="+j.Issuer+" audiences="+strings.Join(j.Audiences, ","))
	}
	for id, h := range e.HTTPClients {
		clients = append(clients, id+" "+redactURL(h.BaseURL)+" connect="+h.ConnectTimeout.String()+" request="+h.RequestTimeout.String())
	}
	sort.Strings(signers)
	sort.Strings(verifiers)
	sort.Strings(clients)
	return slog.Group("extension",
		slog.Bool("enabled", e.Enabled),
		slog.String("script_path", e.ScriptPath),
		slog.Duration("hook_timeout", e.HookTimeout),
		slog.Duration("auth_cache_allow_ttl", e.AuthCacheAllowTTL),
		slog.Duration("auth_cache_deny_ttl", e.AuthCacheDenyTTL),
		slog.Bool("fail_closed_authenticate", e.FailClosedAuthenticate),
		slog.Bool("fail_closed_authorize", e.FailClosedAuthorize),
		slog.Bool("fail_open_response_headers", e.FailOpenResponseHeaders),
		slog.Int("cache_max_entries", e.CacheMaxEntries),
		slog.Int("pool_size", e.PoolSize),
		slog.Int64("hook_memory_bytes", e.HookMemoryBytes),
		slog.Any("files", e.Files),
		slog.Any("signers", signers),
		slog.Any("jwt_verifiers", verifiers),
		slog.Any("http_clients", clients),
	)
}

func secret(set bool) string {
	if set {
		return "(set)"
	}
	return "(unset)"
}

// redactURL masks a password in u's userinfo (a credential an operator may embed in a
// webhook or collector URL).
func redactURL(u string) string {
	if u == "" {
		return ""
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return parsed.Redacted()
}
