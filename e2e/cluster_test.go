package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kuracache/kura/internal/testdns"

	repb "github.com/bazelbuild/remote-apis/build/bazel/remote/execution/v2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/cluster/peer/peerpb"
)

// TestClusterReplicatesEveryKind writes an object of every kind on one node of three and
// expects it, byte-identical, on the other two once their digests match (so the reads are
// local, not read-through); then last-writer-wins across nodes for both mutable kinds, the
// agreement of concurrent writers, the replication lag, and where the internal plane is served.
func TestClusterReplicatesEveryKind(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 3, func(i int, o *NodeOptions) { o.Region = []string{"us", "eu", "ap"}[i] })
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())
	stored := 0 // store objects written so far in this cluster

	t.Run("every kind written on A is readable on B and C", func(t *testing.T) {
		sizes := map[string]int{
			kindXcode: 1 << 20, kindKeyValue: 4 << 10, kindGradle: 300 << 10, kindModule: 2*modulePart + 1234,
			kindNx: 64 << 10, kindMetro: 32 << 10, kindBazelCAS: 2 << 20, kindBazelAC: 300,
			kindREAPIBlob: 3<<20 + 7, kindREAPIAC: 5 << 10, kindObjects: 200 << 10,
		}
		var objs []*clusterObject
		for _, kind := range everyKind {
			objs = append(objs, gen.object(kind, "every-kind", sizes[kind]))
		}
		objs = append(objs, gen.object(kindREAPIBlob, "every-kind", 700)) // a batch-sized blob too
		stored += storedCount(objs)
		readThroughBefore := []float64{readThroughHits(t, b), readThroughHits(t, c)}

		wrote := writeObjects(t, k, objs, 4, a)
		expectIntact(t, k, objs, a)
		converged := k.waitConverged(t, convergeTimeout(stored), stored, a, b, c)
		expectIntact(t, k, objs, b, c)
		for i, n := range []*Node{b, c} {
			if got := readThroughHits(t, n) - readThroughBefore[i]; got != 0 {
				t.Errorf("%s served %v reads through a peer: replication did not deliver everything before the reads", n.Name, got)
			}
		}
		// The outbox (not only anti-entropy) carried the writes to each peer.
		waitOutboxEmpty(t, 60*time.Second, a)
		for _, n := range []*Node{b, c} {
			pushed := metric(t, a, "kura_replication_pushes_total", map[string]string{"peer": n.Name, "result": "applied"}) +
				metric(t, a, "kura_replication_pushes_total", map[string]string{"peer": n.Name, "result": "skipped"})
			if pushed == 0 {
				t.Errorf("A's outbox reports no delivered push to %s (kura_replication_pushes_total{peer=%q})", n.Name, n.Name)
			}
		}
		figure(t, "%d objects of all %d kinds (%.1f MiB) written on A in %s; B and C identical %s later",
			len(objs), len(everyKind), float64(totalBytes(objs))/(1<<20), wrote, converged)
	})

	t.Run("last writer wins across nodes", func(t *testing.T) {
		v1 := gen.keyValue("lww", "doc-1", "v1 written on A")
		v2 := gen.keyValue("lww", "doc-1", "v2 written on B", "with a second entry")
		action := gen.hexID(32)
		ac1 := &clusterObject{kind: kindBazelAC, namespace: "lww", id: action, body: []byte("action result v1 from A"), stored: 1}
		ac2 := &clusterObject{kind: kindBazelAC, namespace: "lww", id: action, body: []byte("action result v2 from B, longer"), stored: 1}
		stored += 2
		// B writes v2 after v1 has reached it, so v2 is causally later and must win everywhere
		// (writes on two nodes in the same instant are the next subtest's business).
		writeObjects(t, k, []*clusterObject{v1, ac1}, 1, a)
		k.waitConverged(t, convergeTimeout(stored), stored, a, b, c)
		expectIntact(t, k, []*clusterObject{v1, ac1}, b)
		writeObjects(t, k, []*clusterObject{v2, ac2}, 1, b)
		k.waitConverged(t, convergeTimeout(stored), stored, a, b, c)
		expectIntact(t, k, []*clusterObject{v2, ac2}, a, b, c)
		// Later sweeps must not flip anything back.
		waitSweeps(t, 2, a, b, c)
		expectIntact(t, k, []*clusterObject{v2, ac2}, a, b, c)
	})

	t.Run("concurrent writers converge on one value", func(t *testing.T) {
		// Each round releases one write on A and one on B of the same key at the same instant,
		// alternating the two last-writer-wins kinds, so the two versions are often issued
		// in the same millisecond: whatever the order, every node must end with one value.
		const rounds = 100
		fromA, fromB := make([]*clusterObject, rounds), make([]*clusterObject, rounds)
		for i := range rounds {
			id := fmt.Sprintf("race-%d", i)
			if i%2 == 0 {
				fromA[i] = gen.keyValue("concurrent", id, "from A")
				fromB[i] = gen.keyValue("concurrent", id, "from B")
			} else {
				id = gen.hexID(32)
				fromA[i] = &clusterObject{kind: kindBazelAC, namespace: "concurrent", id: id, body: []byte("from A"), stored: 1}
				fromB[i] = &clusterObject{kind: kindBazelAC, namespace: "concurrent", id: id, body: []byte("from B"), stored: 1}
			}
		}
		stored += rounds
		var errs errorList
		for i := range rounds {
			start := make(chan struct{})
			var wg sync.WaitGroup
			for _, w := range []struct {
				o *clusterObject
				n *Node
			}{{fromA[i], a}, {fromB[i], b}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-start
					if err := w.o.write(k, w.n); err != nil {
						errs.add(err)
					}
				}()
			}
			close(start)
			wg.Wait()
		}
		errs.failIfAny(t, "concurrent writes")
		k.waitConverged(t, convergeTimeout(stored), stored, a, b, c)
		wins := map[string]int{}
		for i := range rounds {
			var agreed string
			for j, n := range nodes {
				got := do(t, request{Method: http.MethodGet, URL: fromA[i].readURL(n)})
				expectStatus(t, "GET "+fromA[i].String()+" on "+n.Name, got, http.StatusOK)
				value := string(got.Body)
				if fromA[i].kind == kindKeyValue {
					values, err := documentValues(got.Body)
					if err != nil {
						t.Fatal(err)
					}
					value = strings.Join(values, ",")
				}
				if j == 0 {
					agreed = value
				} else if value != agreed {
					t.Errorf("%s: %s has %q, %s has %q", fromA[i], a.Name, agreed, n.Name, value)
				}
			}
			if agreed != "from A" && agreed != "from B" {
				t.Errorf("%s converged on %q, which neither writer wrote", fromA[i], agreed)
			}
			wins[agreed]++
		}
		figure(t, "%d keys written at the same instant on A and B (keyvalue and action cache): every node agrees on each (%v)", rounds, wins)
	})

	t.Run("replication lag", func(t *testing.T) {
		const writes, every = 500, 10 * time.Millisecond
		lags := measureReplicationLag(t, k, gen, a, []*Node{b, c}, writes, every)
		stored += writes
		for _, n := range []*Node{b, c} {
			ds := lags[n]
			figure(t, "A to %s, %d small blobs written every %s: p50 %s, p99 %s, max %s", n.Name, len(ds), every,
				percentile(ds, 50).Round(10*time.Microsecond), percentile(ds, 99).Round(10*time.Microsecond),
				percentile(ds, 100).Round(10*time.Microsecond))
		}
	})

	t.Run("internal plane only on its own port", func(t *testing.T) {
		expectInternalPlaneOnlyOnItsPort(t, k, a)
	})
}

