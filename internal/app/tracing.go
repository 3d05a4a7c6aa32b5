package app

import (
	"context"
	"time"

	"go.opentelemetry.io/otel"

	"github.com/kuracache/kura/internal/telemetry"
)

// buildTracing builds the tracer provider from KURA_OTEL_*. Packages get it injected; the
// globals are set only for what libraries read from them: the W3C propagator, and the error
// handler that turns failed exports into rate-limited warnings instead of lines on stderr.
func (a *App) buildTracing() error {
	oc := a.cfg.OTel
	t, err := telemetry.NewTracing(context.Background(), telemetry.TracingConfig{
		Endpoint:    oc.TracesEndpoint,
		ServiceName: oc.ServiceName,
		Environment: oc.DeploymentEnvironment,
		NodeName:    a.cfg.NodeName,
		Region:      a.cfg.Region,
		TenantID:    a.cfg.TenantID,
		Version:     Version,
	})
	if err != nil {
		return err
	}
	a.tracing = t
	otel.SetTextMapPropagator(telemetry.Propagator())
	if t.Enabled() {
		otel.SetErrorHandler(telemetry.ErrorHandler(a.logger.With("component", "tracing")))
	}
	return nil
}

// logTracing says once at startup whether traces are exported, and where.
func (a *App) logTracing() {
	if !a.tracing.Enabled() {
		a.logger.Info("tracing off", "reason", "KURA_OTEL_EXPORTER_OTLP_TRACES_ENDPOINT not set")
		return
	}
	a.logger.Info("tracing on", "traces_endpoint", a.cfg.OTel.RedactedEndpoint(),
		"service_name", a.cfg.OTel.ServiceName, "deployment_environment", a.cfg.OTel.DeploymentEnvironment)
}

// flushTraces exports the spans still buffered, until deadline at most.
func (a *App) flushTraces(deadline time.Time) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if err := a.tracing.Shutdown(ctx); err != nil {
		a.logger.Warn("traces not all exported at shutdown", "err", err)
	}
}
