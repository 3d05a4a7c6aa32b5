package app

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// pprofServer is the opt-in profiling listener (KURA_PPROF_ADDRESS). Its handlers are mounted
// on a mux of their own, never on http.DefaultServeMux (which importing net/http/pprof also
// fills) and never on the public, REAPI or internal listeners: profiles expose goroutine
// stacks, heap contents and command lines, so they are served only where the operator chose,
// loopback or a private interface.
type pprofServer struct {
	ln  net.Listener
	srv *http.Server
}

// newPprofServer binds addr; an empty addr means profiling is off and returns nil.
func newPprofServer(addr string) (*pprofServer, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (KURA_PPROF_ADDRESS): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index) // also serves the named profiles (heap, goroutine, …)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return &pprofServer{ln: ln, srv: &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		// No WriteTimeout: /debug/pprof/profile?seconds=30 and /trace stream for as long as asked.
	}}, nil
}

// Addr is the bound address (useful when the port was 0 in tests).
func (p *pprofServer) Addr() string { return p.ln.Addr().String() }

// loopback reports whether the listener is reachable from this machine only.
func (p *pprofServer) loopback() bool {
	addr, ok := p.ln.Addr().(*net.TCPAddr)
	return ok && addr.IP.IsLoopback()
}

// serve runs until stop; a closed server is not a failure.
func (p *pprofServer) serve() error {
	if err := p.srv.Serve(p.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// stop closes the listener and every connection at once: a profile being taken is cut off
// rather than holding up the drain, since nothing a profile serves needs to finish.
func (p *pprofServer) stop() { _ = p.srv.Close() }