func totalBytes(objs []*clusterObject) int {
	n := 0
	for _, o := range objs {
		n += len(o.body)
	}
	return n
}

// measureReplicationLag writes small CAS blobs on origin at a steady pace and measures, per
// blob, the time from the write's acknowledgement to the blob being present on each target.
// Presence is read with the internal plane's FindObjects, which only looks at the target's
// own store (a GET would read through to the origin, and REAPI FindMissingBlobs counts what
// the origin holds, so both would measure the origin instead); the poll loop's period, a few
// milliseconds, bounds the resolution.
func measureReplicationLag(t *testing.T, k *clusterKit, gen *objectGen, origin *Node, targets []*Node, writes int, every time.Duration) map[*Node][]time.Duration {
	t.Helper()
	const namespace = "lag"
	readThroughBefore := map[*Node]float64{}
	for _, n := range targets {
		readThroughBefore[n] = readThroughHits(t, n)
	}
	var (
		mu     sync.Mutex
		acked  = map[string]time.Time{}
		digest = map[string]*repb.Digest{}
		lags   = map[*Node][]time.Duration{}
		errs   errorList
		wg     sync.WaitGroup
	)
	objs := make([]*clusterObject, writes)
	for i := range objs {
		objs[i] = gen.object(kindBazelCAS, namespace, 200+i%800)
	}
	deadline := time.Now().Add(convergeTimeout(writes) + time.Duration(writes)*every)

	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for _, o := range objs {
			<-tick.C
			if err := o.write(k, origin); err != nil {
				errs.add(err)
				return
			}
			now := time.Now()
			mu.Lock()
			acked[o.id] = now
			digest[o.id] = digestOf(o.body)
			mu.Unlock()
		}
	}()
	for _, n := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			plane := k.internal(n)
			seen := map[string]bool{}
			for len(seen) < writes {
				if time.Now().After(deadline) {
					errs.add(fmt.Errorf("%s: only %d of %d blobs arrived before the deadline", n.Name, len(seen), writes))
					return
				}
				mu.Lock()
				var pending []*repb.Digest
				for id, d := range digest {
					if !seen[id] {
						pending = append(pending, d)
					}
				}
				mu.Unlock()
				if len(pending) == 0 {
					time.Sleep(time.Millisecond)
					continue
				}
				if len(pending) > peer.MaxFindKeys {
					pending = pending[:peer.MaxFindKeys]
				}
				req := &peerpb.FindObjectsRequest{}
				for _, d := range pending {
					req.Keys = append(req.Keys, &peerpb.ObjectKey{Tenant: n.Options().TenantID, Namespace: namespace, Kind: "cas", Name: d.GetHash()})
				}
				ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
				resp, err := plane.FindObjects(ctx, req)
				cancel()
				now := time.Now()
				if err != nil {
					errs.add(fmt.Errorf("FindObjects on %s: %w", n.Name, err))
					return
				}
				present := map[string]bool{}
				for _, h := range resp.GetPresent() {
					present[h.GetKey().GetName()] = true
				}
				mu.Lock()
				for _, d := range pending {
					if present[d.GetHash()] {
						seen[d.GetHash()] = true
						lags[n] = append(lags[n], now.Sub(acked[d.GetHash()]))
					}
				}
				mu.Unlock()
				time.Sleep(time.Millisecond)
			}
		}()
	}
	wg.Wait()
	errs.failIfAny(t, "replication lag")
	for _, n := range targets {
		if got := readThroughHits(t, n) - readThroughBefore[n]; got != 0 {
			t.Errorf("%s read %v objects through a peer while only its own store was asked", n.Name, got)
		}
	}
	return lags
}

