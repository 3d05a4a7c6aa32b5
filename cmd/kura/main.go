// Command kura runs one Kura cache node. Configuration comes only from KURA_* environment
// variables, each with an embedded default, so a bare `kura` starts a working single node;
// `kura --help` lists them all.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/kuracache/kura/internal/app"
	"github.com/kuracache/kura/internal/config"
	"github.com/kuracache/kura/internal/telemetry"
)

func main() {
	os.Exit(run(os.Args[1:], os.Environ(), os.Stdout, os.Stderr))
}

// run is main without the process exit, so the exit code paths are testable.
func run(args, environ []string, stdout, stderr io.Writer) int {
	for _, arg := range args {
		switch arg {
		case "-h", "-help", "--help", "help":
			fmt.Fprintf(stdout, "kura %s — a leaderless, distributed cache for build artifacts.\n\n", app.Version)
			fmt.Fprintln(stdout, "Usage: kura [--help | --version | healthcheck]")
			fmt.Fprintln(stdout, "Every setting is a KURA_* environment variable; all have defaults.")
			fmt.Fprintln(stdout)
			fmt.Fprint(stdout, config.Usage())
			return 0
		case "-version", "--version", "version":
			fmt.Fprintln(stdout, "kura", app.Version)
			return 0
		case "healthcheck":
			// GET /up of the node on this host's KURA_PORT: the image's HEALTHCHECK.
			return healthcheck(environ, stderr)
		default:
			fmt.Fprintf(stderr, "kura: unknown argument %q (settings are KURA_* environment variables; see kura --help)\n", arg)
			return 2
		}
	}

	cfg, err := config.Load(environ)
	if err != nil {
		fmt.Fprintf(stderr, "kura: %v\n", err)
		return 2
	}
	logger, err := telemetry.NewLogger(stdout, cfg.LogLevel.String(), string(cfg.LogFormat))
	if err != nil {
		fmt.Fprintf(stderr, "kura: %v\n", err)
		return 2
	}
	logger.LogAttrs(context.Background(), slog.LevelInfo, "effective configuration", cfg.LogAttrs()...)
	for _, warning := range cfg.Warnings {
		logger.Warn(warning)
	}

	node, err := app.New(cfg, logger)
	if err != nil {
		logger.Error("kura cannot start", "err", err)
		fmt.Fprintf(stderr, "kura: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := node.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		logger.Error("kura stopped with an error", "err", err)
		fmt.Fprintf(stderr, "kura: %v\n", err)
		return 1
	}
	return 0
}
