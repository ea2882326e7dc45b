// Package server is the process scaffolding every StreamSpace binary shares: flags with
// environment fallbacks, JSON logs with trace ids, OpenTelemetry, a tenant-scoped database
// pool, /healthz, /readyz and /metrics, and ordered graceful shutdown.
//
// A service is a Module: it registers its routes on the shared mux. A single service's
// binary runs one module; the all-in-one binary runs them all on one port. main builds the
// onion in plain sight:
//
//	cfg := server.Config{Name: "catalog"}
//	fs := flag.NewFlagSet("catalog", flag.ContinueOnError)
//	cfg.Register(fs)
//	… parse, then:
//	server.Run(ctx, cfg, func(d server.Deps) ([]server.Module, error) { … })
package server

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/clientaddr"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/run"
	"streamspace.dev/libs/telemetry"
	"streamspace.dev/libs/tenantdb"
)

// Version is the build's version, set with -ldflags "-X streamspace.dev/libs/server.Version=…".
var Version = "dev"

// Config is what every binary reads from its flags and environment.
type Config struct {
	// Name names the binary in logs, traces and metrics.
	Name            string
	Listen          string
	DatabaseURL     string
	LogLevel        string
	DrainDelay      time.Duration
	ShutdownTimeout time.Duration
	MaxConns        int
	// Issuer and Audience are the iss and aud that access tokens must carry (and that
	// identity signs with).
	Issuer   string
	Audience string
	// JWKSURL, when set, is where the Verifier in Deps fetches identity's keys. The
	// all-in-one binary leaves it empty and verifies with identity's keys in-process.
	JWKSURL string
	// TrustedProxies lists the networks (comma-separated CIDRs or addresses) of the load
	// balancers whose X-Forwarded-For names the client; see libs/clientaddr.
	TrustedProxies string
}

// Proxies returns TrustedProxies parsed; Validate has refused a malformed list.
func (c Config) Proxies() clientaddr.Proxies {
	ps, _ := clientaddr.Parse(c.TrustedProxies)
	return ps
}

// Register defines the common flags on fs.
func (c *Config) Register(fs *flag.FlagSet) {
	config.String(fs, &c.Listen, "listen", "STREAMSPACE_LISTEN", "127.0.0.1:8080", "address to serve HTTP on")
	config.String(fs, &c.DatabaseURL, "database-url", "DATABASE_URL", "", "PostgreSQL URL (postgres://user@host:port/db)")
	config.String(fs, &c.LogLevel, "log-level", "STREAMSPACE_LOG_LEVEL", "info", "log level: debug, info, warn or error")
	config.Duration(fs, &c.DrainDelay, "drain-delay", "STREAMSPACE_DRAIN_DELAY", 0, "how long /readyz fails before listeners close on shutdown")
	config.Duration(fs, &c.ShutdownTimeout, "shutdown-timeout", "STREAMSPACE_SHUTDOWN_TIMEOUT", run.DefaultShutdownTimeout, "deadline for draining in-flight requests")
	config.Int(fs, &c.MaxConns, "db-max-conns", "STREAMSPACE_DB_MAX_CONNS", 20, "PostgreSQL pool size")
	config.String(fs, &c.Issuer, "issuer", "STREAMSPACE_ISSUER", DefaultIssuer, "iss of access tokens: identity's public base URL")
	config.String(fs, &c.Audience, "audience", "STREAMSPACE_AUDIENCE", auth.DefaultAudience, "aud of access tokens")
	config.String(fs, &c.TrustedProxies, "trusted-proxies", "STREAMSPACE_TRUSTED_PROXIES", "", "comma-separated networks of proxies whose X-Forwarded-For names the client (throttles and audit use it); empty trusts none")
	config.String(fs, &c.JWKSURL, "jwks-url", "STREAMSPACE_JWKS_URL", "", "URL of identity's JWKS (e.g. http://identity:8080"+auth.JWKSPath+"); empty in the all-in-one binary")
}