// expectInternalPlaneOnlyOnItsPort checks that kura.internal.v1 answers on the internal port
// only: the REAPI port does not know the service and the public HTTP port has no such route.
func expectInternalPlaneOnlyOnItsPort(t *testing.T, k *clusterKit, n *Node) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
	defer cancel()
	if _, err := k.internal(n).ListTombstones(ctx, &peerpb.ListTombstonesRequest{}); err != nil {
		t.Fatalf("ListTombstones on the internal port %s: %v", n.InternalAddr(), err)
	}
	_, err := peerpb.NewReplicationClient(k.reapiConn(n)).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
	if status.Code(err) != codes.Unimplemented {
		t.Errorf("ListTombstones on the REAPI port %s: %v, want Unimplemented", n.GRPCAddr(), err)
	}
	_, err = peerpb.NewReplicationClient(k.conn(n.HTTPAddr(), insecure.NewCredentials())).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
	if err == nil {
		t.Errorf("ListTombstones over gRPC on the public HTTP port %s succeeded", n.HTTPAddr())
	}
	got := do(t, request{Method: http.MethodPost, URL: n.URL() + "/kura.internal.v1.Replication/ListTombstones",
		Body: strings.NewReader(""), Header: map[string]string{"Content-Type": "application/grpc"}})
	expectStatus(t, "POST /kura.internal.v1.Replication/ListTombstones on the public HTTP port", got, http.StatusNotFound)
}

