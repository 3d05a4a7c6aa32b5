package outbox

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	peerplane "github.com/kuracache/kura/cluster/peer"
	"github.com/kuracache/kura/internal/testsupport"
	"github.com/kuracache/kura/storage"
	"github.com/kuracache/kura/storage/storagetest"
)

// The lane's bounds are the internal plane's.
func TestBatchBoundsAreThePlanes(t *testing.T) {
	if maxBatchItems != peerplane.MaxBatchItems || maxBatchBytes != peerplane.MaxBatchBytes || maxBatchItemBytes != peerplane.MaxBatchItemBytes {
		t.Fatalf("outbox batch bounds (%d items, %d bytes, %d per item) differ from the plane's (%d, %d, %d)",
			maxBatchItems, maxBatchBytes, maxBatchItemBytes, peerplane.MaxBatchItems, peerplane.MaxBatchBytes, peerplane.MaxBatchItemBytes)
	}
	var _ BatchSender = (*peerplane.Client)(nil)
}

// recordingSender stands between the outbox and the real client: it counts every object
// each call carried and every object the peer acknowledged, and may fail chosen objects.
type recordingSender struct {
	BatchSender
	mu      sync.Mutex
	sent    map[storage.Key]int // objects pushed, in a batch or alone
	acked   map[storage.Key]int // objects the peer answered as delivered
	batches int
	alone   int
	// failItem, when set, makes the peer's answer for an object a transient error (the
	// object is not sent to the peer at all).
	failItem func(k storage.Key) bool
	// batchAddr, when set, receives the PushBatch calls instead of the peer (an older node).
	batchAddr string
}

func newRecordingSender(c BatchSender) *recordingSender {
	return &recordingSender{BatchSender: c, sent: map[storage.Key]int{}, acked: map[storage.Key]int{}}
}

func (s *recordingSender) PushObject(ctx context.Context, addr string, info storage.Info, body io.Reader) (bool, error) {
	s.mu.Lock()
	s.sent[info.Key]++
	s.alone++
	s.mu.Unlock()
	applied, err := s.BatchSender.PushObject(ctx, addr, info, body)
	if err == nil {
		s.mu.Lock()
		s.acked[info.Key]++
		s.mu.Unlock()
	}
	return applied, err
}

func (s *recordingSender) PushBatch(ctx context.Context, addr string, objs []storage.PutItem) ([]storage.PutItemResult, error) {
	s.mu.Lock()
	s.batches++
	var pass []storage.PutItem
	var at []int
	out := make([]storage.PutItemResult, len(objs))
	for i, o := range objs {
		s.sent[o.Key]++
		if s.failItem != nil && s.failItem(o.Key) {
			out[i].Err = fmt.Errorf("injected: %w", storage.ErrInsufficientStorage)
			continue
		}
		pass, at = append(pass, o), append(at, i)
	}
	target := addr
	if s.batchAddr != "" {
		target = s.batchAddr
	}
	s.mu.Unlock()
	if len(pass) == 0 {
		return out, nil
	}
	res, err := s.BatchSender.PushBatch(ctx, target, pass)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for j, r := range res {
		out[at[j]] = r
		if r.Err == nil {
			s.acked[pass[j].Key]++
		}
	}
	return out, nil
}

func (s *recordingSender) counts() (batches, alone int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.batches, s.alone
}

