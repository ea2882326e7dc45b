// Command streamspace is the all-in-one StreamSpace binary: every service in one process.
//
//	streamspace dev       run everything locally; starts a private PostgreSQL if needed
//	streamspace serve     run every service against DATABASE_URL
//	streamspace tenants   administer tenant schemas (see `streamspace tenants --help`)
//	streamspace version   print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/config"
	"streamspace.dev/libs/pgserver"
	"streamspace.dev/libs/server"
	"streamspace.dev/services/streamspace"
	"streamspace.dev/tenants/cli"
)

const usage = `streamspace: the StreamSpace control plane in one process.

Usage:
  streamspace dev [flags]       run everything locally (a private PostgreSQL is started
                                in --data-dir when DATABASE_URL is not set)
  streamspace serve [flags]     run every service against DATABASE_URL
  streamspace tenants ...       administer tenant schemas
  streamspace stop-postgres     stop the private PostgreSQL of 'streamspace dev'
  streamspace version           print the version

Run 'streamspace dev --help' for the settings.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "dev":
		return serve(args[1:], true, stderr)
	case "serve":
		return serve(args[1:], false, stderr)
	case "tenants":
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		return cli.Run(ctx, args[1:], stdout, stderr)
	case "stop-postgres":
		return stopPostgres(args[1:], stderr)
	case "version":
		fmt.Fprintln(stdout, server.Version)
		return 0
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "streamspace: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
}

func serve(args []string, dev bool, stderr io.Writer) int {
	name := map[bool]string{true: "dev", false: "serve"}[dev]
	cfg := server.Config{Name: "streamspace"}
	fs := flag.NewFlagSet("streamspace "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.Register(fs)
	var dataDir string
	var migrate bool
	if dev {
		config.String(fs, &dataDir, "data-dir", "STREAMSPACE_DATA_DIR", ".streamspace", "folder for local state: the private PostgreSQL cluster lives in <data-dir>/postgres")
	}
	config.Bool(fs, &migrate, "migrate", "STREAMSPACE_MIGRATE", dev, "apply platform and tenant migrations on start")
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	ctx := context.Background()
	if dev && cfg.DatabaseURL == "" {
		url, err := privatePostgres(ctx, dataDir)
		if err != nil {
			fmt.Fprintf(stderr, "streamspace: %v\n", err)
			return 1
		}
		cfg.DatabaseURL = url
	}
	opts := server.Options{OnStart: func(s server.Started) {
		if dev {
			fmt.Fprintf(stderr, "\nStreamSpace is running: http://%s  (health: /healthz, /readyz, metrics: /metrics)\n\n", s.Addr)
		}
	}}
	if migrate {
		opts.Before = func(ctx context.Context, pool *pgxpool.Pool) error { return streamspace.Migrate(ctx, pool, logger) }
	}
	if err := server.Run(ctx, cfg, opts, streamspace.Modules); err != nil {
		fmt.Fprintf(stderr, "streamspace: %v\n", err)
		return 1
	}
	return 0
}

// privatePostgres starts (or reuses) the cluster in dataDir/postgres and returns the URL
// of its streamspace database.
func privatePostgres(ctx context.Context, dataDir string) (string, error) {
	dir, err := filepath.Abs(filepath.Join(dataDir, "postgres"))
	if err != nil {
		return "", err
	}
	s, err := pgserver.Start(ctx, pgserver.Options{Dir: dir})
	if err != nil {
		return "", fmt.Errorf("starting the private PostgreSQL in %s: %w", dir, err)
	}
	if err := streamspace.EnsureDatabase(ctx, s.URL("postgres"), "streamspace"); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "streamspace: private PostgreSQL in %s on 127.0.0.1:%d (stop it with `task clean` or pg_ctl)\n", dir, s.Port)
	return s.URL("streamspace"), nil
}

func stopPostgres(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("streamspace stop-postgres", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dataDir string
	config.String(fs, &dataDir, "data-dir", "STREAMSPACE_DATA_DIR", ".streamspace", "the folder given to 'streamspace dev'")
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if err := pgserver.StopDir(context.Background(), filepath.Join(dataDir, "postgres")); err != nil {
		fmt.Fprintf(stderr, "streamspace: %v\n", err)
		return 1
	}
	return 0
}