// TestClusterRestartConverges SIGKILLs one node of three, writes a mixed batch on the other
// two, restarts it and waits until its digests equal theirs; then stops the two others and
// reads every write from the restarted node alone, so nothing can come from read-through.
func TestClusterRestartConverges(t *testing.T) {
	t.Parallel()
	writes := clusterObjects()
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())

	// Half the writes land while A and B still count C as a member (their outboxes queue them
	// for C), half after they dropped it (only anti-entropy can bring those to C).
	c.Kill()
	objs := gen.mixed(writes, "restart")
	wrote := writeObjects(t, k, objs[:writes/2], 8, a, b)
	dropped := waitDropped(t, 60*time.Second, c, a, b)
	wrote += writeObjects(t, k, objs[writes/2:], 8, a, b)
	figure(t, "%d mixed writes on A and B while C was down (SIGKILL; dropped from membership after %s): %s of writing, %.0f writes/s",
		writes, dropped, wrote, float64(writes)/wrote.Seconds())

	restartedAt := time.Now()
	ready := c.Restart()
	k.waitConverged(t, convergeTimeout(writes), storedCount(objs), a, b, c)
	converged := time.Since(restartedAt).Round(time.Millisecond)
	waitOutboxEmpty(t, 60*time.Second, a, b)
	pulled := metric(t, c, "kura_antientropy_objects_repaired_total", nil)
	pushed := 0.0
	for _, n := range []*Node{a, b} {
		pushed += metric(t, n, "kura_replication_pushes_total", map[string]string{"peer": c.Name, "result": "applied"})
	}
	figure(t, "C restarted (ready in %s) and held all %d writes %s after its restart began: %v pulled by anti-entropy, %v pushed from outboxes",
		ready, writes, converged, pulled, pushed)

	a.Stop()
	b.Stop()
	start := time.Now()
	expectIntact(t, k, objs, c)
	figure(t, "all %d writes read back intact from C alone in %s", writes, time.Since(start).Round(time.Millisecond))
}

// TestClusterBootstrap adds a node seeded with one member only and another that finds the
// cluster through DNS SRV records (which appear only after it started, so it must re-resolve);
// both bootstrap everything, which each then serves alone.
func TestClusterBootstrap(t *testing.T) {
	t.Parallel()
	objects := clusterObjects()
	dns := testdns.Start(t)
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())
	objs := gen.mixed(objects, "bootstrap")
	writeObjects(t, k, objs, 8, a, b, c)
	k.waitConverged(t, convergeTimeout(objects), storedCount(objs), a, b, c)

	start := time.Now()
	d := startClusterNode(t, NodeOptions{Name: "node-3", Peers: []string{a.GossipAddr()}})
	ready := time.Since(start).Round(time.Millisecond)
	waitMembership(t, membershipTimeout, a, b, c, d)
	k.waitConverged(t, convergeTimeout(objects), storedCount(objs), a, b, c, d)
	figure(t, "a new node seeded with one member bootstrapped %d objects %s after it was started (ready in %s)",
		storedCount(objs), time.Since(start).Round(time.Millisecond), ready)

	const srvName = "_kura._tcp.cluster.e2e.test."
	e := startClusterNode(t, NodeOptions{Name: "node-4", Env: map[string]string{
		"KURA_DISCOVERY_DNS_NAME":   srvName,
		"KURA_DISCOVERY_DNS_SERVER": dns.Addr(),
	}})
	if got, err := connected(e); err != nil || len(got) != 0 {
		t.Fatalf("node-4 has peers %v (%v) before any DNS record exists", got, err)
	}
	var targets []testdns.Target
	for _, n := range []*Node{a, b, c} {
		host := n.Name + ".cluster.e2e.test."
		dns.SetA(host, "127.0.0.1")
		targets = append(targets, testdns.Target{Host: host, Port: uint16(n.GossipPort)})
	}
	dns.SetSRV(srvName, targets)
	start = time.Now()
	joined := waitMembership(t, membershipTimeout, a, b, c, d, e)
	k.waitConverged(t, convergeTimeout(objects), storedCount(objs), a, b, c, d, e)
	figure(t, "a node discovering the cluster through DNS SRV joined %s after the records appeared and bootstrapped %d objects in %s (%d DNS queries)",
		joined, storedCount(objs), time.Since(start).Round(time.Millisecond), dns.Queries())

	for _, n := range []*Node{a, b, c, e} {
		n.Stop()
	}
	expectIntact(t, k, objs, d)
	d.Stop()
	e.Restart()
	expectIntact(t, k, objs, e)
}

