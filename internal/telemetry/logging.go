package telemetry

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// NewLogger returns a slog logger writing to w in the given format ("json" or "text") at the
// given level ("debug", "info", "warn", "error"). Records logged with a context carry the
// request id and trace correlation fields (see ContextHandler).
func NewLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(strings.ToUpper(level))); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	switch strings.ToLower(format) {
	case "json":
		return slog.New(NewContextHandler(slog.NewJSONHandler(w, opts))), nil
	case "text":
		return slog.New(NewContextHandler(slog.NewTextHandler(w, opts))), nil
	default:
		return nil, fmt.Errorf("log format %q: want json or text", format)
	}
}
