package reliability

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"maps"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/cluster/peer/peerpb"
	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
	"github.com/kuracache/kura/storage"
)

// Item 7, acknowledged writes across a partition, with plain HTTP objects
// (/api/cache/objects): they are last-writer-wins, a DELETE is a replicated delete marker and
// a namespace clean a replicated tombstone (SPEC.md §5), so one surface exercises every
// conflict rule a partition can put to the test.
//
// What a node holds is read from its internal plane (FindObjects, ListTombstones), which
// answers from the node's own store: a public GET would read through to a peer and could
// hide a write the node never received. Public GETs are used only where the client's view
// is the point, to ask whether a deleted object is served again.

const (
	objectTenant = "relnet"
	// rpcTimeout bounds one internal-plane call.
	rpcTimeout = 30 * time.Second
	// deliveryTimeout bounds the wait for writes to reach every node after a heal.
	deliveryTimeout = 2 * time.Minute
)

// objectRef names one object of the test tenant: a plain object (last writer wins) or a
// Gradle entry (immutable: the cluster keeps the first writer).
type objectRef struct {
	kind            storage.Kind
	namespace, name string
}

func plain(namespace, name string) objectRef  { return objectRef{storage.KindObjects, namespace, name} }
func gradle(namespace, name string) objectRef { return objectRef{storage.KindGradle, namespace, name} }

func (r objectRef) path() string {
	if r.kind == storage.KindGradle {
		return "/api/cache/gradle/" + objectTenant + "/" + r.namespace + "/" + r.name
	}
	return "/api/cache/objects/" + objectTenant + "/" + r.namespace + "/" + r.name
}

func (r objectRef) key() *peerpb.ObjectKey {
	return &peerpb.ObjectKey{Tenant: objectTenant, Namespace: r.namespace, Kind: string(r.kind), Name: r.name}
}

// objectBody is a random body of a size typical of a cache entry, now and then a large one
// (which replication pushes on its own rather than in a batch).
func objectBody(rng *mathrand.Rand) []byte {
	size := 64 + rng.IntN(16<<10)
	if rng.IntN(25) == 0 {
		size = 512 << 10
	}
	b := make([]byte, size)
	_, _ = rand.Read(b)
	return b
}

// putObject stores body under ref through n; true means the write was acknowledged (201).
func putObject(n *harness.Node, ref objectRef, body []byte) (bool, error) {
	req, err := http.NewRequest(http.MethodPut, n.URL()+ref.path(), bytes.NewReader(body))
	if err != nil {
		return false, err
	}
	return expect(n, req, http.StatusCreated)
}

// deleteObject deletes ref through n; true means the delete was acknowledged (204).
func deleteObject(n *harness.Node, ref objectRef) (bool, error) {
	req, err := http.NewRequest(http.MethodDelete, n.URL()+ref.path(), nil)
	if err != nil {
		return false, err
	}
	return expect(n, req, http.StatusNoContent)
}

// cleanNamespace deletes every object of the test tenant's namespace through n (204).
func cleanNamespace(n *harness.Node, namespace string) (bool, error) {
	req, err := http.NewRequest(http.MethodDelete, n.URL()+"/api/cache/clean?tenant_id="+objectTenant+"&namespace_id="+namespace, nil)
	if err != nil {
		return false, err
	}
	return expect(n, req, http.StatusNoContent)
}

func expect(n *harness.Node, req *http.Request, status int) (bool, error) {
	resp, err := n.Client(30 * time.Second).Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != status {
		return false, fmt.Errorf("%s %s on %s: %d %s", req.Method, req.URL.Path, n.Name, resp.StatusCode, body)
	}
	return true, nil
}

