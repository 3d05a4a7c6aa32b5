package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc"
)

// Run serves until ctx is cancelled (SIGTERM) or a listener or background task fails, then
// drains once, within KURA_DRAIN_TIMEOUT_MS, and closes the store. It returns the failure
// that ended it, or nil after a drain that ctx started.
//
// The lifecycle: the node starts joining (GET /ready 503) and becomes serving once, in a
// cluster, its first anti-entropy round has finished or KURA_BOOTSTRAP_TIMEOUT_MS passed. The
// drain is one sequence under one deadline (see drain).
func (a *App) Run(ctx context.Context) error {
	a.logger.Info("kura serving",
		"http", a.HTTPAddr(), "grpc", a.GRPCAddr(), "internal", a.internalLn.Addr().String(),
		"gossip", a.cluster.Self().GossipAddr, "node", a.cfg.NodeName,
		"region", a.cfg.Region, "tenant_id", a.cfg.TenantID, "version", Version,
		"public_tls", a.cfg.PublicTLS.Enabled())
	a.logPolicy()
	a.logAnalytics()
	a.logTracing()

	w := newWorkers()
	w.serve("serve HTTP", func() error {
		if err := a.http.Serve(a.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	})
	w.serve("serve gRPC", func() error {
		if err := a.grpc.Serve(a.grpcLn); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return err
		}
		return nil
	})
	w.serve("serve the internal plane", func() error { return a.peerServer.Serve(a.internalLn) })
	if a.pprof != nil {
		if a.pprof.loopback() {
			a.logger.Info("profiling on (net/http/pprof)", "address", a.pprof.Addr(), "path", "/debug/pprof/")
		} else {
			a.logger.Warn("profiling on (net/http/pprof) on a non-loopback address: profiles show stacks and heap contents; make sure only a private network reaches it",
				"address", a.pprof.Addr(), "path", "/debug/pprof/")
		}
		w.serve("serve pprof", a.pprof.serve)
	}

	// Background work. Gossip, the membership feed and analytics have contexts of their own
	// because the drain stops them at their own steps; the rest stops last.
	bgCtx, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	gossipCtx, leaveGossip := context.WithCancel(bgCtx)
	followCtx, stopFollowing := context.WithCancel(bgCtx)
	following := w.background("replication targets", func() error { return a.followMembership(followCtx) })
	gossip := w.background("gossip", func() error { return a.cluster.Run(gossipCtx) })
	w.background("outbox", func() error { return a.outbox.Run(bgCtx, a.store) })
	w.background("anti-entropy", func() error { return a.sweeper.Run(bgCtx) })
	w.background("memory watermarks", func() error { return a.memory.Run(bgCtx) })
	w.background("readiness", func() error { a.becomeReady(bgCtx); return nil })
	analyticsCtx, stopAnalytics := context.WithCancel(bgCtx)
	analyticsDone := closedChan()
	if a.analytics != nil {
		analyticsDone = w.background("analytics", func() error { return a.analytics.Run(analyticsCtx) })
	}

	var cause error
	select {
	case <-ctx.Done():
		a.logger.Info("shutting down: draining", "deadline", a.cfg.DrainTimeout)
	case cause = <-w.failed:
		a.logger.Error("shutting down after a failure: draining", "err", cause, "deadline", a.cfg.DrainTimeout)
	}
	drainEnds := time.Now().Add(a.cfg.DrainTimeout)
	a.drain(drainSteps{
		stopFollowing: func() { stopFollowing(); <-following },
		leaveGossip:   func() { leaveGossip(); <-gossip },
		stopAnalytics: func() { stopAnalytics(); <-analyticsDone },
	})
	// Profiling stays up through the drain (a slow drain is worth profiling) and goes last of
	// the listeners, before w.wait needs its goroutine to have returned.
	if a.pprof != nil {
		a.pprof.stop()
	}
	stopBackground()
	w.wait()

	if a.policy != nil {
		_ = a.policy.Close() // stops JWKS refreshes; nothing to flush
	}
	// The listeners are closed, so no request starts a read-through any more: end the fetches
	// and background pulls still running (a hung peer's included) before the client and the
	// store they use close.
	_ = a.readThrough.Close()
	if cerr := a.peerClient.Close(); cerr != nil {
		a.logger.Warn("closing peer connections", "err", cerr)
	}
	if cerr := a.store.Close(); cerr != nil {
		a.logger.Error("closing the store", "err", cerr)
		if cause == nil {
			cause = fmt.Errorf("close the store: %w", cerr)
		}
	}
	// Last, so the spans of the drain (the final pushes and commits) are exported too, in
	// what is left of the drain deadline: a collector that is down does not hold up the exit.
	a.flushTraces(drainEnds)
	a.logger.Info("kura stopped")
	return cause
}

