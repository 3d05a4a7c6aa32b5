package cluster

import (
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the cluster's Prometheus series. They exist (and are counted) even when no
// Registerer is given, which keeps the code paths free of nil checks.
type metrics struct {
	members      *prometheus.Desc
	memberEvents *prometheus.CounterVec
	joinAttempts *prometheus.CounterVec
	rejections   *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		members: prometheus.NewDesc("kura_cluster_members",
			"Live cluster members (alive or suspected), this node included, by region.",
			[]string{"region"}, nil),
		memberEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_cluster_member_events_total",
			Help: "Peer membership changes seen by this node, by type (joined, left, updated).",
		}, []string{"type"}),
		joinAttempts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_cluster_join_attempts_total",
			Help: "Attempts to join the cluster through a seed or DNS-discovered address, by result.",
		}, []string{"result"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_cluster_admission_rejections_total",
			Help: "Nodes refused admission (another tenant, or missing/invalid metadata), by reason.",
		}, []string{"reason"}),
	}
	// Start every known series at zero so rates and alerts work before the first change.
	for _, t := range []EventType{Joined, Left, Updated} {
		m.memberEvents.WithLabelValues(t.String())
	}
	for _, r := range []string{"success", "failure"} {
		m.joinAttempts.WithLabelValues(r)
	}
	for _, r := range []string{"metadata", "tenant"} {
		m.rejections.WithLabelValues(r)
	}
	return m
}

// register adds every series to reg; the member gauge is computed from c's view at scrape
// time so it can never drift from Members().
func (m *metrics) register(reg prometheus.Registerer, c *Cluster) error {
	return telemetry.RegisterAll(reg, membersCollector{m.members, c}, m.memberEvents, m.joinAttempts, m.rejections)
}

type membersCollector struct {
	desc *prometheus.Desc
	c    *Cluster
}

func (mc membersCollector) Describe(ch chan<- *prometheus.Desc) { ch <- mc.desc }

func (mc membersCollector) Collect(ch chan<- prometheus.Metric) {
	byRegion := map[string]int{}
	for _, m := range mc.c.Members() {
		byRegion[m.Region]++
	}
	for region, n := range byRegion {
		ch <- prometheus.MustNewConstMetric(mc.desc, prometheus.GaugeValue, float64(n), region)
	}
}