func histogramCount(t *testing.T, h prometheus.Observer) uint64 {
	t.Helper()
	var m dto.Metric
	if err := h.(prometheus.Metric).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// Small objects written on A reach B's disk store through PushBatch over the real internal
// plane, in few calls, while a large object and a tombstone still take their own RPCs; every
// object is acknowledged exactly once and the queue is emptied.
func TestBatchedLaneDelivers(t *testing.T) {
	var rec *recordingSender
	p := newReplPair(t, func(c *Config) {
		rec = newRecordingSender(c.Sender.(BatchSender))
		c.Sender = rec
	})
	p.ob.SetPaused(true) // a backlog first: the lane fills whole batches
	keys, _ := p.writeA(t, "small", 1500, 1<<10, 8)
	large := storage.Key{Tenant: "bench", Namespace: "repl", Kind: storage.KindGradle, Name: "large"}
	largeBody := storagetest.Bytes(77, 3<<20)
	if _, err := p.a.Put(context.Background(), large, bytes.NewReader(largeBody), storage.PutOptions{Size: int64(len(largeBody))}); err != nil {
		t.Fatal(err)
	}
	if err := p.a.DeleteNamespace(context.Background(), "bench", "gone", 0); err != nil {
		t.Fatal(err)
	}
	p.ob.SetPaused(false)
	p.drain(t)
	p.checkOnB(t, append(keys, large))
	if got, err := readOn(p.b, large); err != nil || !bytes.Equal(got, largeBody) {
		t.Fatalf("large object on B: %d bytes, %v", len(got), err)
	}
	batches, alone := rec.counts()
	if batches == 0 || batches > 1500/64 {
		t.Errorf("%d PushBatch calls for 1,500 small objects; want a few full batches", batches)
	}
	if alone != 1 {
		t.Errorf("%d objects pushed alone, want the large one only", alone)
	}
	rec.mu.Lock()
	for _, k := range keys {
		if rec.acked[k] != 1 || rec.sent[k] != 1 {
			t.Errorf("%v: sent %d times, acknowledged %d; want once", k, rec.sent[k], rec.acked[k])
		}
	}
	rec.mu.Unlock()
	if got := testutil.ToFloat64(p.ob.metrics.pushes.WithLabelValues("b", "object", resultApplied)); got != 1501 {
		t.Errorf("applied pushes = %v, want 1501", got)
	}
	if got := testutil.ToFloat64(p.ob.metrics.pushes.WithLabelValues("b", "tombstone", resultApplied)); got != 1 {
		t.Errorf("applied tombstones = %v, want 1", got)
	}
	if n := histogramCount(t, p.ob.metrics.batchItems.WithLabelValues("b")); n != uint64(batches) {
		t.Errorf("batch size histogram has %d samples, want one per call (%d)", n, batches)
	}
	if tomb, ok := tombstoneOn(t, p.b, "bench", "gone"); !ok || tomb == 0 {
		t.Error("the tombstone did not reach B")
	}
}

func readOn(s storage.Store, k storage.Key) ([]byte, error) {
	r, err := s.Open(context.Background(), k, 0, -1)
	if err != nil {
		return nil, err
	}
	defer func() { _ = r.Close() }()
	var b bytes.Buffer
	_, err = b.ReadFrom(r)
	return b.Bytes(), err
}

func tombstoneOn(t *testing.T, s storage.Index, tenant, ns string) (storage.Version, bool) {
	t.Helper()
	ts, err := s.Tombstones(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, tomb := range ts {
		if tomb.Tenant == tenant && tomb.Namespace == ns {
			return tomb.Version, true
		}
	}
	return 0, false
}

// When the peer fails some objects of a batch, exactly those are retried after a backoff:
// the others, acknowledged, leave the queue and are never sent again, and the failed ones
// arrive once the peer takes them.
func TestBatchedLanePartialFailure(t *testing.T) {
	var rec *recordingSender
	var mu sync.Mutex
	failing := true
	p := newReplPair(t, func(c *Config) {
		rec = newRecordingSender(c.Sender.(BatchSender))
		rec.failItem = func(k storage.Key) bool {
			mu.Lock()
			defer mu.Unlock()
			return failing && strings.HasSuffix(k.Name, "7")
		}
		c.Sender = rec
		c.MinBackoff, c.MaxBackoff = 5*time.Millisecond, 20*time.Millisecond
	})
	p.ob.SetPaused(true)
	keys, _ := p.writeA(t, "part", 400, 1<<10, 4)
	p.ob.SetPaused(false)
	// The others are delivered and the failed ones stay queued, retried.
	testsupport.WaitFor(t, "all but the failing objects delivered", 30*time.Second, func() bool { return p.ob.Depth("b") == 40 })
	testsupport.WaitFor(t, "a retry of the failing objects", 30*time.Second, func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.sent[keys[7]] >= 2
	})
	mu.Lock()
	failing = false
	mu.Unlock()
	p.drain(t)
	p.checkOnB(t, keys)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, k := range keys {
		if strings.HasSuffix(k.Name, "7") {
			if rec.acked[k] != 1 || rec.sent[k] < 2 {
				t.Errorf("failing %v: sent %d, acknowledged %d; want retried until acknowledged once", k, rec.sent[k], rec.acked[k])
			}
			continue
		}
		if rec.sent[k] != 1 || rec.acked[k] != 1 {
			t.Errorf("%v: sent %d, acknowledged %d; an acknowledged object must not be sent again", k, rec.sent[k], rec.acked[k])
		}
	}
	if got := testutil.ToFloat64(p.ob.metrics.pushes.WithLabelValues("b", "object", resultError)); got < 40 {
		t.Errorf("error pushes = %v, want at least the 40 failed objects", got)
	}
}

// A peer that predates PushBatch (a real gRPC server answering UNIMPLEMENTED) gets every
// object through PushObject, and the outbox remembers it: one PushBatch attempt, one
// fallback counted, nothing lost.
func TestBatchedLaneFallsBackForAnOlderPeer(t *testing.T) {
	older := testsupport.NewOlderPeer(t)
	var rec *recordingSender
	p := newReplPair(t, func(c *Config) {
		rec = newRecordingSender(c.Sender.(BatchSender))
		rec.batchAddr = older
		c.Sender = rec
	})
	keys, _ := p.writeA(t, "old", 300, 1<<10, 4)
	p.drain(t)
	p.checkOnB(t, keys)
	batches, alone := rec.counts()
	// The batches launched before the first answer all fail over; later ones are not tried.
	if batches < 1 || batches > DefaultBatchesInFlight || alone != len(keys) {
		t.Errorf("%d PushBatch calls and %d PushObject calls; want the first attempts only, then every object alone", batches, alone)
	}
	if got := testutil.ToFloat64(p.ob.metrics.batchUnsupported.WithLabelValues("b")); got != 1 {
		t.Errorf("fallbacks = %v, want 1", got)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, k := range keys {
		if rec.acked[k] != 1 {
			t.Errorf("%v acknowledged %d times", k, rec.acked[k])
		}
	}
}
