package policy

import (
	"context"
	"errors"
)

var errPoolBusy = errors.New("no policy interpreter became free before the hook deadline")

// pool hands out interpreters, at most size at a time, creating them on demand. A Lua state
// is single-threaded, so concurrency comes from holding several; an interpreter that was
// aborted or crashed is discarded, and one is recycled after maxCalls calls.
type pool struct {
	slots    chan struct{} // one token per interpreter checked out
	idle     chan *interp
	maxCalls int
	create   func() (*interp, error)
	metrics  *metrics
}

func newPool(size, maxCalls int, create func() (*interp, error), m *metrics) *pool {
	return &pool{
		slots:    make(chan struct{}, size),
		idle:     make(chan *interp, size),
		maxCalls: maxCalls,
		create:   create,
		metrics:  m,
	}
}

// seed adds an interpreter built outside get (the one New loads to check the script) to the
// empty pool, without taking a slot.
func (p *pool) seed(it *interp) { p.idle <- it }

// get waits for a free slot until ctx ends, then returns an idle interpreter or a new one.
func (p *pool) get(ctx context.Context) (*interp, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, errPoolBusy
	}
	select {
	case it := <-p.idle:
		return it, nil
	default:
	}
	it, err := p.create()
	if err != nil {
		<-p.slots
		return nil, err
	}
	return it, nil
}

// put returns an interpreter taken with get and releases its slot.
func (p *pool) put(it *interp) {
	switch {
	case it.broken:
		p.discarded("aborted")
	case it.calls >= p.maxCalls:
		p.discarded("recycled")
	default:
		// Never blocks: at most cap(idle) interpreters exist outside the channel.
		select {
		case p.idle <- it:
		default:
			p.discarded("surplus")
		}
	}
	<-p.slots
}

func (p *pool) discarded(reason string) {
	p.metrics.interpDiscarded.WithLabelValues(reason).Inc()
}

func (p *pool) busy() int      { return len(p.slots) }
func (p *pool) idleCount() int { return len(p.idle) }