// publicStatus is the status of a public GET of ref on n (which reads through to peers).
func publicStatus(t testing.TB, n *harness.Node, ref objectRef) int {
	t.Helper()
	resp, err := n.Client(30 * time.Second).Get(n.URL() + ref.path())
	if err != nil {
		t.Fatalf("GET %s on %s: %v", ref.path(), n.Name, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// internalPlane holds the test's connections to the nodes' internal planes (plaintext: the
// test nodes run without mTLS and without a gossip key); t.Cleanup closes them.
type internalPlane struct {
	mu    sync.Mutex
	conns map[*harness.Node]*grpc.ClientConn
}

func newInternalPlane(t testing.TB) *internalPlane {
	p := &internalPlane{conns: map[*harness.Node]*grpc.ClientConn{}}
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

func (p *internalPlane) client(t testing.TB, n *harness.Node) peerpb.ReplicationClient {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	c, ok := p.conns[n]
	if !ok {
		var err error
		// From testClientIP, like the test's HTTP clients, so packet-loss rules spare it.
		dialer := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(testClientIP)}}
		c, err = grpc.NewClient("passthrough:///"+n.InternalAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) { return dialer.DialContext(ctx, "tcp", addr) }),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)))
		if err != nil {
			t.Fatalf("grpc.NewClient(%s): %v", n.InternalAddr(), err)
		}
		p.conns[n] = c
	}
	return peerpb.NewReplicationClient(c)
}

// find returns the header of every ref n stores itself.
func (p *internalPlane) find(t testing.TB, n *harness.Node, refs []objectRef) (map[objectRef]*peerpb.ObjectHeader, error) {
	t.Helper()
	out := make(map[objectRef]*peerpb.ObjectHeader, len(refs))
	for start := 0; start < len(refs); start += peer.MaxFindKeys {
		chunk := refs[start:min(start+peer.MaxFindKeys, len(refs))]
		req := &peerpb.FindObjectsRequest{Keys: make([]*peerpb.ObjectKey, len(chunk))}
		for i, r := range chunk {
			req.Keys[i] = r.key()
		}
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		resp, err := p.client(t, n).FindObjects(ctx, req)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("FindObjects on %s: %w", n.Name, err)
		}
		for _, h := range resp.GetPresent() {
			out[objectRef{storage.Kind(h.GetKey().GetKind()), h.GetKey().GetNamespace(), h.GetKey().GetName()}] = h
		}
	}
	return out, nil
}

// tombstoned reports whether n holds a tombstone of the test tenant's namespace.
func (p *internalPlane) tombstoned(t testing.TB, n *harness.Node, namespace string) (bool, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	resp, err := p.client(t, n).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
	if err != nil {
		return false, fmt.Errorf("ListTombstones on %s: %w", n.Name, err)
	}
	for _, ts := range resp.GetTombstones() {
		if ts.GetTenant() == objectTenant && ts.GetNamespace() == namespace {
			return true, nil
		}
	}
	return false, nil
}

// expectation is what every node must end up holding.
type expectation struct {
	bodies  map[objectRef][32]byte // acknowledged PUTs still current: exactly this body
	deleted map[objectRef]bool     // acknowledged DELETEs: the delete marker (or nothing), never a body
	cleaned map[objectRef]bool     // written before a namespace clean: nothing
	cleans  []string               // cleaned namespaces: their tombstone
}

func newExpectation() *expectation {
	return &expectation{bodies: map[objectRef][32]byte{}, deleted: map[objectRef]bool{}, cleaned: map[objectRef]bool{}}
}

func (e *expectation) refs() []objectRef {
	out := make([]objectRef, 0, len(e.bodies)+len(e.deleted)+len(e.cleaned))
	for r := range e.bodies {
		out = append(out, r)
	}
	for r := range e.deleted {
		out = append(out, r)
	}
	for r := range e.cleaned {
		out = append(out, r)
	}
	return out
}

// nodeState compares one node's store with e: how many acknowledged writes (current PUTs and
// DELETEs) it holds, how many tombstoned keys (deleted or cleaned) it holds a body of, and
// whether it has every tombstone.
type nodeState struct {
	acknowledged, held, resurrected int
	tombstones                      bool
	example                         string // one missing or resurrected key, for the log
}

