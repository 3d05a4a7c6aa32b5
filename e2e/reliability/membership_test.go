package reliability

import (
	"context"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/kuracache/kura/e2e/harness"
	"github.com/kuracache/kura/internal/testsupport/figures"
)

// Item 6, membership, measured with kura's production failure detector: memberlist's LAN
// preset (probe every 1 s, 500 ms probe timeout, suspicion 4 × log10(n) probe intervals,
// at least 4 s, up to 6 × that while no other member confirms) and the default 15 s
// rejoin interval. A node counts as dead to an observer once it has left the observer's
// GET /up ring_member_names (live members: alive or suspected).

const (
	// detectTimeout bounds one survivor's wait for a dead node to leave its ring: the longest
	// suspicion (24 s with 5 nodes) plus probing, with room for a race-instrumented build on
	// a busy machine.
	detectTimeout = 60 * time.Second
	// ringTimeout bounds the formation (or re-formation) of a full ring.
	ringTimeout = 90 * time.Second
	// upTimeout bounds one GET /up, so a node that stopped answering cannot stall a poll.
	upTimeout = 3 * time.Second
)

// ringNames is the node's live members (itself included), by name, from GET /up.
func ringNames(n *harness.Node) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	up, err := n.Up(ctx)
	if err != nil {
		return nil, err
	}
	return up.RingNames, nil
}

// waitRing waits until every node's ring is exactly the names of nodes, and returns how long
// that took.
func waitRing(t testing.TB, timeout time.Duration, nodes ...*harness.Node) time.Duration {
	t.Helper()
	want := make([]string, len(nodes))
	for i, n := range nodes {
		want[i] = n.Name
	}
	slices.Sort(want)
	start := time.Now()
	harness.PollUntil(t, timeout, fmt.Sprintf("every node's ring is %v", want), func() (bool, string) {
		for _, n := range nodes {
			got, err := ringNames(n)
			if err != nil {
				return false, err.Error()
			}
			got = slices.Sorted(slices.Values(got))
			if !slices.Equal(got, want) {
				return false, fmt.Sprintf("%s's ring is %v", n.Name, got)
			}
		}
		return true, ""
	})
	return time.Since(start)
}

// timeUntilGone polls every observer until its ring no longer holds gone and returns, per
// observer, the time from since.
func timeUntilGone(t testing.TB, since time.Time, gone string, observers []*harness.Node) map[string]time.Duration {
	t.Helper()
	seen := map[string]time.Duration{}
	harness.PollUntil(t, detectTimeout, "every observer drops "+gone, func() (bool, string) {
		var waiting []string
		for _, o := range observers {
			if _, done := seen[o.Name]; done {
				continue
			}
			names, err := ringNames(o)
			if err == nil && !slices.Contains(names, gone) {
				seen[o.Name] = time.Since(since)
				continue
			}
			waiting = append(waiting, o.Name)
		}
		return len(waiting) == 0, fmt.Sprintf("%v still list %s", waiting, gone)
	})
	return seen
}

// except is nodes without the one at index skip.
func except(nodes []*harness.Node, skip int) []*harness.Node {
	out := make([]*harness.Node, 0, len(nodes)-1)
	for i, n := range nodes {
		if i != skip {
			out = append(out, n)
		}
	}
	return out
}

// percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Sorted(slices.Values(ds))
	rank := int(float64(len(s))*p/100+0.999999) - 1
	return s[min(max(rank, 0), len(s)-1)]
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// metricSum adds the values of the node's counter or gauge series called name whose labels
// include all of match (0 when there is none).
func metricSum(t testing.TB, n *harness.Node, name string, match map[string]string) float64 {
	t.Helper()
	return harness.ScrapeMetrics(t, n).Sum(name, match)
}

// TestReliabilityMembershipKillDetection kills -9 one node of a converged cluster at a time
// and measures, on every survivor, the time until the dead node leaves its ring; the victim
// is restarted and the ring re-formed before the next kill.
func TestReliabilityMembershipKillDetection(t *testing.T) {
	size, iterations := figures.Pick(3, 5), figures.Pick(3, 10)
	nodes := harness.StartCluster(t, size, nil)
	waitRing(t, ringTimeout, nodes...)

	var detections []time.Duration
	for it := range iterations {
		victim := it % size
		survivors := except(nodes, victim)
		killedAt := time.Now()
		nodes[victim].Kill()
		for name, d := range timeUntilGone(t, killedAt, nodes[victim].Name, survivors) {
			t.Logf("kill %d: %s saw %s dead after %s", it+1, name, nodes[victim].Name, d.Round(time.Millisecond))
			detections = append(detections, d)
		}
		nodes[victim].Restart()
		waitRing(t, ringTimeout, nodes...)
	}
	slices.Sort(detections)
	figures.Report(t, 6, "time to detect a kill -9 (p99)", fmt.Sprintf("%s p99 (median %s; %d observations, %d nodes)",
		seconds(percentile(detections, 99)), seconds(percentile(detections, 50)), len(detections), size))
}

