package app

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kuracache/kura/policy"
)

// TestPolicyEnvIsTheConfiguredEnviron: kura.env reads the environ config.Load was given, not
// the process's real environment.
func TestPolicyEnvIsTheConfiguredEnviron(t *testing.T) {
	t.Setenv("KURA_TEST_POLICY_TOKEN", "from-the-real-environment")
	t.Setenv("KURA_TEST_ONLY_IN_THE_REAL_ENVIRONMENT", "x")
	script := filepath.Join(t.TempDir(), "policy.lua")
	if err := os.WriteFile(script, []byte(`
function authorize(ctx, p)
  if kura.env("KURA_TEST_POLICY_TOKEN") ~= "from-the-environ" then
    return {deny = {status = 403, message = "token " .. tostring(kura.env("KURA_TEST_POLICY_TOKEN"))}}
  end
  if kura.env("KURA_TEST_ONLY_IN_THE_REAL_ENVIRONMENT") ~= nil then
    return {deny = {status = 403, message = "saw the real environment"}}
  end
  return {allow = true}
end`), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, "KURA_EXTENSION_SCRIPT_PATH="+script, "KURA_TEST_POLICY_TOKEN=from-the-environ")
	a := &App{cfg: cfg, logger: slog.New(slog.DiscardHandler), registry: prometheus.NewRegistry()}
	e, err := a.buildPolicy()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if d := e.Decide(context.Background(), &policy.Request{Operation: policy.OpRead}); !d.Allowed {
		t.Errorf("decision %+v, want allowed", d)
	}
}