func (p *internalPlane) state(t testing.TB, n *harness.Node, e *expectation) (nodeState, error) {
	t.Helper()
	headers, err := p.find(t, n, e.refs())
	if err != nil {
		return nodeState{}, err
	}
	s := nodeState{acknowledged: len(e.bodies) + len(e.deleted), tombstones: true}
	for r, sum := range e.bodies {
		if h, ok := headers[r]; ok && bytes.Equal(h.GetSha256(), sum[:]) {
			s.held++
		} else if s.example == "" {
			s.example = "missing " + r.path()
		}
	}
	for r := range e.deleted {
		switch h, ok := headers[r]; {
		case ok && h.GetContentType() == storage.ObjectDeletedContentType:
			s.held++
		case ok:
			s.resurrected++
			s.example = "a body of deleted " + r.path()
		case s.example == "":
			s.example = "no delete marker for " + r.path()
		}
	}
	for r := range e.cleaned {
		if _, ok := headers[r]; ok {
			s.resurrected++
			s.example = "a body of cleaned " + r.path()
		}
	}
	for _, ns := range e.cleans {
		ok, err := p.tombstoned(t, n, ns)
		if err != nil {
			return nodeState{}, err
		}
		s.tombstones = s.tombstones && ok
	}
	return s, nil
}

func (s nodeState) converged() bool {
	return s.held == s.acknowledged && s.resurrected == 0 && s.tombstones
}

// waitDelivered polls every node until it holds exactly what e says, or timeout passes; it
// returns the time it took, the last states, and whether every node got there.
func (p *internalPlane) waitDelivered(t testing.TB, timeout time.Duration, e *expectation, nodes []*harness.Node) (time.Duration, []nodeState, bool) {
	t.Helper()
	start := time.Now()
	for {
		states := make([]nodeState, len(nodes))
		all := true
		for i, n := range nodes {
			s, err := p.state(t, n, e)
			if err != nil {
				t.Fatalf("read %s's store: %v", n.Name, err)
			}
			states[i] = s
			all = all && s.converged()
		}
		if all || time.Since(start) > timeout {
			return time.Since(start), states, all
		}
		time.Sleep(100 * time.Millisecond) // the polling cadence
	}
}

// antiEntropyRuns counts the node's finished sweeps, whatever their result.
func antiEntropyRuns(t testing.TB, n *harness.Node) float64 {
	t.Helper()
	return metricSum(t, n, "kura_antientropy_runs_total", nil)
}

// waitSweeps waits until every node has finished more sweeps than it had at the call.
func waitSweeps(t testing.TB, more int, nodes ...*harness.Node) {
	t.Helper()
	before := make([]float64, len(nodes))
	for i, n := range nodes {
		before[i] = antiEntropyRuns(t, n)
	}
	harness.PollUntil(t, deliveryTimeout, fmt.Sprintf("%d more anti-entropy sweeps on every node", more), func() (bool, string) {
		for i, n := range nodes {
			if got := antiEntropyRuns(t, n); got < before[i]+float64(more) {
				return false, fmt.Sprintf("%s: %v sweeps, %v at the start", n.Name, got, before[i])
			}
		}
		return true, ""
	})
}

// writeLog records acknowledged writes from concurrent clients.
type writeLog struct {
	mu     sync.Mutex
	bodies map[objectRef][32]byte
	failed int
	err    error // the first failure, for the log
}

func (l *writeLog) put(n *harness.Node, ref objectRef, body []byte) {
	ok, err := putObject(n, ref, body)
	l.mu.Lock()
	defer l.mu.Unlock()
	if ok {
		l.bodies[ref] = sha256.Sum256(body)
		return
	}
	l.failed++
	if l.err == nil {
		l.err = err
	}
}

