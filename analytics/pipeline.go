package analytics

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
)

// queued is an event with the wall time (Unix ms) it was recorded at.
type queued struct {
	Event
	at int64
}

// pipeline is one webhook's queue, breaker and metric children. Only its worker goroutine
// touches br; queue and depth are shared with Record.
type pipeline struct {
	r     *Reporter
	name  Pipeline
	url   string
	queue chan queued
	// depth counts events accepted by Record and not yet delivered or dropped: those in the
	// queue plus the batch the worker holds.
	depth atomic.Int64
	// state mirrors br's state for the breaker gauge.
	state atomic.Int32
	br    breaker
	m     pipelineMetrics
}

func newPipeline(r *Reporter, name Pipeline, url string, m *metrics) *pipeline {
	p := &pipeline{
		r:     r,
		name:  name,
		url:   url,
		queue: make(chan queued, r.cfg.QueueCapacity),
		br:    breaker{threshold: r.cfg.BreakerFailureThreshold, openFor: r.cfg.BreakerOpen},
	}
	p.m = m.forPipeline(string(name))
	return p
}

// enqueue never blocks: a full queue drops the event.
func (p *pipeline) enqueue(q queued) {
	// Counted before the send so the worker can never take depth below zero.
	p.depth.Add(1)
	select {
	case p.queue <- q:
		p.m.enqueued.Inc()
	default:
		p.depth.Add(-1)
		p.m.droppedFull.Inc()
	}
}

// run is the pipeline's worker: it batches until ctx is done, then flushes what is queued.
// Requests use sends, which outlives ctx by the flush time.
func (p *pipeline) run(ctx, sends context.Context) {
	batch := make([]queued, 0, p.r.cfg.BatchSize)
	// Both timers start stopped; with Go 1.23 timer semantics Stop and Reset leave no stale
	// tick behind in C.
	batchTimer := time.NewTimer(time.Hour)
	batchTimer.Stop()
	defer batchTimer.Stop()
	breakerTimer := time.NewTimer(time.Hour)
	breakerTimer.Stop()
	defer breakerTimer.Stop()

	sendBatch := func() {
		batchTimer.Stop()
		p.deliver(sends, batch)
		batch = batch[:0]
		// An open breaker is half-opened by its timer even when no traffic comes, so the
		// state gauge tells the truth.
		if wait, open := p.br.remaining(p.r.now()); open {
			breakerTimer.Reset(wait)
		}
	}
	for {
		select {
		case <-ctx.Done():
			p.flush(sends, batch)
			return
		case q := <-p.queue:
			batch = append(batch, q)
			if len(batch) == 1 {
				batchTimer.Reset(p.r.cfg.BatchTimeout)
			}
			if len(batch) >= p.r.cfg.BatchSize {
				sendBatch()
			}
		case <-batchTimer.C:
			sendBatch()
		case <-breakerTimer.C:
			now := p.r.now()
			if t := p.br.expire(now); t != noTransition {
				p.transition(t, nil)
			} else if wait, open := p.br.remaining(now); open {
				// An injected clock that has not reached the end of the open period yet.
				breakerTimer.Reset(wait)
			}
		}
	}
}

// flush sends batch and what is queued, in batches, once Run's context is done. It takes only
// the events queued when it starts, so it ends even if Record goes on being called.
func (p *pipeline) flush(sends context.Context, batch []queued) {
	for range len(p.queue) {
		// This goroutine is the only receiver, so the queue holds at least this many.
		batch = append(batch, <-p.queue)
		if len(batch) == p.r.cfg.BatchSize {
			p.deliver(sends, batch)
			batch = batch[:0]
		}
	}
	p.deliver(sends, batch)
}

// deliver sends one batch through the breaker and accounts for every event in it.
func (p *pipeline) deliver(ctx context.Context, batch []queued) {
	if len(batch) == 0 {
		return
	}
	n := len(batch)
	p.m.batchSize.Observe(float64(n))
	allowed, t := p.br.allow(p.r.now())
	p.transition(t, nil)
	switch {
	case !allowed:
		p.settle(n, p.m.droppedBreaker, p.m.batchSkipped)
		return
	case ctx.Err() != nil:
		// The flush time ran out: nothing more is sent, and the server is not blamed.
		p.settle(n, p.m.droppedFailed, p.m.batchError)
		return
	}
	err := p.send(ctx, batch)
	if err != nil && ctx.Err() != nil {
		// Cut off by the end of the flush time, not refused by the server.
		p.settle(n, p.m.droppedFailed, p.m.batchError)
		return
	}
	p.transition(p.br.result(err == nil, p.r.now()), err)
	if err != nil {
		p.r.log.Debug("analytics batch not delivered", "pipeline", p.name, "events", n, "err", err)
		p.settle(n, p.m.droppedFailed, p.m.batchError)
		return
	}
	p.settle(n, nil, p.m.batchOK)
}