// TestClusterNamespaceClean cleans a namespace on one node while another is down: the
// namespace is gone on every node, stays gone after the down node returns with its old copy
// and after further sweeps, and a node bootstrapping afterwards does not bring it back;
// other namespaces are untouched and the cleaned one accepts new writes.
func TestClusterNamespaceClean(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())
	var wipe, keep []*clusterObject
	for _, kind := range everyKind {
		wipe = append(wipe, gen.object(kind, "wipe", 2<<10), gen.object(kind, "wipe", 70<<10))
		keep = append(keep, gen.object(kind, "keep", 2<<10))
	}
	writeObjects(t, k, wipe, 4, a, b, c)
	writeObjects(t, k, keep, 4, a, b, c)
	k.waitConverged(t, convergeTimeout(len(wipe)), storedCount(wipe)+storedCount(keep), a, b, c)

	// C is down and already dropped by the others, so no outbox queues the tombstone for it:
	// it must learn the clean from anti-entropy, while it still holds the namespace.
	c.Kill()
	waitDropped(t, 60*time.Second, c, a, b)
	got := do(t, request{Method: http.MethodDelete, URL: a.URL() + "/api/cache/clean?tenant_id=" + clusterTenant + "&namespace_id=wipe"})
	expectStatus(t, "DELETE /api/cache/clean on A", got, http.StatusNoContent)
	// A reads through to B while B may not have the tombstone yet: still nothing may be served.
	expectAbsent(t, k, wipe, a)
	took := waitAbsent(t, k, 60*time.Second, wipe, b)
	expectIntact(t, k, keep, a, b)
	figure(t, "clean on A: %d objects of every kind gone on B %s later", len(wipe), took)

	c.Restart()
	// C still holds the namespace until it learns the tombstone; A and B read through to it
	// and anti-entropy pulls from it, and neither may resurrect anything.
	expectAbsent(t, k, wipe, a, b)
	waitMembership(t, membershipTimeout, a, b, c)
	expectAbsent(t, k, wipe, a, b)
	took = waitAbsent(t, k, 60*time.Second, wipe, c)
	k.waitConverged(t, convergeTimeout(len(keep)), storedCount(keep), a, b, c)
	figure(t, "C, down during the clean, served none of the namespace %s after its restart", took)
	waitSweeps(t, 2, a, b, c)
	expectAbsent(t, k, wipe, a, b, c)
	expectIntact(t, k, keep, a, b, c)

	// A new node bootstraps from the one that was down.
	e := startClusterNode(t, NodeOptions{Name: "node-3", Peers: []string{c.GossipAddr()}})
	waitMembership(t, membershipTimeout, a, b, c, e)
	k.waitConverged(t, convergeTimeout(len(keep)), storedCount(keep), a, b, c, e)
	expectAbsent(t, k, wipe, a, b, c, e)
	expectIntact(t, k, keep, e)

	// The cleaned namespace takes new writes, and they replicate.
	fresh := []*clusterObject{gen.object(kindGradle, "wipe", 1<<10), gen.object(kindKeyValue, "wipe", 100), gen.object(kindREAPIAC, "wipe", 3<<10)}
	writeObjects(t, k, fresh, 1, b)
	k.waitConverged(t, convergeTimeout(len(keep)), storedCount(keep)+storedCount(fresh), a, b, c, e)
	expectIntact(t, k, fresh, a, b, c, e)
	expectAbsent(t, k, wipe, a, b, c, e)
}