// TestReliabilityPartitionAcknowledgedWrites partitions a 3-node cluster into {A} | {B, C}
// for longer than the suspicion timeout (each side declares the other dead, so new writes
// are queued for no one across the cut and only anti-entropy can carry them over), writes
// on both sides, deletes objects both sides held and cleans a namespace on one side, heals,
// and checks that every acknowledged write reaches every node within two anti-entropy
// periods of the ring re-forming and that no deleted or cleaned key comes back.
func TestReliabilityPartitionAcknowledgedWrites(t *testing.T) {
	requirePacketFilter(t)
	// The short mode's sweeps are frequent so the test is quick; the long mode's are the
	// default 30 s, the period the guarantee is written for, with ten times the writes
	// (about 100 MB to carry over).
	antiEntropy := figures.Pick(5*time.Second, 30*time.Second)
	env := map[string]string{
		"KURA_ANTI_ENTROPY_INTERVAL_MS":  strconv.Itoa(int(antiEntropy / time.Millisecond)),
		"KURA_GOSSIP_REJOIN_INTERVAL_MS": "1000",
	}
	nodes := harness.StartCluster(t, 3, netNode(40, 47740, env))
	filter := newPacketFilter(t, "relnet-partition")
	a, b, c := nodes[0], nodes[1], nodes[2]
	waitRing(t, ringTimeout, nodes...)
	plane := newInternalPlane(t)
	rng := mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), 7))

	before, perSide := figures.Pick(40, 400), figures.Pick(120, 1500)
	want := newExpectation()
	// Before the partition: objects every node holds, some of which will be deleted or
	// cleaned on one side while the other still holds them.
	pre := &writeLog{bodies: map[objectRef][32]byte{}}
	for i := range before {
		pre.put(nodes[i%3], plain("kept", "pre-"+strconv.Itoa(i)), objectBody(rng))
		pre.put(nodes[i%3], plain("cleaned", "pre-"+strconv.Itoa(i)), objectBody(rng))
	}
	if pre.failed > 0 {
		t.Fatalf("%d writes before the partition failed: %v", pre.failed, pre.err)
	}
	seeded := newExpectation()
	seeded.bodies = pre.bodies
	if _, states, ok := plane.waitDelivered(t, deliveryTimeout, seeded, nodes); !ok {
		t.Fatalf("the writes before the partition did not reach every node: %+v", states)
	}

	// The partition, held until each side has declared the other dead.
	cutAt := time.Now()
	filter.partition([]*harness.Node{a}, []*harness.Node{b, c})
	timeUntilGone(t, cutAt, a.Name, []*harness.Node{b, c})
	harness.PollUntil(t, detectTimeout, a.Name+" sees itself alone", func() (bool, string) {
		names, err := ringNames(a)
		return err == nil && len(names) == 1, fmt.Sprintf("ring %v (%v)", names, err)
	})
	t.Logf("partitioned {%s} | {%s, %s}: both sides saw the other dead after %s", a.Name, b.Name, c.Name, time.Since(cutAt).Round(time.Millisecond))

	// Both sides write new objects at once, 4 clients per node.
	during := &writeLog{bodies: map[objectRef][32]byte{}}
	var wg sync.WaitGroup
	for i, n := range nodes {
		count := perSide / 2
		if n == a {
			count = perSide
		}
		for w := range 4 {
			wg.Add(1)
			workerRng := mathrand.New(mathrand.NewPCG(rng.Uint64(), uint64(i*4+w)))
			go func() {
				defer wg.Done()
				for j := w; j < count; j += 4 {
					during.put(n, plain("kept", fmt.Sprintf("%s-%d", n.Name, j)), objectBody(workerRng))
				}
			}()
		}
	}
	wg.Wait()
	if during.failed > 0 {
		t.Fatalf("%d writes during the partition failed (each side must keep accepting writes): %v", during.failed, during.err)
	}
	for r, sum := range pre.bodies {
		if r.namespace == "kept" {
			want.bodies[r] = sum
		}
	}
	for r, sum := range during.bodies {
		want.bodies[r] = sum
	}
	// Deletes: the first quarter of the objects written before the partition on A, the
	// second quarter on B; the other side keeps its copy until the heal.
	for i := range before / 2 {
		ref := plain("kept", "pre-"+strconv.Itoa(i))
		on := a
		if i >= before/4 {
			on = b
		}
		if ok, err := deleteObject(on, ref); !ok {
			t.Fatalf("delete during the partition: %v", err)
		}
		delete(want.bodies, ref)
		want.deleted[ref] = true
	}
	// Conflicts across the cut: both sides write the same key, a few milliseconds apart so
	// that the hybrid logical clocks (one machine's clock here) order the two writes. Which
	// side writes first alternates.
	conflicts := before / 8
	step := func() { time.Sleep(5 * time.Millisecond) } // distinct milliseconds for the clocks
	mustPut := func(n *harness.Node, ref objectRef) [32]byte {
		t.Helper()
		body := objectBody(rng)
		if ok, err := putObject(n, ref, body); !ok {
			t.Fatalf("conflicting write during the partition: %v", err)
		}
		return sha256.Sum256(body)
	}
	mustDelete := func(n *harness.Node, ref objectRef) {
		t.Helper()
		if ok, err := deleteObject(n, ref); !ok {
			t.Fatalf("conflicting delete during the partition: %v", err)
		}
	}
	for i := range conflicts {
		first, second := a, b
		if i%2 == 1 {
			first, second = b, a
		}
		// Plain objects: the last writer wins.
		ref := plain("kept", "lww-"+strconv.Itoa(i))
		mustPut(first, ref)
		step()
		want.bodies[ref] = mustPut(second, ref)
		// Gradle entries are immutable: the cluster keeps the first writer.
		ref = gradle("gradle", fmt.Sprintf("%064x", i))
		want.bodies[ref] = mustPut(first, ref)
		step()
		mustPut(second, ref)
		// A delete, then a newer write of a key both sides held: the write wins.
		ref = plain("kept", "pre-"+strconv.Itoa(before/2+i))
		mustDelete(first, ref)
		step()
		want.bodies[ref] = mustPut(second, ref)
		// A write, then a newer delete: deleted.
		ref = plain("kept", "pre-"+strconv.Itoa(before/2+conflicts+i))
		mustPut(first, ref)
		step()
		mustDelete(second, ref)
		delete(want.bodies, ref)
		want.deleted[ref] = true
	}
	// A namespace clean on B while A, cut off, still holds the namespace and writes into it.
	// Versions are hybrid logical clocks on one machine's clock, so a write acknowledged
	// before the clean is older than its tombstone and one acknowledged after it is newer;
	// the pauses keep the three steps in distinct milliseconds.
	for i := range before / 4 {
		ref := plain("cleaned", "a-before-"+strconv.Itoa(i))
		if ok, err := putObject(a, ref, objectBody(rng)); !ok {
			t.Fatalf("write on A before the clean: %v", err)
		}
		want.cleaned[ref] = true
	}
	for r := range pre.bodies {
		if r.namespace == "cleaned" {
			want.cleaned[r] = true
		}
	}
	time.Sleep(5 * time.Millisecond)
	if ok, err := cleanNamespace(b, "cleaned"); !ok {
		t.Fatalf("clean during the partition: %v", err)
	}
	want.cleans = append(want.cleans, "cleaned")
	time.Sleep(5 * time.Millisecond)
	after := &writeLog{bodies: map[objectRef][32]byte{}}
	for i := range before / 4 {
		after.put(a, plain("cleaned", "a-after-"+strconv.Itoa(i)), objectBody(rng))
	}
	if after.failed > 0 {
		t.Fatalf("writes on A after the clean failed: %v", after.err)
	}
	for r, sum := range after.bodies {
		want.bodies[r] = sum
	}

	// Heal; the ring re-forms (1 s rejoin), then anti-entropy carries the writes over.
	filter.heal()
	healedAt := time.Now()
	waitRing(t, ringTimeout, nodes...)
	ringAt := time.Since(healedAt)
	deadline := time.Now().Add(2 * antiEntropy)

	// At once, before a sweep has carried the tombstone over to A: B and C hold it, and a
	// client asking them for a cleaned key must get 404, not a copy read through from A.
	cleaned := slices.Collect(maps.Keys(want.cleaned))
	onA, err := plane.find(t, a, cleaned)
	if err != nil {
		t.Fatal(err)
	}
	servedThrough := 0
	for _, r := range cleaned {
		for _, n := range []*harness.Node{b, c} {
			if status := publicStatus(t, n, r); status != http.StatusNotFound {
				servedThrough++
				t.Logf("%s serves cleaned %s right after the heal: %d", n.Name, r.path(), status)
			}
		}
	}
	t.Logf("right after the heal %s still held %d of the %d cleaned keys; %s and %s served %d", a.Name, len(onA), len(cleaned), b.Name, c.Name, servedThrough)

	_, states, converged := plane.waitDelivered(t, time.Until(deadline), want, nodes)
	withinTwo := time.Since(deadline.Add(-2 * antiEntropy))
	minHeld := states[0].held
	for i, s := range states {
		minHeld = min(minHeld, s.held)
		if !s.converged() {
			t.Logf("%s two anti-entropy periods after the ring re-formed: %d of %d acknowledged writes, %d resurrected, tombstones %v (%s)",
				nodes[i].Name, s.held, s.acknowledged, s.resurrected, s.tombstones, s.example)
		}
	}
	acknowledged := states[0].acknowledged
	if !converged {
		rest, final, ok := plane.waitDelivered(t, deliveryTimeout, want, nodes)
		withinTwo += rest
		t.Logf("after %s more (converged: %v): %+v", rest.Round(time.Millisecond), ok, final)
	}
	t.Logf("%d acknowledged writes (%d during the partition, %d deletes, %d keys written on both sides), %d cleaned keys; ring whole %s after the heal, every write on every node %s later",
		acknowledged, len(during.bodies), len(want.deleted), 4*conflicts, len(want.cleaned), ringAt.Round(time.Millisecond), withinTwo.Round(time.Millisecond))
	figures.Check(t, 7, "acknowledged writes on every node within two anti-entropy periods", percentOf(minHeld, acknowledged), "100 %")
	figures.Report(t, 7, "time from heal to every write on every node", fmt.Sprintf("%s (ring %s + %s; anti-entropy every %s; %d writes)",
		seconds(ringAt+withinTwo), seconds(ringAt), seconds(withinTwo), antiEntropy, acknowledged))

	// Whatever a sweep might bring back has had two more chances; a client asks every node
	// for every deleted or cleaned key (a public read, which reads through to peers).
	waitSweeps(t, 2, nodes...)
	resurrected := servedThrough
	for _, n := range nodes {
		s, err := plane.state(t, n, want)
		if err != nil {
			t.Fatal(err)
		}
		resurrected += s.resurrected
		if s.held != s.acknowledged {
			t.Errorf("%s lost acknowledged writes after more sweeps: %d of %d (%s)", n.Name, s.held, s.acknowledged, s.example)
		}
		for r := range want.deleted {
			if status := publicStatus(t, n, r); status != http.StatusNotFound {
				resurrected++
				t.Logf("%s serves deleted %s: %d", n.Name, r.path(), status)
			}
		}
		for r := range want.cleaned {
			if status := publicStatus(t, n, r); status != http.StatusNotFound {
				resurrected++
				t.Logf("%s serves cleaned %s: %d", n.Name, r.path(), status)
			}
		}
	}
	figures.Check(t, 7, "tombstoned keys resurrected", resurrected, 0)
}

