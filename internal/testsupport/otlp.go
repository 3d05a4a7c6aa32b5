package testsupport

import (
	"compress/gzip"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// maxOTLPBody bounds one export request the receiver decodes.
const maxOTLPBody = 32 << 20

// OTLPReceiver is an OTLP/HTTP traces endpoint on 127.0.0.1 that decodes every
// ExportTraceServiceRequest (protobuf, gzip or not) POSTed to /v1/traces and keeps the spans.
// It is safe for concurrent use; Close stops it.
type OTLPReceiver struct {
	srv *httptest.Server

	mu    sync.Mutex
	spans []ReceivedSpan
	errs  []string
}

// ReceivedSpan is one exported span, flattened with its resource's attributes.
type ReceivedSpan struct {
	Name                       string
	Kind                       tracepb.Span_SpanKind
	TraceID, SpanID            string // lowercase hex
	ParentSpanID               string // "" for a root span
	Attributes                 map[string]string
	Resource                   map[string]string
	StatusCode                 tracepb.Status_StatusCode
	StartUnixNano, EndUnixNano uint64
}

// NewOTLPReceiver starts a receiver.
func NewOTLPReceiver() *OTLPReceiver {
	r := &OTLPReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	return r
}

// URL is the traces endpoint (http://127.0.0.1:port/v1/traces).
func (r *OTLPReceiver) URL() string { return r.srv.URL + "/v1/traces" }

// Close stops the receiver.
func (r *OTLPReceiver) Close() { r.srv.Close() }

func (r *OTLPReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		r.fail(fmt.Sprintf("unexpected %s %s", req.Method, req.URL.Path))
		http.NotFound(w, req)
		return
	}
	var body io.Reader = http.MaxBytesReader(w, req.Body, maxOTLPBody)
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(body)
		if err != nil {
			r.fail("gunzip: " + err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer zr.Close()
		body = io.LimitReader(zr, maxOTLPBody)
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		r.fail("read: " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &msg); err != nil {
		r.fail("decode: " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var got []ReceivedSpan
	for _, rs := range msg.GetResourceSpans() {
		res := attrMap(rs.GetResource().GetAttributes())
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				got = append(got, ReceivedSpan{
					Name:          s.GetName(),
					Kind:          s.GetKind(),
					TraceID:       hex.EncodeToString(s.GetTraceId()),
					SpanID:        hex.EncodeToString(s.GetSpanId()),
					ParentSpanID:  hex.EncodeToString(s.GetParentSpanId()),
					Attributes:    attrMap(s.GetAttributes()),
					Resource:      res,
					StatusCode:    s.GetStatus().GetCode(),
					StartUnixNano: s.GetStartTimeUnixNano(),
					EndUnixNano:   s.GetEndTimeUnixNano(),
				})
			}
		}
	}
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	r.mu.Unlock()
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func (r *OTLPReceiver) fail(msg string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, msg)
}

// Errors lists the requests the receiver could not decode.
func (r *OTLPReceiver) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// Spans returns every span received so far.
func (r *OTLPReceiver) Spans() []ReceivedSpan {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]ReceivedSpan(nil), r.spans...)
}

// Trace returns the received spans of one trace, in start order.
func (r *OTLPReceiver) Trace(traceID string) []ReceivedSpan {
	var out []ReceivedSpan
	for _, s := range r.Spans() {
		if s.TraceID == traceID {
			out = append(out, s)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].StartUnixNano < out[j].StartUnixNano })
	return out
}

// Describe renders spans one a line (name, kind, node, ids), for failure messages.
func Describe(spans []ReceivedSpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "  %s %q kind=%s node=%s span=%s parent=%s\n",
			s.TraceID, s.Name, s.Kind, s.Resource["kura.node.name"], s.SpanID, s.ParentSpanID)
	}
	return b.String()
}

func attrMap(kvs []*commonpb.KeyValue) map[string]string {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		m[kv.GetKey()] = anyString(kv.GetValue())
	}
	return m
}

func anyString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return fmt.Sprint(x.IntValue)
	case *commonpb.AnyValue_BoolValue:
		return fmt.Sprint(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return fmt.Sprint(x.DoubleValue)
	default:
		return v.String()
	}
}
