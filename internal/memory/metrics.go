package memory

import (
	"fmt"

	"github.com/kuracache/kura/internal/telemetry"
	"github.com/prometheus/client_golang/prometheus"
)

// Action labels of kura_memory_actions_total.
const (
	ActionShed    = "shed"    // entered the soft band: optional memory use turned off
	ActionRestore = "restore" // left the soft band: optional memory use back on
	ActionPause   = "pause"   // entered the hard band: background work paused
	ActionResume  = "resume"  // left the hard band: background work resumed
	ActionTrim    = "trim"    // caches trimmed and freed memory returned to the OS
)

type metricSet struct {
	usage        prometheus.Gauge
	soft, hard   prometheus.Gauge
	state        prometheus.Gauge
	transitions  *prometheus.CounterVec
	actions      *prometheus.CounterVec
	paused       *prometheus.GaugeVec
	sampleErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metricSet, error) {
	m := &metricSet{
		usage: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_memory_usage_bytes",
			Help: "Memory use at the last sample: the cgroup working set when the cgroup has a limit, else the resident set size.",
		}),
		soft: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_memory_soft_limit_bytes",
			Help: "Soft watermark (KURA_MEMORY_SOFT_LIMIT_BYTES): above it optional memory use is shed.",
		}),
		hard: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_memory_hard_limit_bytes",
			Help: "Hard watermark (KURA_MEMORY_HARD_LIMIT_BYTES): above it replication work pauses and caches are trimmed.",
		}),
		state: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "kura_memory_watermark_state",
			Help: "Memory watermark band: 0 normal, 1 above soft, 2 above hard.",
		}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_memory_watermark_transitions_total",
			Help: "Changes of the memory watermark band, by the band entered (normal, soft, hard).",
		}, []string{"to"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "kura_memory_actions_total",
			Help: "Actions taken by the memory controller: shed, restore, pause, resume, trim.",
		}, []string{"action"}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "kura_background_work_paused",
			Help: "1 while a kind of background work (outbox, antientropy) is paused by the hard memory watermark.",
		}, []string{"work"}),
		sampleErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "kura_memory_sample_errors_total",
			Help: "Memory samples that could not be read; the watermark state is kept until a sample succeeds.",
		}),
	}
	for _, s := range []State{Normal, Soft, Hard} {
		m.transitions.WithLabelValues(s.String())
	}
	for _, a := range []string{ActionShed, ActionRestore, ActionPause, ActionResume, ActionTrim} {
		m.actions.WithLabelValues(a)
	}
	if err := telemetry.RegisterAll(reg, m.usage, m.soft, m.hard, m.state, m.transitions, m.actions, m.paused, m.sampleErrors); err != nil {
		return nil, fmt.Errorf("register memory metrics: %w", err)
	}
	return m, nil
}
