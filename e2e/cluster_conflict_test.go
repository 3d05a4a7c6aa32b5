package e2e

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// conflictIntervalMS is the anti-entropy period of the conflict test: long enough that
// "within one period" means something, short enough for the test to stay quick.
const conflictIntervalMS = 2000

// earlier reports whether a is the cluster's first writer against b (storage.Replaces for
// immutable kinds with two bodies: the lower version, then the lower SHA-256).
func (a listed) earlier(b listed) bool {
	if a.version != b.version {
		return a.version < b.version
	}
	return a.sha256 < b.sha256 // hex of equal length orders as the bytes do
}

// TestClusterImmutableConflictsConverge writes 200 immutable keys (Gradle and Nx) with a
// different body on each of three nodes, the three writes of a key released at the same
// instant, and expects every node to end on one body per key within one anti-entropy period
// of the last write: the copy with the lowest version (equal versions: the lowest SHA-256) of
// all the copies any node reported. Meanwhile a client polls every node over HTTP and the
// internal listings are polled too; on each node a key's body may only move to a copy that
// beats the one before (it changes at most once per losing→winning step) and never returns to
// a body that node served before: "a client never sees a body change twice".
func TestClusterImmutableConflictsConverge(t *testing.T) {
	t.Parallel()
	const keys, round = 200, 10
	interval := conflictIntervalMS * time.Millisecond
	nodes := startKuraCluster(t, 3, func(_ int, o *NodeOptions) {
		o.Env = map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": strconv.Itoa(conflictIntervalMS)}
	})
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())

	// objs[i][j] is key i's body as written on node j.
	objs := make([][]*clusterObject, keys)
	for i := range keys {
		kind := []string{kindGradle, kindNx}[i%2]
		base := gen.object(kind, "conflict", 1024+i*37)
		objs[i] = make([]*clusterObject, len(nodes))
		for j := range nodes {
			o := *base
			o.body = append(fmt.Appendf(nil, "written on %s: ", nodes[j].Name), gen.bytes(512+j*100+i)...)
			objs[i][j] = &o
		}
	}
	storeName := func(o *clusterObject) string {
		return fmt.Sprintf("%s/%s/%s/%s", clusterTenant, o.namespace, o.kind, o.id)
	}
	bodyOf := map[string]*clusterObject{} // sha256 hex → the write that carried it
	for _, per := range objs {
		for _, o := range per {
			sum := sha256.Sum256(o.body)
			bodyOf[hex.EncodeToString(sum[:])] = o
		}
	}

	var (
		mu        sync.Mutex
		failures  errorList
		reported  = map[string][]listed{} // key → every copy any node listed
		listSeq   = make([]map[string][]listed, len(nodes))
		httpSeq   = make([]map[string][]string, len(nodes)) // node → key → bodies served, in order
		httpPolls int
		stop      = make(chan struct{})
		pollers   sync.WaitGroup
	)
	for j := range nodes {
		listSeq[j], httpSeq[j] = map[string][]listed{}, map[string][]string{}
	}
	// Each node's listing: a key's copy may only move to one that beats it.
	for j, n := range nodes {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				l, err := k.listing(n)
				if err != nil {
					failures.add(err)
					return
				}
				mu.Lock()
				for name, c := range l {
					cp := c
					seq := listSeq[j][name]
					if len(seq) > 0 && seq[len(seq)-1] == cp {
						continue
					}
					if len(seq) > 0 && !cp.earlier(seq[len(seq)-1]) {
						failures.add(fmt.Errorf("%s's listing moved %s from %+v to %+v, which does not beat it", n.Name, name, seq[len(seq)-1], cp))
					}
					listSeq[j][name] = append(seq, cp)
					reported[name] = append(reported[name], cp)
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}
	// A client reading every key from each node over HTTP: a body never comes back.
	for j, n := range nodes {
		pollers.Add(1)
		go func() {
			defer pollers.Done()
			for {
				for i := range keys {
					select {
					case <-stop:
						return
					default:
					}
					o := objs[i][0]
					got, err := tryDo(request{Method: http.MethodGet, URL: o.readURL(n)})
					if err != nil {
						failures.add(fmt.Errorf("GET %s on %s: %w", o, n.Name, err))
						return
					}
					if got.Status == http.StatusNotFound {
						continue // not written (nor readable through a peer) yet
					}
					if got.Status != http.StatusOK {
						failures.add(fmt.Errorf("GET %s on %s: %s", o, n.Name, got))
						return
					}
					sum := sha256.Sum256(got.Body)
					body := hex.EncodeToString(sum[:])
					if etag := got.Header.Get("ETag"); etag != `"`+body+`"` {
						failures.add(fmt.Errorf("GET %s on %s: ETag %s for a body with sha256 %s", o, n.Name, etag, body))
					}
					if _, ok := bodyOf[body]; !ok {
						failures.add(fmt.Errorf("GET %s on %s: a body nobody wrote (sha256 %s)", o, n.Name, body))
					}
					mu.Lock()
					httpPolls++
					seq := httpSeq[j][o.id]
					if len(seq) == 0 || seq[len(seq)-1] != body {
						for _, before := range seq {
							if before == body {
								failures.add(fmt.Errorf("%s served %s's body %.12s again after %d changes", n.Name, o, body, len(seq)))
							}
						}
						httpSeq[j][o.id] = append(seq, body)
					}
					mu.Unlock()
				}
			}
		}()
	}
	stopPolling := func() {
		select {
		case <-stop:
		default:
			close(stop)
			pollers.Wait()
		}
	}
	t.Cleanup(stopPolling)

	// The three writes of each key are released together, a round of keys at a time. Nx
	// answers 409 when the key already exists on that node (a peer's push got there first):
	// that write was simply not accepted.
	var accepted [3]int
	var acceptedMu sync.Mutex
	start := time.Now()
	for first := 0; first < keys; first += round {
		release := make(chan struct{})
		var wg sync.WaitGroup
		for i := first; i < min(first+round, keys); i++ {
			for j, n := range nodes {
				o := objs[i][j]
				wg.Add(1)
				go func() {
					defer wg.Done()
					<-release
					r := request{Method: http.MethodPut, URL: o.readURL(n), Body: bytes.NewReader(o.body)}
					want := http.StatusCreated
					if o.kind == kindNx {
						r.Header = map[string]string{"Content-Type": "application/octet-stream", "Authorization": "Bearer e2e"}
						want = http.StatusOK
					}
					got, err := tryDo(r)
					switch {
					case err != nil:
						failures.add(fmt.Errorf("PUT %s on %s: %w", o, n.Name, err))
					case got.Status == want:
						acceptedMu.Lock()
						accepted[j]++
						acceptedMu.Unlock()
					case o.kind == kindNx && got.Status == http.StatusConflict:
					default:
						failures.add(fmt.Errorf("PUT %s on %s: got %s, want %d", o, n.Name, got, want))
					}
				}()
			}
		}
		close(release)
		wg.Wait()
	}
	lastWrite := time.Now()
	failures.failIfAny(t, "concurrent writes")

	// Converged: every node lists every key with one and the same copy.
	var final map[string]listed
	PollUntil(t, convergeTimeout(keys), "every node lists one copy per key", func() (bool, string) {
		lists := make([]map[string]listed, len(nodes))
		for j, n := range nodes {
			l, err := k.listing(n)
			if err != nil {
				return false, err.Error()
			}
			lists[j] = l
		}
		for i := range keys {
			name := storeName(objs[i][0])
			c0, ok := lists[0][name]
			for j := range nodes {
				if c, ok2 := lists[j][name]; !ok || !ok2 || c != c0 {
					return false, fmt.Sprintf("%s: %s has %+v, %s has %+v", name, nodes[0].Name, c0, nodes[j].Name, c)
				}
			}
		}
		final = lists[0]
		return true, ""
	})
	converged := time.Since(lastWrite)
	k.waitConverged(t, convergeTimeout(keys), keys, nodes...)
	// Let every node sweep twice more while the pollers watch: nothing may move again.
	waitSweeps(t, 2, nodes...)
	stopPolling()
	failures.failIfAny(t, "polling during convergence")

	// The winner of each key is the earliest of every copy any node reported, and each node
	// serves its body with its ETag.
	contested, changedHTTP, changedList := 0, 0, 0
	for i := range keys {
		o := objs[i][0]
		name := storeName(o)
		win := final[name]
		distinct := map[string]bool{}
		for _, c := range reported[name] {
			distinct[c.sha256] = true
			if c != win && !win.earlier(c) {
				t.Fatalf("%s: the nodes settled on %+v, but %+v was reported, an earlier write", name, win, c)
			}
		}
		if len(distinct) > 1 {
			contested++
		}
		winner := bodyOf[win.sha256]
		if winner == nil {
			t.Fatalf("%s: the nodes settled on a body nobody wrote (%s)", name, win.sha256)
		}
		for j, n := range nodes {
			got := do(t, request{Method: http.MethodGet, URL: o.readURL(n)})
			expectStatus(t, "GET "+o.String()+" on "+n.Name, got, http.StatusOK)
			if !bytes.Equal(got.Body, winner.body) || got.Header.Get("ETag") != `"`+win.sha256+`"` {
				t.Fatalf("%s on %s: serves %d bytes with ETag %s, want the winner's (%s)", o, n.Name, len(got.Body), got.Header.Get("ETag"), win.sha256)
			}
			if len(httpSeq[j][o.id]) > 1 {
				changedHTTP++
			}
			if len(listSeq[j][name]) > 1 {
				changedList++
			}
		}
	}
	var conflicts float64
	for _, n := range nodes {
		conflicts += metric(t, n, "kura_antientropy_conflicts_total", nil)
	}
	figure(t, "%d keys written with a different body on each of 3 nodes at once in %s (writes accepted per node %v); "+
		"one body per key on every node %s after the last write (anti-entropy period %s); %d keys seen with several bodies, "+
		"%d node×key body changes seen by the listing pollers and %d by %d HTTP reads; %v replacements by anti-entropy",
		keys, lastWrite.Sub(start).Round(time.Millisecond), accepted, converged.Round(time.Millisecond), interval,
		contested, changedList, changedHTTP, httpPolls, conflicts)
	if contested == 0 {
		t.Fatal("no key was ever seen with two bodies: the writes did not conflict, so nothing was tested")
	}
	// One period, with its ±20 % jitter, and the time the sweep itself takes on two shared
	// cores with race-instrumented nodes.
	if bound := interval*12/10 + 2*time.Second; converged > bound {
		t.Fatalf("converged %s after the last write, more than one anti-entropy period (%s with jitter and a sweep's run)", converged, bound)
	}
}