// TestClusterCleanBeatsQueuedWrites queues writes in a node's outbox while its peers are
// down, stops it, cleans the namespace on the peers, and restarts it: the queued pushes carry
// writes older than the clean, and no node may apply them or serve them again.
func TestClusterCleanBeatsQueuedWrites(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())
	var late []*clusterObject
	for _, kind := range everyKind {
		late = append(late, gen.object(kind, "late", 1<<10))
	}

	// Written right after A and B die, before C's failure detector notices: C's outbox queues
	// every write for both of them.
	a.Kill()
	b.Kill()
	writeObjects(t, k, late, 4, c)
	for _, n := range []*Node{a, b} {
		if depth := metric(t, c, "kura_outbox_depth", map[string]string{"peer": n.Name}); depth < float64(len(late)) {
			t.Fatalf("C queued %v entries for %s, want ≥ %d: the writes were not queued (setup failed)", depth, n.Name, len(late))
		}
	}
	c.Stop()

	a.Restart()
	b.Restart()
	waitMembership(t, membershipTimeout, a, b)
	got := do(t, request{Method: http.MethodDelete, URL: a.URL() + "/api/cache/clean?tenant_id=" + clusterTenant + "&namespace_id=late"})
	expectStatus(t, "DELETE /api/cache/clean on A", got, http.StatusNoContent)
	PollUntil(t, 60*time.Second, "B holds the tombstone of namespace late", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), rpcTimeout)
		defer cancel()
		resp, err := k.internal(b).ListTombstones(ctx, &peerpb.ListTombstonesRequest{})
		if err != nil {
			return false, err.Error()
		}
		for _, ts := range resp.GetTombstones() {
			if ts.GetTenant() == clusterTenant && ts.GetNamespace() == "late" {
				return true, ""
			}
		}
		return false, fmt.Sprintf("tombstones %v", resp.GetTombstones())
	})

	c.Restart()
	waitMembership(t, membershipTimeout, a, b, c)
	waitOutboxEmpty(t, 60*time.Second, c)
	expectAbsent(t, k, late, a, b)
	waitAbsent(t, k, 60*time.Second, late, c)
	k.waitConverged(t, convergeTimeout(0), 0, a, b, c)
	waitSweeps(t, 2, a, b, c)
	expectAbsent(t, k, late, a, b, c)
	results := map[string]float64{}
	for _, n := range []*Node{a, b} {
		for _, r := range []string{"applied", "skipped", "dropped", "error"} {
			results[r] += metric(t, c, "kura_replication_pushes_total", map[string]string{"peer": n.Name, "op": "object", "result": r})
		}
	}
	if results["applied"] != 0 {
		t.Errorf("A or B applied %v of C's queued pushes of writes older than the clean", results["applied"])
	}
	figure(t, "%d writes queued on C before a clean it missed: after its restart its outbox reported %v (none applied), and no node serves them",
		len(late), results)
}

// TestClusterIsolatedNodeRejoins freezes a node (SIGSTOP) until the others declare it gone,
// writes on them, and resumes it: it rejoins by itself and converges, including a keyvalue
// document overwritten while it was away.
func TestClusterIsolatedNodeRejoins(t *testing.T) {
	t.Parallel()
	nodes := startKuraCluster(t, 3, nil)
	a, b, c := nodes[0], nodes[1], nodes[2]
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())
	before := gen.mixed(30, "isolation")
	doc := gen.keyValue("isolation", "overwritten", "before the partition")
	writeObjects(t, k, append(before, doc), 4, a)
	k.waitConverged(t, convergeTimeout(40), storedCount(before)+1, a, b, c)

	pause(t, c)
	dropped := waitDropped(t, 60*time.Second, c, a, b)
	during := gen.mixed(100, "isolation")
	newer := gen.keyValue("isolation", "overwritten", "written during the partition")
	writeObjects(t, k, during, 8, a, b)
	writeObjects(t, k, []*clusterObject{newer}, 1, b)

	resume(t, c)
	readThroughBefore := readThroughHits(t, c) // C served no read since it was frozen
	rejoined := waitMembership(t, membershipTimeout, a, b, c)
	converged := k.waitConverged(t, convergeTimeout(150), storedCount(before)+storedCount(during)+1, a, b, c)
	expectIntact(t, k, append(append(slices.Clone(before), during...), newer), c)
	if got := readThroughHits(t, c) - readThroughBefore; got != 0 {
		t.Errorf("C served %v reads through a peer after converging", got)
	}
	figure(t, "a SIGSTOPped node was dropped by the others %s after it froze; after SIGCONT it rejoined in %s and converged (%d writes missed) %s later",
		dropped, rejoined, len(during)+1, converged)
}

