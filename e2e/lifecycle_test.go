package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	bspb "google.golang.org/genproto/googleapis/bytestream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// readyState is GET /ready's status and state.
func readyState(t *testing.T, n *Node) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Get(n.URL() + "/ready")
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	var body struct {
		State string `json:"state"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.State
}

// TestDrainWithStuckRequests: SIGTERM with an HTTP upload and a ByteStream write stuck in
// flight. /ready turns 503 at once, new requests are refused, the process exits by the drain
// deadline with status 0, and every acknowledged write is there after a restart.
func TestDrainWithStuckRequests(t *testing.T) {
	t.Parallel()
	const drain = 3 * time.Second
	node := StartNode(t, NodeOptions{Env: map[string]string{"KURA_DRAIN_TIMEOUT_MS": fmt.Sprint(drain.Milliseconds())}})
	PollUntil(t, 30*time.Second, "a single node to report ready", func() (bool, string) {
		code, state := readyState(t, node)
		return code == http.StatusOK && state == "serving", fmt.Sprintf("%d %s", code, state)
	})
	const acked = 20
	for i := range acked {
		r := call(t, "PUT", fmt.Sprintf("%s/v1/cache/%d", node.URL(), 1000+i), fmt.Sprintf("acknowledged-%d", i))
		expectHTTP(t, "acknowledged write", r, http.StatusOK)
	}

	// An HTTP upload that announces 1 MB, sends 100 bytes and stalls.
	conn, err := net.Dial("tcp", node.HTTPAddr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "PUT /v1/cache/999 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n%s", strings.Repeat("s", 100))
	// A ByteStream write that sends its first chunk and stalls.
	cc, err := grpc.NewClient(node.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	stream, err := bspb.NewByteStreamClient(cc).Write(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&bspb.WriteRequest{
		ResourceName: "uploads/1b4e28ba-2fa1-11d2-883f-0016d3cca427/blobs/" + strings.Repeat("ab", 32) + "/1000000",
		Data:         []byte("first chunk"),
	}); err != nil {
		t.Fatal(err)
	}
	PollUntil(t, 10*time.Second, "both stuck requests to be in flight", func() (bool, string) {
		n := ScrapeMetrics(t, node).Sum("kura_requests_in_flight", nil)
		return n == 2, fmt.Sprintf("%v in flight", n)
	})

	start := time.Now()
	if err := node.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	PollUntil(t, 5*time.Second, "/ready to turn 503 draining", func() (bool, string) {
		code, state := readyState(t, node)
		return code == http.StatusServiceUnavailable && state == "draining", fmt.Sprintf("%d %s", code, state)
	})
	readyTook := time.Since(start)
	if r := call(t, "GET", node.URL()+"/v1/cache/1000", ""); r.status != http.StatusServiceUnavailable || !strings.Contains(r.message(), "Draining") {
		t.Fatalf("a new request while draining: %d %q", r.status, r.body)
	}
	node.Stop() // waits for the exit and requires status 0
	exitTook := time.Since(start)
	if exitTook > drain+5*time.Second { // a bound well above the deadline: the drain did end
		t.Fatalf("the process took %v to exit after SIGTERM, drain deadline %v", exitTook, drain)
	}
	if _, err := stream.CloseAndRecv(); err == nil {
		t.Fatal("the stuck ByteStream write was acknowledged")
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(conn); strings.Contains(string(b), "200 OK") {
		t.Fatalf("the stuck upload was acknowledged: %q", b)
	}
	figure(t, "SIGTERM with 2 requests stuck: /ready 503 after %v, exit (status 0) after %v with a %v drain deadline",
		readyTook.Round(time.Millisecond), exitTook.Round(time.Millisecond), drain)

	node.Restart()
	for i := range acked {
		r := call(t, "GET", fmt.Sprintf("%s/v1/cache/%d", node.URL(), 1000+i), "")
		if r.status != http.StatusOK || r.body != fmt.Sprintf("acknowledged-%d", i) {
			t.Fatalf("acknowledged write %d after the drain and a restart: %d %q", i, r.status, r.body)
		}
	}
	expectHTTP(t, "the stuck upload", call(t, "GET", node.URL()+"/v1/cache/999", ""), http.StatusNotFound)
}

// TestReadyAfterBootstrap: a node with a seed stays joining until its first anti-entropy
// round, then serves; a second node started with a seed nobody answers becomes ready when
// the bootstrap timeout passes.
func TestReadyAfterBootstrap(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 2, nil)
	for _, n := range nodes {
		PollUntil(t, 60*time.Second, n.Name+" to be ready", func() (bool, string) {
			code, state := readyState(t, n)
			return code == http.StatusOK && state == "serving", fmt.Sprintf("%d %s", code, state)
		})
	}
	if !strings.Contains(string(readFile(t, nodes[1].LogPath())), "bootstrapped from the cluster") {
		t.Fatalf("%s became ready without saying it bootstrapped", nodes[1].Name)
	}
	up, err := nodes[0].Up(t.Context())
	if err != nil || up.RingMembers != 2 || up.State != "serving" {
		t.Fatalf("/up: %+v %v, want ring_members 2 and state serving", up, err)
	}

	ports, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	lonely := StartNode(t, NodeOptions{
		Peers: []string{loopbackAddr(ports[0])}, // nobody gossips there
		Env:   map[string]string{"KURA_BOOTSTRAP_TIMEOUT_MS": "1500"},
	})
	start := time.Now()
	if code, state := readyState(t, lonely); code != http.StatusServiceUnavailable || state != "joining" {
		t.Fatalf("a node still waiting for a peer: %d %s, want 503 joining", code, state)
	}
	PollUntil(t, 30*time.Second, "the bootstrap timeout to make the node ready", func() (bool, string) {
		code, state := readyState(t, lonely)
		return code == http.StatusOK, fmt.Sprintf("%d %s", code, state)
	})
	figure(t, "a node whose seed never answered became ready %v after /up (bootstrap timeout 1.5 s)", time.Since(start).Round(10*time.Millisecond))
}