func percentOf(n, of int) string {
	if n == of {
		return "100 %"
	}
	return fmt.Sprintf("%.2f %%", 100*float64(n)/float64(max(of, 1)))
}

// TestReliabilityPartitionOutboxKill kills -9 a node in the middle of fanning writes out to
// its peers while one of them cannot be reached (on the internal plane only, so gossip still
// flows and the peer stays a live member for whom every write is queued; or, every other
// time, altogether, the kill coming before the peer is declared dead), restarts it, heals,
// and checks that every acknowledged write reaches both peers. Anti-entropy is set to an
// hour, so only the outbox can deliver.
func TestReliabilityPartitionOutboxKill(t *testing.T) {
	requirePacketFilter(t)
	env := map[string]string{
		"KURA_ANTI_ENTROPY_INTERVAL_MS":  strconv.Itoa(int(time.Hour / time.Millisecond)),
		"KURA_GOSSIP_REJOIN_INTERVAL_MS": "1000",
	}
	nodes := harness.StartCluster(t, 3, netNode(50, 47750, env))
	filter := newPacketFilter(t, "relnet-outbox")
	a, b, c := nodes[0], nodes[1], nodes[2]
	waitRing(t, ringTimeout, nodes...)
	plane := newInternalPlane(t)
	rng := mathrand.New(mathrand.NewPCG(uint64(time.Now().UnixNano()), 11))

	iterations, queued := figures.Pick(2, 10), figures.Pick(40, 400)
	lost, total := 0, 0
	var deliveries []time.Duration
	for it := range iterations {
		// Every other kill, B is cut off altogether rather than on its internal plane alone:
		// A then restarts with a queue for a peer that is not a member, which becomes one
		// again only at the heal.
		cut := "its internal plane"
		if it%2 == 0 {
			filter.blockTCP(a, b, b.InternalPort)
		} else {
			filter.partition([]*harness.Node{a}, []*harness.Node{b})
			cut = "every packet"
		}
		acked := &writeLog{bodies: map[objectRef][32]byte{}}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			workerRng := mathrand.New(mathrand.NewPCG(rng.Uint64(), uint64(w)))
			go func() {
				defer wg.Done()
				for j := 0; ; j++ {
					select {
					case <-stop:
						return
					default:
					}
					acked.put(a, plain("outbox", fmt.Sprintf("%d-%d-%d", it, w, j)), objectBody(workerRng))
				}
			}()
		}
		// Kill once a backlog for B has built up (and C is being served), at a random moment.
		harness.PollUntil(t, deliveryTimeout, "a backlog for "+b.Name+" on "+a.Name, func() (bool, string) {
			depth := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": b.Name})
			return depth >= float64(queued), fmt.Sprintf("depth %v", depth)
		})
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond) // a random moment of the fan-out
		depthToB := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": b.Name})
		depthToC := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": c.Name})
		a.Kill()
		close(stop)
		wg.Wait()
		took := a.Restart()
		restoredToB := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": b.Name})
		filter.heal()
		healedAt := time.Now()
		want := newExpectation()
		want.bodies = acked.bodies
		delivered, states, _ := plane.waitDelivered(t, deliveryTimeout, want, []*harness.Node{b, c})
		for i, s := range states {
			lost += s.acknowledged - s.held
			if !s.converged() {
				t.Errorf("kill %d: %s holds %d of %d acknowledged writes %s after the heal (%s)",
					it+1, []*harness.Node{b, c}[i].Name, s.held, s.acknowledged, deliveryTimeout, s.example)
			}
		}
		total += len(acked.bodies)
		deliveries = append(deliveries, time.Since(healedAt))
		// Delivered entries leave the queue: an outbox that delivers but never forgets would
		// push everything again after each restart and grow without bound.
		harness.PollUntil(t, deliveryTimeout, a.Name+"'s outbox drained", func() (bool, string) {
			toB := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": b.Name})
			toC := metricSum(t, a, "kura_outbox_depth", map[string]string{"peer": c.Name})
			return toB == 0 && toC == 0, fmt.Sprintf("depth for %s %v, for %s %v", b.Name, toB, c.Name, toC)
		})
		t.Logf("kill %d (%s to %s cut): %d writes acknowledged by %s (%d failed around the kill), queued for %s %v and for %s %v at the kill, %v after restarting (ready in %s); on both peers %s after the heal",
			it+1, cut, b.Name, len(acked.bodies), a.Name, acked.failed, b.Name, depthToB, c.Name, depthToC, restoredToB, took, delivered.Round(time.Millisecond))
		waitRing(t, ringTimeout, nodes...)
	}
	figures.Check(t, 7, "outbox entries lost across a kill -9 during fan-out", lost, 0)
	figures.Report(t, 7, "outbox delivery after restart and heal", fmt.Sprintf("%s max (%d kills, %d acknowledged writes)",
		seconds(slices.Max(deliveries)), iterations, total))
}
