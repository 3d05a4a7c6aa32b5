package e2e

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	// The internal plane's generated stubs are its wire contract, like the REAPI stubs are
	// Bazel's: the suite talks to kura.internal.v1 as a peer would, to read digests and
	// listings without going through the public read path (which reads through to peers).
	// peer itself only lends the credential a keyed node's plane requires.
	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// Cluster test timings. The intervals are shrunk so a sweep or a re-join happens every
// second; the bounds are generous because race-instrumented nodes share two cores with the
// rest of the suite, and a healthy cluster needs a fraction of each.
const (
	clusterAntiEntropyMS = 1000
	clusterRejoinMS      = 1000
	membershipTimeout    = 60 * time.Second
	convergeBaseTimeout  = 90 * time.Second
	// convergePerObject extends convergence waits for large runs (10,000 objects).
	convergePerObject = 20 * time.Millisecond
	// digestBits is storage.DigestBucketBits: the one bucket width every node must serve.
	digestBits = 10
	// rpcTimeout bounds one call to a node (digests, listings, REAPI reads).
	rpcTimeout = 30 * time.Second
)

// clusterObjects is the object count of the scale runs: 500 by default, 10,000 with
// KURA_E2E_CLUSTER_LARGE=1 (the figures in the report; too slow for every CI run).
func clusterObjects() int {
	if os.Getenv("KURA_E2E_CLUSTER_LARGE") == "1" {
		return 10_000
	}
	return 500
}

// convergeTimeout is the bound for a cluster holding objects objects to converge.
func convergeTimeout(objects int) time.Duration {
	return convergeBaseTimeout + time.Duration(objects)*convergePerObject
}

// withClusterDefaults returns env with the cluster timings added (explicit entries win).
func withClusterDefaults(env map[string]string) map[string]string {
	out := map[string]string{
		"KURA_ANTI_ENTROPY_INTERVAL_MS":  strconv.Itoa(clusterAntiEntropyMS),
		"KURA_GOSSIP_REJOIN_INTERVAL_MS": strconv.Itoa(clusterRejoinMS),
	}
	maps.Copy(out, env)
	return out
}

// startKuraCluster starts n seeded nodes with the cluster timings and waits until every node
// lists every other one in /up connected_nodes.
func startKuraCluster(t *testing.T, n int, configure func(i int, o *NodeOptions)) []*Node {
	t.Helper()
	nodes := StartCluster(t, n, func(i int, o *NodeOptions) {
		if configure != nil {
			configure(i, o)
		}
		o.Env = withClusterDefaults(o.Env)
	})
	took := waitMembership(t, membershipTimeout, nodes...)
	t.Logf("%d nodes formed a cluster %s after the last one was ready", n, took)
	return nodes
}

// startClusterNode starts one more node with the cluster timings (seeds in opts.Peers).
func startClusterNode(t *testing.T, opts NodeOptions) *Node {
	t.Helper()
	opts.Env = withClusterDefaults(opts.Env)
	return StartNode(t, opts)
}

// upWithin fetches /up with a short bound, so a stopped (SIGSTOP) node cannot hang a poll.
func upWithin(n *Node, d time.Duration) (UpStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return n.Up(ctx)
}

// connected returns n's /up connected_nodes, sorted.
func connected(n *Node) ([]string, error) {
	up, err := upWithin(n, 5*time.Second)
	if err != nil {
		return nil, err
	}
	got := slices.Clone(up.ConnectedNodes)
	sort.Strings(got)
	return got, nil
}

// waitMembership waits until each node's connected_nodes is exactly the other nodes' URLs.
func waitMembership(t testing.TB, timeout time.Duration, nodes ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	PollUntil(t, timeout, "every node lists exactly the others in /up connected_nodes", func() (bool, string) {
		for _, n := range nodes {
			var want []string
			for _, other := range nodes {
				if other != n {
					want = append(want, other.URL())
				}
			}
			sort.Strings(want)
			got, err := connected(n)
			if err != nil {
				return false, err.Error()
			}
			if !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s connected_nodes %v, want %v", n.Name, got, want)
			}
		}
		return true, ""
	})
	return time.Since(start).Round(time.Millisecond)
}