// drainSteps are the parts of the drain that stop background work Run owns.
type drainSteps struct {
	stopFollowing, leaveGossip, stopAnalytics func()
}

// closeReserve is the part of the drain deadline kept for closing the store (Pebble's final
// flush and fsync) after everything else: a tenth of the deadline, at most 2 s.
func closeReserve(d time.Duration) time.Duration { return min(2*time.Second, d/10) }

// drain stops the node in one sequence under one deadline (KURA_DRAIN_TIMEOUT_MS):
//  1. the state turns draining: /ready answers 503, gRPC health NOT_SERVING, and every new
//     request on the public listeners is refused with a retryable 503 / UNAVAILABLE;
//  2. the outbox's targets are frozen and the node leaves gossip, so peers stop sending it
//     reads and writes while it can still push what it owes them;
//  3. requests in flight finish (until the deadline, less the close reserve);
//  4. the listeners close, all at once, and what is still running is cut off;
//  5. the outbox delivers what it can to the peers it knew, and analytics flushes;
//  6. Run then stops the background work and closes the store within the reserve.
//
// Nothing acknowledged is lost at any step: an acknowledged write is already durable, and its
// outbox entries stay on disk for the next start if they could not be delivered.
func (a *App) drain(steps drainSteps) {
	start := time.Now()
	deadline := start.Add(a.cfg.DrainTimeout - closeReserve(a.cfg.DrainTimeout))
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	a.life.BeginDrain()
	a.reapi.SetServing(false)
	steps.stopFollowing()
	var left sync.WaitGroup
	left.Go(steps.leaveGossip) // memberlist's leave is bounded by its own short timeout

	idleErr := a.life.WaitIdle(ctx)
	if idleErr != nil {
		a.logger.Warn("drain deadline: requests still in flight are cut off", "in_flight", a.life.InFlight())
	}

	var listeners sync.WaitGroup
	listeners.Go(func() {
		if err := a.http.Shutdown(ctx); err != nil {
			a.logger.Warn("HTTP drain incomplete", "err", err)
		}
	})
	listeners.Go(func() { stopGracefully(ctx, a.grpc) })
	listeners.Go(func() { a.peerServer.Stop(ctx) })
	listeners.Wait()

	var flushed sync.WaitGroup
	flushed.Go(steps.stopAnalytics) // its final flush is bounded by min(request timeout, 2 s)
	if err := a.outbox.Flush(ctx); err != nil {
		a.logger.Warn("replication entries left for the next start", "err", err)
	}
	flushed.Wait()
	left.Wait()
	a.logger.Info("drained", "took", time.Since(start).Round(time.Millisecond),
		"requests_cut_off", idleErr != nil)
}

// stopGracefully lets in-flight RPCs finish until ctx ends, then cuts off whatever is still
// running (a ByteStream read of a huge blob, say).
func stopGracefully(ctx context.Context, s *grpc.Server) {
	done := make(chan struct{})
	go func() {
		s.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.Stop()
		<-done
	}
}

// becomeReady turns the node from joining to serving: at once on a single node, and in a
// cluster (seeds configured) after the first anti-entropy round against a peer or
// KURA_BOOTSTRAP_TIMEOUT_MS, whichever comes first.
func (a *App) becomeReady(ctx context.Context) {
	reason := "single node"
	if len(a.cfg.Peers) > 0 || a.cfg.DiscoveryDNSName != "" {
		wait, cancel := context.WithTimeout(ctx, a.cfg.BootstrapTimeout)
		err := a.sweeper.WaitBootstrapped(wait)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			reason = "bootstrap timed out; serving what this node has (read-through fills in)"
		default:
			reason = "bootstrapped from the cluster"
		}
	}
	if a.life.SetServing() {
		a.logger.Info("serving", "reason", reason)
	}
}

// workers owns the goroutines of Run: listeners and background tasks. The first failure of
// any of them is delivered on failed.
type workers struct {
	wg     sync.WaitGroup
	failed chan error
}

func newWorkers() *workers { return &workers{failed: make(chan error, 1)} }

func (w *workers) report(name string, err error) {
	if err == nil || errors.Is(err, context.Canceled) {
		return
	}
	select {
	case w.failed <- fmt.Errorf("%s: %w", name, err):
	default: // a failure is already being handled
	}
}

// serve runs a listener until it is shut down.
func (w *workers) serve(name string, fn func() error) {
	w.wg.Go(func() { w.report(name, fn()) })
}

// background runs a task; the returned channel is closed when it has returned.
func (w *workers) background(name string, fn func() error) <-chan struct{} {
	done := make(chan struct{})
	w.wg.Go(func() {
		defer close(done)
		w.report(name, fn())
	})
	return done
}

func (w *workers) wait() { w.wg.Wait() }

func closedChan() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