// TestClusterImmutableConflictsSettledByAntiEntropy has two nodes accept different bodies for
// the same 100 immutable keys while they do not know each other (each seeded with an address
// nobody answers), so no outbox holds a push for the other; then one restarts seeded with the
// other. Only anti-entropy (the newcomer's bootstrap, the other's next sweep) can settle the
// conflicts: within one period every key holds, on both nodes, the copy written first (the
// lower version of the two each node reported before they met), each settled key is counted
// once in kura_antientropy_conflicts_total, and a client reading both nodes throughout sees
// each key's body change at most once.
func TestClusterImmutableConflictsSettledByAntiEntropy(t *testing.T) {
	t.Parallel()
	const keys = 100
	interval := conflictIntervalMS * time.Millisecond
	nowhere, err := freePorts(1)
	if err != nil {
		t.Fatal(err)
	}
	opts := func(name string) NodeOptions {
		return NodeOptions{Name: name, Peers: []string{loopbackAddr(nowhere[0])},
			Env: map[string]string{"KURA_ANTI_ENTROPY_INTERVAL_MS": strconv.Itoa(conflictIntervalMS)}}
	}
	a := startClusterNode(t, opts("node-a"))
	b := startClusterNode(t, opts("node-b"))
	nodes := []*Node{a, b}
	k := newClusterKit(t, nil)
	gen := newObjectGen(t.Name())

	// Key i's body on A and on B; even keys are written on A first, odd keys on B first, each
	// phase after the other has been acknowledged.
	objs := make([][2]*clusterObject, keys)
	for i := range keys {
		base := gen.object([]string{kindGradle, kindNx}[i%2], "settle", 700+i)
		for j, n := range nodes {
			o := *base
			o.body = append(fmt.Appendf(nil, "written on %s: ", n.Name), gen.bytes(300+j*50+i)...)
			objs[i][j] = &o
		}
	}
	for phase := range 2 {
		var batch []*clusterObject
		var on []*Node
		for i := range keys {
			j := (i + phase) % 2 // phase 0: A for even keys, B for odd; phase 1 the other way
			batch = append(batch, objs[i][j])
			on = append(on, nodes[j])
		}
		var errs errorList
		forEach(len(batch), 8, func(i int) {
			if err := batch[i].write(k, on[i]); err != nil {
				errs.add(err)
			}
		})
		errs.failIfAny(t, fmt.Sprintf("phase %d writes", phase))
	}
	// What each node holds before they meet: the winner of each key is the earlier copy.
	before := make([]map[string]listed, len(nodes))
	for j, n := range nodes {
		l, err := k.listing(n)
		if err != nil {
			t.Fatal(err)
		}
		before[j] = l
	}
	name := func(o *clusterObject) string {
		return fmt.Sprintf("%s/%s/%s/%s", clusterTenant, o.namespace, o.kind, o.id)
	}
	winners := make([]*clusterObject, keys)
	for i := range keys {
		ca, cb := before[0][name(objs[i][0])], before[1][name(objs[i][1])]
		sa, sb := sha256.Sum256(objs[i][0].body), sha256.Sum256(objs[i][1].body)
		if ca.sha256 != hex.EncodeToString(sa[:]) || cb.sha256 != hex.EncodeToString(sb[:]) {
			t.Fatalf("key %d before the merge: A lists %+v, B lists %+v; want each node's own body", i, ca, cb)
		}
		first := i % 2 // the node that wrote key i first
		if (first == 0) != ca.earlier(cb) {
			t.Fatalf("key %d: the copy written first does not have the lower version (A %+v, B %+v)", i, ca, cb)
		}
		winners[i] = objs[i][first]
	}

	// A client reads every key from both nodes until the end: a body changes at most once.
	var (
		mu      sync.Mutex
		errs    errorList
		seen    = [2]map[string][]string{{}, {}}
		changes int
		stop    = make(chan struct{})
		readers sync.WaitGroup
		// restarts is odd while B restarts, so the readers tell a refused connection then
		// from a failure.
		restarts atomic.Int32
	)
	for j, n := range nodes {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				for i := range keys {
					select {
					case <-stop:
						return
					default:
					}
					gen := restarts.Load()
					got, err := tryDo(request{Method: http.MethodGet, URL: objs[i][0].readURL(n)})
					if err != nil || got.Status != http.StatusOK {
						if gen%2 == 0 && restarts.Load() == gen { // not a read of B while it restarted
							errs.add(fmt.Errorf("GET %s on %s: %v %v", objs[i][0], n.Name, got, err))
						}
						continue
					}
					mu.Lock()
					seq := seen[j][objs[i][0].id]
					if len(seq) == 0 || seq[len(seq)-1] != string(got.Body) {
						if len(seq) >= 2 {
							errs.add(fmt.Errorf("%s: %s's body changed a second time", n.Name, objs[i][0]))
						} else if len(seq) == 1 {
							changes++
						}
						seen[j][objs[i][0].id] = append(seq, string(got.Body))
					}
					mu.Unlock()
				}
			}
		}()
	}
	stopReading := func() {
		select {
		case <-stop:
		default:
			close(stop)
			readers.Wait()
		}
	}
	t.Cleanup(stopReading)

	restarts.Add(1)
	b.Stop()
	b.SetPeers([]string{a.GossipAddr()})
	b.Restart()
	restarts.Add(1)
	met := waitMembership(t, membershipTimeout, a, b)
	metAt := time.Now()
	k.waitConverged(t, convergeTimeout(keys), keys, a, b)
	converged := time.Since(metAt)
	waitSweeps(t, 2, a, b)
	stopReading()
	errs.failIfAny(t, "reading while the nodes converge")

	for i, w := range winners {
		for _, n := range nodes {
			got := do(t, request{Method: http.MethodGet, URL: w.readURL(n)})
			if got.Status != http.StatusOK || !bytes.Equal(got.Body, w.body) {
				t.Fatalf("key %d on %s: %s; want the body written first, on %s", i, n.Name, got, nodes[i%2].Name)
			}
		}
	}
	var conflicts, pushed float64
	for _, n := range nodes {
		conflicts += metric(t, n, "kura_antientropy_conflicts_total", nil)
		pushed += metric(t, n, "kura_replication_pushes_total", map[string]string{"result": "applied"})
	}
	figure(t, "%d keys with a different body on each of 2 nodes that met later (membership after %s): one body per key, the first written, on both %s after they met "+
		"(anti-entropy period %s); %v conflicts settled by anti-entropy, %v pushes applied, %d body changes seen by the readers",
		keys, met, converged.Round(time.Millisecond), interval, conflicts, pushed, changes)
	if conflicts != keys {
		t.Fatalf("kura_antientropy_conflicts_total sums to %v on the two nodes, want %d: one replacement per key", conflicts, keys)
	}
	if bound := interval*12/10 + 2*time.Second; converged > bound {
		t.Fatalf("converged %s after the nodes met, more than one anti-entropy period (%s with jitter and a sweep's run)", converged, bound)
	}
}
