// Package charts holds no code: its tests render the Helm chart in charts/kura with the helm
// CLI for every values file, decode each manifest strictly into the Kubernetes API types and
// check what Kura relies on (probes, drain grace period, discovery, volumes, KURA_* names).
// They also run shellcheck on e2e/kind_smoke.sh, the smoke test that installs the chart.
package charts
