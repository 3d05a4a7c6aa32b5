package telemetry

import (
	"errors"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// ArtifactMetrics are the artifact read and write families every front end (HTTP surfaces,
// REAPI) records into, so one dashboard query covers every protocol.
type ArtifactMetrics struct {
	Reads      *prometheus.CounterVec // kind, client, artifact_class, result
	Writes     *prometheus.CounterVec // kind, client, artifact_class, result
	ReadBytes  *prometheus.CounterVec // kind, client, artifact_class
	WriteBytes *prometheus.CounterVec // kind, client, artifact_class
}

// NewArtifactMetrics registers the artifact families on reg, or returns the ones already
// registered there by another front end: the HTTP API and the REAPI share one registry.
func NewArtifactMetrics(reg prometheus.Registerer) (*ArtifactMetrics, error) {
	labels := []string{"kind", "client", "artifact_class", "result"}
	byteLabels := []string{"kind", "client", "artifact_class"}
	m := &ArtifactMetrics{
		Reads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_reads_total",
			Help: "Artifact reads by kind, client, artifact class and result (hit, miss, error, rejected).",
		}, labels),
		Writes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_writes_total",
			Help: "Artifact writes by kind, client, artifact class and result (stored, exists, rejected, error).",
		}, labels),
		ReadBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_read_bytes_total",
			Help: "Artifact body bytes served to clients.",
		}, byteLabels),
		WriteBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_artifact_write_bytes_total",
			Help: "Artifact body bytes stored from clients.",
		}, byteLabels),
	}
	var err error
	for _, vec := range []**prometheus.CounterVec{&m.Reads, &m.Writes, &m.ReadBytes, &m.WriteBytes} {
		if *vec, err = RegisterOrReuse(reg, *vec); err != nil {
			return nil, err
		}
	}
	return m, nil
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
