package telemetry

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NodeIdentity labels kura_node_info.
type NodeIdentity struct {
	Node, Region, TenantID, Version string
}

// NewRegistry returns a fresh registry holding the Go runtime and process collectors and the
// constant gauge kura_node_info{node,region,tenant_id,version} = 1, which dashboards join on.
func NewRegistry(id NodeIdentity) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "kura_node_info",
		Help: "Constant 1, labelled with this node's identity.",
		ConstLabels: prometheus.Labels{
			"node": id.Node, "region": id.Region, "tenant_id": id.TenantID, "version": id.Version,
		},
	})
	info.Set(1)
	reg.MustRegister(info)
	return reg
}