// TestReliabilityMembershipIsolationRejoin cuts one node off from all the others (every
// packet dropped, both ways) until each side has declared the other dead, which takes longer
// than the suspicion timeout by definition, then heals and measures the time until every ring
// is whole again. The isolated node is the slow side: every probe of its fails, so Lifeguard
// slows its probing and no peer confirms its suspicions (about 8 s with 3 nodes, 45-50 s
// with 5, longer than memberlist's 30 s of gossip to the dead).
func TestReliabilityMembershipIsolationRejoin(t *testing.T) {
	requirePacketFilter(t)
	size, iterations := figures.Pick(3, 5), figures.Pick(2, 5)
	nodes := harness.StartCluster(t, size, netNode(20, 47720, nil))
	filter := newPacketFilter(t, "relnet-isolation")
	waitRing(t, ringTimeout, nodes...)

	var rejoins, cutOff []time.Duration
	for it := range iterations {
		isolated := nodes[it%size]
		others := except(nodes, it%size)
		cutAt := time.Now()
		filter.partition([]*harness.Node{isolated}, others)
		timeUntilGone(t, cutAt, isolated.Name, others)
		harness.PollUntil(t, detectTimeout, isolated.Name+" sees itself alone", func() (bool, string) {
			names, err := ringNames(isolated)
			return err == nil && len(names) == 1, fmt.Sprintf("ring %v (%v)", names, err)
		})
		isolatedFor := time.Since(cutAt)
		filter.heal()
		took := waitRing(t, ringTimeout, nodes...)
		t.Logf("isolation %d: %s cut off for %s, the ring whole %s after the heal", it+1, isolated.Name,
			isolatedFor.Round(time.Millisecond), took.Round(time.Millisecond))
		rejoins = append(rejoins, took)
		cutOff = append(cutOff, isolatedFor)
	}
	figures.Report(t, 6, "rejoin after heal (time)", fmt.Sprintf("%s max (%d isolations of %s to %s, %d nodes, default 15 s rejoin interval)",
		seconds(slices.Max(rejoins)), len(rejoins), seconds(slices.Min(cutOff)), seconds(slices.Max(cutOff)), size))
}

// TestReliabilityMembershipPacketLoss drops 10 % of the packets every node sends to its peers
// (each direction of every link, gossip and internal plane alike) for a bounded time, with a
// trickle of replicated writes, and counts the healthy nodes declared dead: the peers
// removed from any ring (kura_cluster_member_events_total{type="left"}), which must be none.
// Every acknowledged write must also reach every node while the loss lasts.
func TestReliabilityMembershipPacketLoss(t *testing.T) {
	requirePacketFilter(t)
	size, duration := figures.Pick(3, 5), figures.Pick(20*time.Second, 3*time.Minute)
	nodes := harness.StartCluster(t, size, netNode(30, 47730, nil))
	filter := newPacketFilter(t, "relnet-loss")
	waitRing(t, ringTimeout, nodes...)

	leftBefore := make([]float64, size)
	for i, n := range nodes {
		leftBefore[i] = metricSum(t, n, "kura_cluster_member_events_total", map[string]string{"type": "left"})
	}
	filter.lose(nodes, 0.10)
	start := time.Now()
	rng := mathrand.New(mathrand.NewPCG(uint64(start.UnixNano()), 3))
	acked := &writeLog{bodies: map[objectRef][32]byte{}}
	shortRings, polls, writes := 0, 0, 0
	for time.Since(start) < duration {
		// A write every round keeps the internal plane busy under the same loss.
		acked.put(nodes[writes%size], plain("loss", strconv.Itoa(writes)), objectBody(rng))
		writes++
		for _, n := range nodes {
			names, err := ringNames(n)
			if err != nil {
				t.Fatalf("GET %s/up under packet loss: %v", n.Name, err)
			}
			polls++
			if len(names) != size {
				shortRings++
				t.Logf("%s after %s: ring %v", n.Name, time.Since(start).Round(time.Millisecond), names)
			}
		}
		time.Sleep(250 * time.Millisecond) // the polling cadence, not a wait for a condition
	}
	// Replication retries through the same loss: every acknowledged write reaches every node
	// before the heal.
	want := newExpectation()
	want.bodies = acked.bodies
	took, states, ok := newInternalPlane(t).waitDelivered(t, deliveryTimeout, want, nodes)
	if !ok {
		t.Errorf("under 10 %% loss, acknowledged writes did not reach every node within %s: %+v", deliveryTimeout, states)
	}
	dropped, sent := filter.counters()
	filter.heal()
	declaredDead := 0.0
	for i, n := range nodes {
		declaredDead += metricSum(t, n, "kura_cluster_member_events_total", map[string]string{"type": "left"}) - leftBefore[i]
	}
	t.Logf("%s of 10 %% loss on %d nodes: %d of %d packets dropped (%.1f %%); %d of %d writes acknowledged, on every node %s after the last; %d of %d ring polls short of a member",
		duration, size, dropped, sent, 100*float64(dropped)/float64(max(sent, 1)), len(acked.bodies), writes, took.Round(time.Millisecond), shortRings, polls)
	if dropped == 0 {
		t.Fatalf("the loss rules dropped no packet: the test measured nothing")
	}
	figures.Check(t, 6, "healthy nodes declared dead under 10 % loss", int(declaredDead), 0)
}
