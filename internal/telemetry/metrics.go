package telemetry

import (
	"errors"
	"fmt"

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

// RegisterAll registers every collector on reg, or none: on the first failure it unregisters
// the ones it registered and returns that error, so a constructor that fails leaves the
// registry as it found it (and can be retried on it).
func RegisterAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return err
		}
	}
	return nil
}

// RegisterOrReuse registers c on reg, or returns the identical collector registered there
// before (for families that several components share).
func RegisterOrReuse[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	err := reg.Register(c)
	if err == nil {
		return c, nil
	}
	var already prometheus.AlreadyRegisteredError
	if errors.As(err, &already) {
		if existing, ok := already.ExistingCollector.(C); ok {
			return existing, nil
		}
	}
	return c, fmt.Errorf("register metrics: %w", err)
}