// DefaultIssuer is the iss of access tokens unless --issuer says otherwise.
const DefaultIssuer = "streamspace"

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.Name == "" {
		errs = append(errs, errors.New("the binary has no name"))
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		errs = append(errs, fmt.Errorf("--listen %q: %w", c.Listen, err))
	}
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("--database-url (or DATABASE_URL) is required"))
	} else if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		errs = append(errs, fmt.Errorf("--database-url: %w", err))
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		errs = append(errs, err)
	}
	if c.MaxConns < 1 {
		errs = append(errs, errors.New("--db-max-conns must be at least 1"))
	}
	if _, err := clientaddr.Parse(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("--trusted-proxies: %w", err))
	}
	if c.JWKSURL != "" {
		if _, err := auth.NewJWKSSource(c.JWKSURL); err != nil {
			errs = append(errs, fmt.Errorf("--jwks-url: %w", err))
		}
	}
	return errors.Join(errs...)
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("--log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// Deps are what modules are built from.
type Deps struct {
	DB       *tenantdb.DB
	Logger   *slog.Logger
	Registry *prometheus.Registry
	Ready    *run.Readiness
	// Config is the process's configuration (issuer, audience and the rest).
	Config Config
	// Verifier checks access tokens. Run builds it from Config.JWKSURL; without one it is
	// nil, and the build function must supply it (the all-in-one binary uses identity's
	// keys in-process) before handing Deps to modules that need it.
	Verifier *auth.Verifier
}

// Module is one service mounted on the shared mux.
type Module interface {
	// Name names the service.
	Name() string
	// Register adds the service's routes. Patterns carry a method and the /api/v1 prefix.
	Register(mux *http.ServeMux)
}

// Closer is implemented by modules that hold resources to release on shutdown.
type Closer interface {
	Close(ctx context.Context) error
}

// Started is what Run reports once it listens, for tests and the all-in-one binary.
type Started struct {
	Addr string
}

// Options tune Run.
type Options struct {
	// Listener, if set, replaces Config.Listen (tests pass 127.0.0.1:0).
	Listener net.Listener
	// OnStart is called once the listener is open.
	OnStart func(Started)
	// Before runs after the pool is open and before modules are built: the all-in-one
	// binary applies migrations here.
	Before func(ctx context.Context, pool *pgxpool.Pool) error
	// Pool, if set, adjusts the pool configuration after Run's own settings and before
	// the pool opens (benchmarks add a tracer that counts round trips). It must not change
	// the query exec mode (see tenantdb).
	Pool func(*pgxpool.Config)
}

// Run serves the modules built by build until ctx ends or a signal arrives, then shuts
// down in order (see package run).
func Run(ctx context.Context, cfg Config, opts Options, build func(Deps) ([]Module, error)) error {
	// Configs built in code (tests, e2e) may leave the token settings unset.
	if cfg.Issuer == "" {
		cfg.Issuer = DefaultIssuer
	}
	if cfg.Audience == "" {
		cfg.Audience = auth.DefaultAudience
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	level, _ := parseLevel(cfg.LogLevel)
	logger := telemetry.NewLogger(os.Stderr, level).With("service", cfg.Name)
	slog.SetDefault(logger)

	shutdownTracing, err := telemetry.Setup(ctx, telemetry.Config{Service: cfg.Name, Version: Version})
	if err != nil {
		return fmt.Errorf("telemetry: %w", err)
	}
	db, err := tenantdb.Open(ctx, cfg.DatabaseURL, func(pc *pgxpool.Config) {
		pc.MaxConns = int32(cfg.MaxConns)
		pc.ConnConfig.Tracer = telemetry.PgxTracer()
		if opts.Pool != nil {
			opts.Pool(pc)
		}
	})
	if err != nil {
		_ = shutdownTracing(ctx)
		return err
	}
	closers := []func(context.Context) error{shutdownTracing, func(context.Context) error { db.Close(); return nil }}
	fail := func(err error) error {
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i](context.WithoutCancel(ctx))
		}
		return err
	}
	if opts.Before != nil {
		if err := opts.Before(ctx, db.Pool()); err != nil {
			return fail(err)
		}
	}

	if opts.Listener != nil {
		// Modules see where the process really listens (a replica advertises it).
		cfg.Listen = opts.Listener.Addr().String()
	}
	reg := telemetry.NewRegistry()
	ready := &run.Readiness{}
	ready.AddCheck("postgres", func(ctx context.Context) error { return db.Pool().Ping(ctx) })
	deps := Deps{DB: db, Logger: logger, Registry: reg, Ready: ready, Config: cfg}
	if cfg.JWKSURL != "" {
		src, err := auth.NewJWKSSource(cfg.JWKSURL, auth.WithLogger(logger))
		if err != nil {
			return fail(err)
		}
		if deps.Verifier, err = auth.NewVerifier(auth.VerifierConfig{Keys: src, Issuer: cfg.Issuer, Audience: cfg.Audience}); err != nil {
			return fail(err)
		}
	}
	modules, err := build(deps)
	if err != nil {
		return fail(err)
	}

	mux := http.NewServeMux()
	mux.Handle("GET /healthz", run.Liveness())
	mux.Handle("GET /readyz", ready.Handler())
	mux.Handle("GET /metrics", telemetry.MetricsHandler(reg))
	// Unknown routes answer in the one error format too, not net/http's text/plain.
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	}))
	names := make([]string, 0, len(modules))
	for _, m := range modules {
		m.Register(mux)
		names = append(names, m.Name())
		if c, ok := m.(Closer); ok {
			closers = append(closers, c.Close)
		}
	}
	handler := telemetry.Middleware(reg, cfg.Name)(mux)

	ln := opts.Listener
	if ln == nil {
		if ln, err = net.Listen("tcp", cfg.Listen); err != nil {
			return fail(fmt.Errorf("listening on %s: %w", cfg.Listen, err))
		}
	}
	logger.Info("serving", "addr", ln.Addr().String(), "modules", strings.Join(names, ","), "version", Version)
	if opts.OnStart != nil {
		opts.OnStart(Started{Addr: ln.Addr().String()})
	}
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	return run.Serve(ctx, run.Config{DrainDelay: cfg.DrainDelay, ShutdownTimeout: cfg.ShutdownTimeout, Logger: logger},
		ready, []run.Server{{Name: cfg.Name, HTTP: srv, Listener: ln}}, closers...)
}

// Main parses flags for a binary that runs the given modules and exits when it stops.
// It is the whole main of a single-service binary.
func Main(name string, build func(Deps) ([]Module, error)) {
	MainFlags(name, nil, build)
}

// MainFlags is Main for a service with settings of its own: flags, when not nil, defines
// them on the binary's flag set before parsing (and build reads what they filled in).
func MainFlags(name string, flags func(*flag.FlagSet), build func(Deps) ([]Module, error)) {
	cfg := Config{Name: name}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	cfg.Register(fs)
	if flags != nil {
		flags(fs)
	}
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	// run.Serve watches SIGINT and SIGTERM itself.
	if err := Run(context.Background(), cfg, Options{}, build); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
