package config

import (
	"strings"
	"testing"
	"time"
)

func TestRetentionOffByDefault(t *testing.T) {
	c := mustLoad(t, env(t))
	if c.Retention.Enabled() || c.Retention.MaxAgeFor("anything") != 0 || c.Retention.SweepInterval != 0 {
		t.Errorf("retention without configuration = %+v, want off", c.Retention)
	}
}

func TestRetentionAgesAndOverrides(t *testing.T) {
	file := writeFile(t, "retention.conf", `
# exact namespace ids
web-app.v2 = 2h
a=b = 30d
forever = off
`)
	c := mustLoad(t, env(t, "KURA_RETENTION_MAX_AGE=72h", "KURA_RETENTION_MAX_AGE_IOS=90m",
		"KURA_RETENTION_MAX_AGE_WEB_APP_V2=1h", "KURA_RETENTION_MAX_AGE_KEEP=0", "KURA_RETENTION_FILE="+file))
	r := c.Retention
	for ns, want := range map[string]time.Duration{
		"other":      72 * time.Hour,
		"ios":        90 * time.Minute, // env form IOS
		"iOS":        90 * time.Minute,
		"web-app.v2": 2 * time.Hour, // the file's exact entry wins over the env form
		"web_app_v2": time.Hour,     // same env form, not in the file
		"a=b":        30 * 24 * time.Hour,
		"forever":    0,
		"keep":       0,
	} {
		if got := r.MaxAgeFor(ns); got != want {
			t.Errorf("MaxAgeFor(%q) = %v, want %v", ns, got, want)
		}
	}
	if !r.Enabled() || r.SweepInterval != 3*time.Minute {
		t.Errorf("enabled %v, sweep interval %v; want on, 3m (a twentieth of the shortest age, 1h)", r.Enabled(), r.SweepInterval)
	}
	if len(c.Warnings) != 0 {
		t.Errorf("warnings: %q", c.Warnings)
	}
	// Short ages sweep every second; only overrides can turn retention on.
	c = mustLoad(t, env(t, "KURA_RETENTION_MAX_AGE_CI=3s"))
	if c.Retention.SweepInterval != time.Second || c.Retention.MaxAgeFor("ci") != 3*time.Second || c.Retention.MaxAgeFor("x") != 0 {
		t.Errorf("retention = %+v", c.Retention)
	}
}

func TestRetentionRejectsBadSettings(t *testing.T) {
	file := writeFile(t, "bad.conf", "ok = 1h\nno equals sign\n = 1h\nios = soon\nok = 2h\nfast = 10ms\n")
	problems := loadProblems(t, env(t, "KURA_RETENTION_MAX_AGE=-5m", "KURA_RETENTION_MAX_AGE_web-app=1h",
		"KURA_RETENTION_MAX_AGE_IOS=forever", "KURA_RETENTION_FILE="+file))
	want := []struct{ variable, contains string }{
		{"KURA_RETENTION_MAX_AGE", "is shorter than 1s"},
		{"KURA_RETENTION_MAX_AGE_IOS", `"forever" is not a duration`},
		{"KURA_RETENTION_MAX_AGE_web-app", "upper-case A-Z, 0-9 and _"},
		{"KURA_RETENTION_FILE", `line 2: "no equals sign" is not "namespace = age"`},
		{"KURA_RETENTION_FILE", "line 3: the namespace is empty"},
		{"KURA_RETENTION_FILE", `line 4 (ios): "soon" is not a duration`},
		{"KURA_RETENTION_FILE", `line 5: namespace "ok" is already given on line 1`},
		{"KURA_RETENTION_FILE", "line 6 (fast): 10ms is shorter than 1s"},
	}
	for _, w := range want {
		found := false
		for _, p := range problems {
			if p.Variable == w.variable && strings.Contains(p.Message, w.contains) {
				found = true
			}
		}
		if !found {
			t.Errorf("no problem for %s containing %q in %+v", w.variable, w.contains, problems)
		}
	}
	if len(problems) != len(want) {
		t.Errorf("%d problems, want %d: %+v", len(problems), len(want), problems)
	}
	problems = loadProblems(t, env(t, "KURA_RETENTION_FILE=/nonexistent/retention.conf"))
	if len(problems) != 1 || !strings.Contains(problems[0].Message, "cannot read /nonexistent/retention.conf") {
		t.Errorf("missing file: %+v", problems)
	}
}

func TestRetentionEnvName(t *testing.T) {
	for ns, want := range map[string]string{"ios": "IOS", "web-app.v2": "WEB_APP_V2", "A_1": "A_1", "é": "__"} {
		if got := RetentionEnvName(ns); got != want {
			t.Errorf("RetentionEnvName(%q) = %q, want %q", ns, got, want)
		}
	}
}
