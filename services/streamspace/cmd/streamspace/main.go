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
	"io/fs"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/config"
	"streamspace.dev/libs/pgserver"
	"streamspace.dev/libs/seal"
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
		return serve(args[1:], true, stdout, stderr)
	case "serve":
		return serve(args[1:], false, stdout, stderr)
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

func serve(args []string, dev bool, stdout, stderr io.Writer) int {
	name := map[bool]string{true: "dev", false: "serve"}[dev]
	cfg := server.Config{Name: "streamspace"}
	var set streamspace.Settings
	fs := flag.NewFlagSet("streamspace "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.Register(fs)
	set.Identity.Register(fs)
	set.Gateway.Register(fs, false)
	set.Scheduler.Register(fs)
	set.Sessions.Register(fs)
	var devOpts devOptions
	var migrate bool
	if dev {
		config.String(fs, &devOpts.dataDir, "data-dir", "STREAMSPACE_DATA_DIR", ".streamspace", "folder for local state: the private PostgreSQL (<data-dir>/postgres), the local cluster (kube), the demo agent (agent) and the demo credentials (demo.json)")
		config.Bool(fs, &devOpts.noCluster, "no-cluster", "STREAMSPACE_NO_CLUSTER", false, "do not start the local Kubernetes cluster; the demo agent simulates sessions in memory instead")
		config.String(fs, &devOpts.agentBin, "agent-bin", "STREAMSPACE_AGENT_BIN", "", "streamspace-agent binary for the demo agent (default: next to this binary, else built from this checkout)")
	}
	config.Bool(fs, &migrate, "migrate", "STREAMSPACE_MIGRATE", dev, "apply platform and tenant migrations on start")
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	dataDir := devOpts.dataDir
	logger := slog.New(slog.NewJSONHandler(stderr, nil))
	// Only `dev` listens for signals here, to stop its cluster and agent; the control
	// plane listens for them itself (libs/run).
	ctx := context.Background()
	if dev {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
		// After the first signal, a second one gets Go's default: the process exits at
		// once (its children die with it, see superviseAgent and e2e/kube).
		go func() { <-ctx.Done(); stop() }()
	}
	if dev && cfg.DatabaseURL == "" {
		url, err := privatePostgres(ctx, dataDir)
		if err != nil {
			fmt.Fprintf(stderr, "streamspace: %v\n", err)
			return 1
		}
		cfg.DatabaseURL = url
	}
	if dev && set.Identity.KEK == "" {
		kek, err := devKEK(dataDir)
		if err != nil {
			fmt.Fprintf(stderr, "streamspace: %v\n", err)
			return 1
		}
		set.Identity.KEK = kek
	}
	var opts server.Options
	if migrate {
		opts.Before = func(ctx context.Context, pool *pgxpool.Pool) error { return streamspace.Migrate(ctx, pool, logger) }
	}
	if dev {
		return runDev(ctx, cfg, set, opts, devOpts, stdout, stderr)
	}
	build := func(d server.Deps) ([]server.Module, error) { return streamspace.ModulesWith(d, set) }
	if err := server.Run(ctx, cfg, opts, build); err != nil {
		fmt.Fprintf(stderr, "streamspace: %v\n", err)
		return 1
	}
	return 0
}

// devKEK returns the key-encryption key kept in dataDir/kek, creating it on first use.
// Only `streamspace dev` does this: a production key belongs in a secret store, and a key
// lost with its data directory makes every stored signing key unreadable (identity then
// refuses to start rather than sign with something else).
func devKEK(dataDir string) (string, error) {
	path := filepath.Join(dataDir, "kek")
	if b, err := os.ReadFile(path); err == nil {
		return strings.TrimSpace(string(b)), nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("reading %s: %w", path, err)
	}
	enc, err := seal.NewKey()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return "", err
	}
	// O_EXCL: two dev processes starting at once must not each write their own key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return devKEK(dataDir)
	}
	if err != nil {
		return "", fmt.Errorf("creating %s: %w", path, err)
	}
	if _, err := f.WriteString(enc + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	fmt.Fprintf(os.Stderr, "streamspace: generated a key-encryption key in %s\n", path)
	return enc, nil
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
