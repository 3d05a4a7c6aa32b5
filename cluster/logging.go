package cluster

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
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

// logRepeatWindow is how often at most an admission refusal (per node and reason) or a join
// or DNS warning is logged: it keeps the log readable when a misconfigured node retries its
// join every few seconds.
const logRepeatWindow = time.Minute
