package httpapi

import (
	"net"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/kuracache/kura/internal/telemetry"
)

// tracerName is the instrumentation scope of the HTTP server spans.
const tracerName = "github.com/kuracache/kura/httpapi"

// requestContext is the outermost middleware. It gives every request its id (the client's
// x-request-id when sane, else a new one), echoed in the response before anything else runs
// so that error answers carry it too, and puts it in the request's context, where the
// logger finds it. With tracing on it also continues the client's W3C trace context
// (traceparent) and opens the request's server span, named after the route pattern.
func (s *Server) requestContext(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		id := telemetry.AcceptRequestID(r.Header.Get(telemetry.RequestIDHeader))
		c.Response().Header()[telemetry.RequestIDHeader] = []string{id}
		ctx := telemetry.WithRequestID(r.Context(), id)
		// Probes, scrapes and the self-refreshing status page get request ids but no spans,
		// or every kubelet check and Prometheus scrape would be a trace.
		if s.tracer == nil || probeRoutes[c.Path()] {
			c.SetRequest(r.WithContext(ctx))
			return next(c)
		}
		ctx = s.propagator.Extract(ctx, propagation.HeaderCarrier(r.Header))
		method := methodLabel(r.Method)
		name, route := method, ""
		if c.Path() != "" {
			route = s.routeLabel(c)
			name = method + " " + route
		}
		ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
		if span.IsRecording() {
			span.SetAttributes(requestAttributes(r, method, route, id)...)
		}
		c.SetRequest(r.WithContext(ctx))
		returned := false
		defer func() {
			endServerSpan(span, c.Response(), returned)
		}()
		err := next(c)
		returned = true
		return err
	}
}

// requestAttributes are the server span's attributes known before the handler runs (OTel
// HTTP semantic conventions, plus the request id).
func requestAttributes(r *http.Request, method, route, id string) []attribute.KeyValue {
	if method == "OTHER" {
		method = "_OTHER" // the conventions' spelling of a method outside the known set
	}
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	attrs := []attribute.KeyValue{
		semconv.HTTPRequestMethodKey.String(method),
		semconv.URLPath(r.URL.Path),
		semconv.URLScheme(scheme),
		attribute.String(telemetry.AttrRequestID, id),
	}
	if route != "" {
		attrs = append(attrs, semconv.HTTPRoute(route))
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		attrs = append(attrs, semconv.ClientAddress(host))
	}
	if ua := r.UserAgent(); ua != "" {
		attrs = append(attrs, semconv.UserAgentOriginal(ua))
	}
	if r.ContentLength > 0 {
		attrs = append(attrs, semconv.HTTPRequestBodySize(int(r.ContentLength)))
	}
	return attrs
}

// endServerSpan records the answer and ends the span. A 5xx is an error of the span (a 4xx
// is the client's, as the conventions say); so is a handler that never returned, which
// net/http answers by dropping the connection.
func endServerSpan(span trace.Span, resp *echo.Response, returned bool) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	status := resp.Status
	switch {
	case !returned && !resp.Committed:
		status = http.StatusInternalServerError
	case !resp.Committed:
		status = http.StatusOK
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(status), semconv.HTTPResponseBodySize(int(resp.Size)))
	switch {
	case !returned:
		span.SetAttributes(semconv.ErrorTypeKey.String("aborted"))
		span.SetStatus(codes.Error, "response aborted")
	case status >= 500:
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, http.StatusText(status))
	}
}
