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
// logger finds it. The server span is opened by observe, which knows the route and the
// final status.
func (s *Server) requestContext(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		r := c.Request()
		id := telemetry.AcceptRequestID(r.Header.Get(telemetry.RequestIDHeader))
		c.Response().Header()[telemetry.RequestIDHeader] = []string{id}
		c.SetRequest(r.WithContext(telemetry.WithRequestID(r.Context(), id)))
		return next(c)
	}
}

// startSpan continues the client's W3C trace context (traceparent) and opens the request's
// server span, named after the route pattern, in the request's context. It returns nil when
// tracing is off, and for probes, scrapes and the self-refreshing status page, which would
// otherwise make every kubelet check and Prometheus scrape a trace.
func (s *Server) startSpan(c echo.Context, route, method string) trace.Span {
	if s.tracer == nil || probeRoutes[c.Path()] {
		return nil
	}
	r := c.Request()
	ctx := s.propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	name := method
	if c.Path() != "" {
		name = method + " " + route
	} else {
		route = "" // no route matched: no http.route attribute
	}
	ctx, span := s.tracer.Start(ctx, name, trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(requestAttributes(r, method, route, telemetry.RequestID(ctx))...)
	}
	c.SetRequest(r.WithContext(ctx))
	return span
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

// endServerSpan records the answer (its final status as observe computed it) and ends the
// span. A 5xx is an error of the span (a 4xx is the client's, as the conventions say); so is
// a handler that never returned, which net/http answers by dropping the connection.
func endServerSpan(span trace.Span, status int, size int64, returned bool) {
	defer span.End()
	if !span.IsRecording() {
		return
	}
	span.SetAttributes(semconv.HTTPResponseStatusCode(status), semconv.HTTPResponseBodySize(int(size)))
	switch {
	case !returned:
		span.SetAttributes(semconv.ErrorTypeKey.String("aborted"))
		span.SetStatus(codes.Error, "response aborted")
	case status >= 500:
		span.SetAttributes(semconv.ErrorTypeKey.String(strconv.Itoa(status)))
		span.SetStatus(codes.Error, http.StatusText(status))
	}
}