// settle closes the books on a batch of n events: dropped (nil when delivered), depth, and
// last the outcome, so whoever sees the outcome counted also sees everything else.
func (p *pipeline) settle(n int, dropped, outcome prometheus.Counter) {
	if dropped != nil {
		dropped.Add(float64(n))
	}
	p.depth.Add(-int64(n))
	outcome.Inc()
}

// transition records a breaker state change in the metrics and the log.
func (p *pipeline) transition(t transition, lastErr error) {
	if t == noTransition {
		return
	}
	p.state.Store(int32(t.to()))
	p.m.transitions[t.to()].Inc()
	switch t {
	case toOpen:
		p.r.log.Warn("analytics circuit breaker open: batches are dropped until it half-opens",
			"pipeline", p.name, "consecutive_failures", p.br.failures, "open_for", p.br.openFor,
			"server", p.r.serverURL, "err", lastErr)
	case toClosed:
		p.r.log.Info("analytics circuit breaker closed: the server accepts batches again",
			"pipeline", p.name, "server", p.r.serverURL)
	case toHalfOpen:
		p.r.log.Debug("analytics circuit breaker half-open: the next batch is a trial", "pipeline", p.name)
	}
}

// Wire forms of one event. Two types rather than one with omitempty, so an event always
// carries its key field, even an empty one.
type (
	wireCommon struct {
		AccountHandle string `json:"account_handle"`
		ProjectHandle string `json:"project_handle"`
		Action        Action `json:"action"`
		Size          int64  `json:"size"`
	}
	wireXcode struct {
		wireCommon
		CASID        string `json:"cas_id"`
		EventID      string `json:"event_id"`
		ObservedAtMS int64  `json:"observed_at_ms"`
	}
	wireGradle struct {
		wireCommon
		CacheKey     string `json:"cache_key"`
		EventID      string `json:"event_id"`
		ObservedAtMS int64  `json:"observed_at_ms"`
	}
)

// encode renders the request body of batch.
func (p *pipeline) encode(batch []queued) ([]byte, error) {
	events := make([]any, len(batch))
	for i, q := range batch {
		c := wireCommon{AccountHandle: q.TenantID, ProjectHandle: q.NamespaceID, Action: q.Action, Size: q.Size}
		// A fresh id per event lets the server drop duplicates if it ever sees one twice.
		id := uuid.NewString()
		if p.name == Xcode {
			events[i] = wireXcode{wireCommon: c, CASID: q.Key, EventID: id, ObservedAtMS: q.at}
		} else {
			events[i] = wireGradle{wireCommon: c, CacheKey: q.Key, EventID: id, ObservedAtMS: q.at}
		}
	}
	body, err := json.Marshal(struct {
		Events []any `json:"events"`
	}{events})
	if err != nil {
		return nil, fmt.Errorf("encode %d %s events: %w", len(batch), p.name, err)
	}
	return body, nil
}

// maxErrorBody bounds how much of a refusal is quoted in the error; maxDrain bounds how much
// of any answer is read so the connection can be reused.
const (
	maxErrorBody = 256
	maxDrain     = 64 << 10
)

// send POSTs one signed batch within RequestTimeout. Any answer but a 2xx is an error.
func (p *pipeline) send(ctx context.Context, batch []queued) error {
	body, err := p.encode(batch)
	if err != nil {
		return err
	}
	mac := hmac.New(sha256.New, p.r.key)
	mac.Write(body)
	ctx, cancel := context.WithTimeout(ctx, p.r.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("build %s webhook request: %w", p.name, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Cache-Signature", hex.EncodeToString(mac.Sum(nil)))
	req.Header.Set("X-Cache-Endpoint", p.r.endpoint)
	start := time.Now()
	resp, err := p.r.client.Do(req)
	if err != nil {
		p.m.duration.Observe(time.Since(start).Seconds())
		return fmt.Errorf("post %d %s events: %w", len(batch), p.name, err)
	}
	quoted, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	resp.Body.Close()
	p.m.duration.Observe(time.Since(start).Seconds())
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("post %d %s events to %s: status %d: %q", len(batch), p.name, p.r.serverURL, resp.StatusCode, bytes.TrimSpace(quoted))
	}
	return nil
}

// pipelineMetrics are one pipeline's children of the metric vectors, resolved once so Record
// does no label lookups.
type pipelineMetrics struct {
	enqueued                                   prometheus.Counter
	droppedFull, droppedBreaker, droppedFailed prometheus.Counter
	batchOK, batchError, batchSkipped          prometheus.Counter
	batchSize, duration                        prometheus.Observer
	transitions                                [3]prometheus.Counter // by state
	depth, breakerState                        prometheus.GaugeFunc  // read at scrape time
}
