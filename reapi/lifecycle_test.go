package reapi

import (
	"strings"
	"testing"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kuracache/kura/internal/lifecycle"
	"github.com/kuracache/kura/internal/telemetry"
	"github.com/kuracache/kura/internal/testsupport"
)

func TestDrainingRefusesNewCalls(t *testing.T) {
	node, err := lifecycle.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	node.SetServing()
	h := newHarnessWith(t, Config{}, nil, func(d *Deps) { d.Lifecycle = node })
	health := healthpb.NewHealthClient(h.conn)
	if _, err := h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{}); err != nil {
		t.Fatalf("serving: %v", err)
	}
	h.upload("", []byte("before the drain"))
	if node.InFlight() != 0 {
		t.Fatalf("%d calls counted after they returned", node.InFlight())
	}

	node.BeginDrain()
	h.srv.SetServing(false)
	_, err = h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{})
	wantCode(t, err, codes.Unavailable)
	_, _, err = h.read(ctxT(t), readRequest("", []byte("before the drain")))
	wantCode(t, err, codes.Unavailable)
	// Health checks are answered, and say NOT_SERVING.
	resp, err := health.Check(ctxT(t), &healthpb.HealthCheckRequest{})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("health while draining: %v %v", resp, err)
	}
}

func readRequest(instance string, blob []byte) *bspb.ReadRequest {
	return &bspb.ReadRequest{ResourceName: readName(instance, false, digestOf(blob))}
}

// TestDrainRefusalsAreCounted: calls a draining node refuses are counted in
// kura_grpc_requests_total like any other, streaming as well as unary, and logged at debug
// (the node is working as designed).
func TestDrainRefusalsAreCounted(t *testing.T) {
	node, err := lifecycle.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	node.SetServing()
	logs := &testsupport.LockedBuffer{}
	logger, err := telemetry.NewLogger(logs, "debug", "json")
	if err != nil {
		t.Fatal(err)
	}
	h := newHarnessWith(t, Config{}, nil, func(d *Deps) { d.Lifecycle = node; d.Logger = logger })
	h.upload("", []byte("before the drain"))

	node.BeginDrain()
	_, _, err = h.read(ctxT(t), readRequest("", []byte("before the drain")))
	wantCode(t, err, codes.Unavailable)
	_, err = h.caps.GetCapabilities(ctxT(t), &repb.GetCapabilitiesRequest{})
	wantCode(t, err, codes.Unavailable)
	for _, method := range []string{
		"/google.bytestream.ByteStream/Read",
		"/build.bazel.remote.execution.v2.Capabilities/GetCapabilities",
	} {
		labels := map[string]string{"method": method, "code": "Unavailable"}
		if got := counterValue(t, h.reg, "kura_grpc_requests_total", labels); got != 1 {
			t.Errorf("kura_grpc_requests_total%v = %v, want 1", labels, got)
		}
		var refusals []string
		for _, l := range logs.Lines(`"code":"Unavailable"`) {
			if strings.Contains(l, `"method":"`+method+`"`) {
				refusals = append(refusals, l)
			}
		}
		if len(refusals) != 1 || !strings.Contains(refusals[0], `"level":"DEBUG"`) {
			t.Errorf("refusals of %s logged as %q, want one debug line", method, refusals)
		}
	}
}