// TestClusterGossipKey runs a keyed two-node cluster next to three nodes that must never be
// admitted: one with another key, one with no key, one with the key but another tenant. Over
// an observation window measured in their join attempts and the members' sweeps, no view ever
// lists an intruder (or an intruder a member), and no intruder receives a write.
func TestClusterGossipKey(t *testing.T) {
	t.Parallel()
	key := base64.StdEncoding.EncodeToString(sha256Bytes("e2e gossip key"))
	wrongKey := base64.StdEncoding.EncodeToString(sha256Bytes("another gossip key"))
	nodes := startKuraCluster(t, 2, func(i int, o *NodeOptions) { o.Env = map[string]string{"KURA_GOSSIP_KEY": key} })
	a, b := nodes[0], nodes[1]
	k := newClusterKit(t, nil)
	seeds := []string{a.GossipAddr(), b.GossipAddr()}
	intruders := []*Node{
		startClusterNode(t, NodeOptions{Name: "wrong-key", Peers: seeds, Env: map[string]string{"KURA_GOSSIP_KEY": wrongKey}}),
		startClusterNode(t, NodeOptions{Name: "no-key", Peers: seeds}),
		startClusterNode(t, NodeOptions{Name: "other-tenant", TenantID: "other-tenant", Peers: seeds, Env: map[string]string{"KURA_GOSSIP_KEY": key}}),
	}
	objs := newObjectGen(t.Name()).mixed(20, "keyed")
	writeObjects(t, k, objs, 4, a)

	// The window ends once every intruder has gone through at least ten re-join rounds against
	// its two seeds (each seed counts one attempt) and A has swept five times; with the
	// one-second intervals of the suite that is ten seconds or more.
	const minAttempts, minSweeps = 20, 5
	joinAttempts := func(n *Node) float64 { return metric(t, n, "kura_cluster_join_attempts_total", nil) }
	attempts0 := map[*Node]float64{}
	for _, n := range intruders {
		attempts0[n] = joinAttempts(n)
	}
	sweeps0 := antiEntropyRuns(t, a)
	start := time.Now()
	membersOnly := map[*Node][]string{a: {b.URL()}, b: {a.URL()}}
	for _, n := range intruders {
		membersOnly[n] = nil
	}
	PollUntil(t, 3*time.Minute, fmt.Sprintf("every intruder tried to join %d times and A swept %d times", minAttempts, minSweeps), func() (bool, string) {
		for n, want := range membersOnly {
			got, err := connected(n)
			if err != nil {
				t.Fatalf("%s /up: %v", n.Name, err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("%s lists %v in connected_nodes after %s, want %v", n.Name, got, time.Since(start).Round(time.Millisecond), want)
			}
		}
		for _, n := range intruders {
			if got := joinAttempts(n) - attempts0[n]; got < minAttempts {
				return false, fmt.Sprintf("%s made %v join attempts", n.Name, got)
			}
		}
		if got := antiEntropyRuns(t, a) - sweeps0; got < minSweeps {
			return false, fmt.Sprintf("A swept %v times", got)
		}
		return true, ""
	})
	window := time.Since(start).Round(time.Millisecond)

	k.waitConverged(t, convergeTimeout(len(objs)), storedCount(objs), a, b)
	for _, n := range intruders {
		d, err := k.digest(n)
		if err != nil {
			t.Fatal(err)
		}
		if d.objects != 0 {
			t.Errorf("%s, never admitted, holds %d objects", n.Name, d.objects)
		}
		if st := readObjects(k, objs, n, 4); st.intact != 0 || len(st.problems) != 0 {
			t.Errorf("%s serves %d of the cluster's objects (problems %v)", n.Name, st.intact, firstFew(st.problems))
		}
	}
	rejected := 0.0
	for _, n := range []*Node{a, b, intruders[2]} {
		rejected += metric(t, n, "kura_cluster_admission_rejections_total", map[string]string{"reason": "tenant"})
	}
	if rejected == 0 {
		t.Errorf("no node counted a tenant rejection (kura_cluster_admission_rejections_total{reason=tenant}) for the other tenant's node")
	}
	figure(t, "3 intruders (wrong key, no key, other tenant) kept out for an observation window of %s (≥ %d join attempts each, %d sweeps); %v tenant rejections counted",
		window, minAttempts, minSweeps, rejected)
}

func sha256Bytes(s string) []byte {
	sum := sha256.Sum256([]byte(s))
	return sum[:]
}
