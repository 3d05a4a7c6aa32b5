package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestHelpListsEveryVariable(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--help"}, nil, &out, &errOut); code != 0 {
		t.Fatalf("--help exit code %d, stderr %q", code, errOut.String())
	}
	for _, variable := range []string{
		"KURA_PORT", "KURA_GRPC_PORT", "KURA_BIND_ADDRESS", "KURA_TENANT_ID", "KURA_REGION",
		"KURA_DATA_DIR", "KURA_TMP_DIR", "KURA_NODE_URL", "KURA_NODE_NAME", "KURA_PEERS",
		"KURA_DISCOVERY_DNS_NAME", "KURA_GOSSIP_PORT", "KURA_GOSSIP_KEY", "KURA_INTERNAL_PORT",
		"KURA_INTERNAL_TLS_CA_CERT_PATH", "KURA_DISK_BUDGET_BYTES", "KURA_MAX_KEYVALUE_BYTES",
		"KURA_FILE_DESCRIPTOR_POOL_SIZE", "KURA_SEGMENT_HANDLE_CACHE_SIZE",
		"KURA_MEMORY_SOFT_LIMIT_BYTES", "KURA_METADATA_STORE_MAX_WRITE_BUFFERS",
		"KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "KURA_LOG_LEVEL", "KURA_LOG_FORMAT",
		"KURA_EXTENSION_ENABLED", "KURA_ANALYTICS_SERVER_URL",
	} {
		if !strings.Contains(out.String(), variable) {
			t.Errorf("--help does not mention %s", variable)
		}
	}
}

func TestInvalidConfigurationNamesEveryProblemAndExits2(t *testing.T) {
	var out, errOut bytes.Buffer
	code := run(nil, []string{
		"KURA_PORT=abc",
		"KURA_GRPC_PORT=70000",
		"KURA_MEMORY_SOFT_LIMIT_BYTES=2GiB",
		"KURA_MEMORY_HARD_LIMIT_BYTES=1GiB",
		"KURA_INTERNAL_TLS_CERT_PATH=/nonexistent.pem",
		"KURA_DATA_DIR=" + t.TempDir(),
	}, &out, &errOut)
	if code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	for _, variable := range []string{"KURA_PORT", "KURA_GRPC_PORT", "KURA_MEMORY_SOFT_LIMIT_BYTES", "KURA_INTERNAL_TLS"} {
		if !strings.Contains(errOut.String(), variable) {
			t.Errorf("stderr does not name %s:\n%s", variable, errOut.String())
		}
	}
}

func TestUnknownArgumentIsRejected(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run([]string{"--port=1"}, nil, &out, &errOut); code != 2 {
		t.Fatalf("exit code %d, want 2", code)
	}
	if !strings.Contains(errOut.String(), "KURA_") {
		t.Fatalf("stderr should point at KURA_* variables: %q", errOut.String())
	}
}