// waitDropped waits until no observer lists gone in connected_nodes.
func waitDropped(t testing.TB, timeout time.Duration, gone *Node, observers ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	PollUntil(t, timeout, gone.Name+" is dropped from the others' connected_nodes", func() (bool, string) {
		for _, n := range observers {
			got, err := connected(n)
			if err != nil {
				return false, err.Error()
			}
			if slices.Contains(got, gone.URL()) {
				return false, fmt.Sprintf("%s still lists %s: %v", n.Name, gone.URL(), got)
			}
		}
		return true, ""
	})
	return time.Since(start).Round(time.Millisecond)
}

// clusterKit holds a test's gRPC connections: REAPI (plaintext) and the internal plane
// (plaintext, or mTLS when internalTLS is set). Connections are closed when the test ends.
type clusterKit struct {
	t           *testing.T
	internalTLS *tls.Config

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

func newClusterKit(t *testing.T, internalTLS *tls.Config) *clusterKit {
	k := &clusterKit{t: t, internalTLS: internalTLS, conns: map[string]*grpc.ClientConn{}}
	t.Cleanup(func() {
		k.mu.Lock()
		defer k.mu.Unlock()
		for _, c := range k.conns {
			_ = c.Close()
		}
	})
	return k
}

func (k *clusterKit) conn(addr string, creds credentials.TransportCredentials, extra ...grpc.DialOption) *grpc.ClientConn {
	return k.connAs(addr, "", creds, extra...)
}

// connAs is conn with an identity for the pool: connections with other dial options (a
// credential's key) must not be shared.
func (k *clusterKit) connAs(addr, identity string, creds credentials.TransportCredentials, extra ...grpc.DialOption) *grpc.ClientConn {
	k.mu.Lock()
	defer k.mu.Unlock()
	key := addr + "|" + creds.Info().SecurityProtocol + "|" + identity
	if c, ok := k.conns[key]; ok {
		return c
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(creds),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20))}, extra...)
	c, err := grpc.NewClient(addr, opts...)
	if err != nil {
		// NewClient only parses the target; an error is a bug in the test.
		panic(fmt.Sprintf("grpc.NewClient(%s): %v", addr, err))
	}
	k.conns[key] = c
	return c
}

// reapiConn is a plaintext connection to the node's REAPI port.
func (k *clusterKit) reapiConn(n *Node) *grpc.ClientConn {
	return k.conn(n.GRPCAddr(), insecure.NewCredentials())
}

// internal is a client of the node's internal plane, as a peer would dial it: with the
// kit's certificate when it has one, and with the credential derived from the node's own
// KURA_GOSSIP_KEY when it was started with one (a node with another key gets that key's).
func (k *clusterKit) internal(n *Node) peerpb.ReplicationClient {
	creds := insecure.NewCredentials()
	if k.internalTLS != nil {
		creds = credentials.NewTLS(k.internalTLS)
	}
	encoded := n.Options().Env["KURA_GOSSIP_KEY"]
	if encoded == "" {
		return peerpb.NewReplicationClient(k.conn(n.InternalAddr(), creds))
	}
	gossipKey, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		panic(fmt.Sprintf("%s: KURA_GOSSIP_KEY %q: %v", n.Name, encoded, err)) // a bug in the test
	}
	unary, stream := peer.CredentialInterceptors(gossipKey)
	return peerpb.NewReplicationClient(k.connAs(n.InternalAddr(), "key "+encoded, creds,
		grpc.WithChainUnaryInterceptor(unary), grpc.WithChainStreamInterceptor(stream)))
}

