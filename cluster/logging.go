package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// logWriter adapts memberlist's *log.Logger to slog. memberlist writes one line per call,
// prefixed with its level: [DEBUG] and [INFO] are protocol chatter (debug), [WARN] and
// [ERR]/[ERROR] are worth an operator's eye (warn). memberlist's own report of an admission
// refusal is demoted to debug because admission already logs it, rate-limited.
type logWriter struct {
	logger *slog.Logger
	quiet  atomic.Bool // set while shutting down: everything goes to debug
}

func (w *logWriter) Write(p []byte) (int, error) {
	for line := range bytes.Lines(p) {
		w.line(strings.TrimSpace(string(line)))
	}
	return len(p), nil
}

func (w *logWriter) line(s string) {
	if s == "" {
		return
	}
	level := slog.LevelDebug
	for _, p := range []struct {
		prefix string
		level  slog.Level
	}{
		{"[DEBUG]", slog.LevelDebug},
		{"[INFO]", slog.LevelDebug},
		{"[WARN]", slog.LevelWarn},
		{"[ERR]", slog.LevelWarn},
		{"[ERROR]", slog.LevelWarn},
		{"Err:", slog.LevelWarn},
	} {
		if rest, ok := strings.CutPrefix(s, p.prefix); ok {
			level, s = p.level, strings.TrimSpace(rest)
			break
		}
	}
	s = strings.TrimPrefix(s, "memberlist: ")
	if strings.Contains(s, errAdmission) || w.quiet.Load() {
		level = slog.LevelDebug
	}
	w.logger.Log(context.Background(), level, s)
}

// rateLimiter lets one event per key through per window; it keeps the log readable when a
// misconfigured node retries its join every few seconds.
type rateLimiter struct {
	window time.Duration
	now    func() time.Time

	mu   sync.Mutex
	last map[string]time.Time
}

// maxLimiterKeys bounds the limiter's memory against a flood of distinct node names.
const maxLimiterKeys = 1024

func newRateLimiter(window time.Duration) *rateLimiter {
	return &rateLimiter{window: window, now: time.Now, last: make(map[string]time.Time)}
}

func (r *rateLimiter) allow(key string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	if t, ok := r.last[key]; ok && now.Sub(t) < r.window {
		return false
	}
	if len(r.last) >= maxLimiterKeys {
		for k, t := range r.last {
			if now.Sub(t) >= r.window {
				delete(r.last, k)
			}
		}
		if len(r.last) >= maxLimiterKeys {
			// Every key is recent: refuse rather than grow, the metric still counts.
			return false
		}
	}
	r.last[key] = now
	return true
}