// nodeDigest is one node's summary of everything it stores.
type nodeDigest struct {
	digests []byte
	objects uint64
}

func (k *clusterKit) digest(n *Node) (nodeDigest, error) {
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := k.internal(n).BucketDigests(ctx, &peerpb.BucketDigestsRequest{BucketBits: digestBits})
	if err != nil {
		return nodeDigest{}, fmt.Errorf("BucketDigests on %s: %w", n.Name, err)
	}
	if len(resp.GetDigests()) != 32<<digestBits {
		return nodeDigest{}, fmt.Errorf("BucketDigests on %s: %d bytes of digests, want %d", n.Name, len(resp.GetDigests()), 32<<digestBits)
	}
	return nodeDigest{digests: resp.GetDigests(), objects: resp.GetObjects()}, nil
}

// waitConverged waits until every node's bucket digests are identical and each holds at
// least minObjects objects: the anti-entropy criterion, read from the internal plane so no
// public read (which could read through to a peer) is involved. It returns how long it took.
func (k *clusterKit) waitConverged(t testing.TB, timeout time.Duration, minObjects int, nodes ...*Node) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var last string
	for {
		converged := true
		var first nodeDigest
		var counts []string
		for i, n := range nodes {
			d, err := k.digest(n)
			if err != nil {
				converged, last = false, err.Error()
				break
			}
			counts = append(counts, fmt.Sprintf("%s=%d", n.Name, d.objects))
			if i == 0 {
				first = d
			}
			if d.objects < uint64(minObjects) || d.objects != first.objects || string(d.digests) != string(first.digests) {
				converged = false
			}
		}
		if converged {
			return time.Since(start).Round(time.Millisecond)
		}
		if counts != nil {
			last = "objects " + strings.Join(counts, " ")
		}
		if time.Now().After(deadline) {
			t.Fatalf("nodes did not converge within %s (want identical digests and ≥ %d objects; last: %s)\n%s",
				timeout, minObjects, last, k.listingDiff(nodes))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// listed is one object of a node's listing.
type listed struct {
	version uint64
	sha256  string
}

// listing returns every object a node holds, by "tenant/namespace/kind/name", from the
// internal plane's paged listing.
func (k *clusterKit) listing(n *Node) (map[string]listed, error) {
	out := map[string]listed{}
	var token []byte
	for {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		resp, err := k.internal(n).ListObjects(ctx, &peerpb.ListObjectsRequest{BucketBits: digestBits, PageToken: token, PageSize: 1000})
		cancel()
		if err != nil {
			return out, fmt.Errorf("ListObjects on %s: %w", n.Name, err)
		}
		for _, h := range resp.GetObjects() {
			key := h.GetKey()
			name := fmt.Sprintf("%s/%s/%s/%s", key.GetTenant(), key.GetNamespace(), key.GetKind(), key.GetName())
			out[name] = listed{version: h.GetVersion(), sha256: hex.EncodeToString(h.GetSha256())}
		}
		token = resp.GetNextPageToken()
		if len(token) == 0 {
			return out, nil
		}
	}
}

// listingDiff describes how the nodes' listings differ (for a convergence failure): keys a
// node lacks, keys it holds at an older version than another node, and keys it holds at the
// same version as another node but with other content (a tie last-writer-wins cannot break).
func (k *clusterKit) listingDiff(nodes []*Node) string {
	lists := make([]map[string]listed, len(nodes))
	union := map[string]bool{}
	var b strings.Builder
	for i, n := range nodes {
		l, err := k.listing(n)
		if err != nil {
			fmt.Fprintf(&b, "  %s: %v\n", n.Name, err)
		}
		lists[i] = l
		for key := range l {
			union[key] = true
		}
	}
	keys := slices.Sorted(maps.Keys(union))
	for i, n := range nodes {
		var missing, older, tied []string
		for _, key := range keys {
			mine, ok := lists[i][key]
			if !ok {
				missing = append(missing, key)
				continue
			}
		others:
			for j := range nodes {
				theirs, ok := lists[j][key]
				switch {
				case ok && theirs.version > mine.version:
					older = append(older, fmt.Sprintf("%s (v%d < %s's v%d)", key, mine.version, nodes[j].Name, theirs.version))
					break others
				case ok && j > i && theirs.version == mine.version && theirs.sha256 != mine.sha256:
					tied = append(tied, fmt.Sprintf("%s (v%d here sha256 %.12s, on %s sha256 %.12s)", key, mine.version, mine.sha256, nodes[j].Name, theirs.sha256))
					break others
				}
			}
		}
		fmt.Fprintf(&b, "  %s holds %d of %d keys; missing %d %s; older %d %s; same version, other content %d %s\n", n.Name, len(lists[i]), len(keys),
			len(missing), firstFew(missing), len(older), firstFew(older), len(tied), firstFew(tied))
	}
	return b.String()
}

func firstFew(s []string) string {
	if len(s) > 8 {
		return fmt.Sprintf("%v …", s[:8])
	}
	return fmt.Sprint(s)
}

// metric sums a family's series on a node (0 when absent).
func metric(t testing.TB, n *Node, name string, labels map[string]string) float64 {
	t.Helper()
	return ScrapeMetrics(t, n).Sum(name, labels)
}

// readThroughHits is how many local misses a node has served from a peer.
func readThroughHits(t testing.TB, n *Node) float64 {
	t.Helper()
	return metric(t, n, "kura_read_through_total", map[string]string{"result": "hit"})
}

// antiEntropyRuns counts a node's finished anti-entropy sweeps, whatever their result.
func antiEntropyRuns(t testing.TB, n *Node) float64 {
	t.Helper()
	return metric(t, n, "kura_antientropy_runs_total", nil)
}

// waitSweeps waits until every node has finished at least more sweeps than it had at the
// call, so whatever a sweep would do (pull, resurrect) has had its chance.
func waitSweeps(t testing.TB, more int, nodes ...*Node) {
	t.Helper()
	before := map[*Node]float64{}
	for _, n := range nodes {
		before[n] = antiEntropyRuns(t, n)
	}
	PollUntil(t, 60*time.Second, fmt.Sprintf("%d more anti-entropy sweeps on every node", more), func() (bool, string) {
		for _, n := range nodes {
			if got := antiEntropyRuns(t, n); got < before[n]+float64(more) {
				return false, fmt.Sprintf("%s: %v sweeps, started at %v", n.Name, got, before[n])
			}
		}
		return true, ""
	})
}

// waitOutboxEmpty waits until each node's outbox holds nothing for any peer.
func waitOutboxEmpty(t testing.TB, timeout time.Duration, nodes ...*Node) {
	t.Helper()
	PollUntil(t, timeout, "outboxes drained", func() (bool, string) {
		for _, n := range nodes {
			if d := metric(t, n, "kura_outbox_depth", nil); d != 0 {
				return false, fmt.Sprintf("%s: kura_outbox_depth %v", n.Name, d)
			}
		}
		return true, ""
	})
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	rank := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

// errorList collects failures from concurrent workers and reports the first few.
type errorList struct {
	mu   sync.Mutex
	errs []error
}

func (l *errorList) add(err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.errs = append(l.errs, err)
}

func (l *errorList) failIfAny(t testing.TB, what string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) == 0 {
		return
	}
	shown := l.errs[:min(len(l.errs), 10)]
	t.Fatalf("%s: %d failures, first: %v", what, len(l.errs), errors.Join(shown...))
}

// forEach runs fn for every index in [0, n) on workers goroutines and waits for all.
func forEach(n, workers int, fn func(i int)) {
	var wg sync.WaitGroup
	next := make(chan int)
	for range min(workers, max(n, 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i)
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
}
