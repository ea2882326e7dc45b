package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backoff"
	"streamspace.dev/agent/enroll"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/agent/tunnel"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/telemetry"
	"streamspace.dev/libs/wire"
)

// Version is the agent's release, set at build time with
// -ldflags "-X streamspace.dev/agent/daemon.Version=1.2.3".
var Version = "dev"

// Exit statuses. ExitPermanent tells an operator (and a CrashLoopBackOff) that retrying
// will not help: the agent was deleted, its certificate refused, or it is too old.
const (
	ExitOK        = 0
	ExitFailure   = 1
	ExitUsage     = 2
	ExitPermanent = 3
)

// Main runs the agent with args (without the program name) until SIGINT or SIGTERM, and
// returns the process exit status.
func Main(args []string, stderr io.Writer) int {
	var cfg Config
	fs := FlagSet(&cfg)
	fs.SetOutput(stderr)
	if err := config.Parse(fs, args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ExitOK
		}
		return ExitUsage
	}
	if err := cfg.Validate(); err != nil {
		_, _ = fmt.Fprintf(stderr, "streamspace-agent: invalid configuration:\n%v\n", err)
		return ExitUsage
	}
	level, _ := parseLevel(cfg.LogLevel)
	log := telemetry.NewLogger(stderr, level).With("service", "streamspace-agent")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	shutdownTrace, err := telemetry.Setup(ctx, telemetry.Config{Service: "streamspace-agent", Version: Version})
	if err != nil {
		log.Error("tracing setup failed", "err", err)
		return ExitFailure
	}
	defer func() {
		c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = shutdownTrace(c)
	}()

	err = Run(ctx, cfg, log)
	var perm *tunnel.PermanentError
	switch {
	case err == nil:
		log.Info("stopped")
		return ExitOK
	case errors.As(err, &perm):
		log.Error("giving up: retrying cannot help until an operator acts", "err", err)
		return ExitPermanent
	default:
		log.Error("agent failed", "err", err)
		return ExitFailure
	}
}

// Run runs the agent until ctx is done (returning nil after draining) or it fails for
// good. Permanent failures, whether from enrollment or the tunnel, are
// *tunnel.PermanentError.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	h := newHealth()
	if cfg.HealthListen != "" {
		// Served from the start: enrollment can take a while, and liveness must hold
		// meanwhile.
		_, stop, err := serveHealth(cfg.HealthListen, h, log)
		if err != nil {
			return err
		}
		defer stop()
	}
	roots, err := rootCAs(cfg.CAFile, cfg.StateDir)
	if err != nil {
		return &tunnel.PermanentError{Err: err}
	}
	name := cfg.Name
	if name == "" {
		name, _ = os.Hostname()
	}
	tok, err := cfg.token()
	if err != nil {
		return &tunnel.PermanentError{Err: err}
	}
	store := enroll.Store{Dir: cfg.StateDir}
	httpClient := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: roots},
		Proxy:           http.ProxyFromEnvironment,
	}}
	src := enroll.Source{Store: store, CertFile: cfg.CertFile, KeyFile: cfg.KeyFile, Token: tok,
		Client: &enroll.Client{URL: cfg.EnrollURL, HTTP: httpClient}, Name: name, Log: log}
	cred, err := obtain(ctx, src, cfg, log)
	if err != nil || cred == nil {
		return err
	}
	// Enrollment may have saved the gateway's CA: trust it for the tunnel.
	if roots, err = rootCAs(cfg.CAFile, cfg.StateDir); err != nil {
		return &tunnel.PermanentError{Err: err}
	}
	log = log.With("agent", cred.Agent, "tenant", cred.Tenant)

	// The backend, like the reconcile loop, outlives the tunnel's drain.
	backend, err := newBackend(context.WithoutCancel(ctx), cfg, cred.Agent, log)
	if err != nil {
		return &tunnel.PermanentError{Err: err}
	}
	defer backend.Close()
	h.backendStarted(backend)
	var b agent.Backend = backend
	rec := reconcile.New(b, log)
	// The reconcile loop outlives the tunnel's drain, so the last status changes of
	// in-flight applies can still be reported; it stops when Run returns.
	recCtx, stopRec := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopRec(); rec.Wait() }()
	if err := rec.Start(recCtx); err != nil {
		return err
	}
	t := tunnel.New(tunnel.Config{
		Addr: cfg.Gateway, ServerName: cfg.ServerName, RootCAs: roots,
		Credential: enroll.NewHolder(cred, store), Reconciler: rec, Backend: b, AgentVersion: Version, Tags: cfg.TagList(),
		KeepAlive: cfg.KeepAlive, IdleTimeout: cfg.IdleTimeout, Heartbeat: cfg.Heartbeat,
		DrainTimeout: cfg.DrainTimeout, Backoff: backoff.Policy{Initial: cfg.BackoffInitial, Max: cfg.BackoffMax},
		Log: log, Connected: h.tunnelUp,
	})
	log.Info("starting", "gateway", cfg.Gateway, "version", Version, "keepalive", cfg.KeepAlive, "idle_timeout", cfg.IdleTimeout)
	return t.Run(ctx)
}

// obtain gets the credential, retrying enrollment with the same backoff and retry
// policy as the tunnel: an unreachable endpoint is retried, a spent token is not.
func obtain(ctx context.Context, src enroll.Source, cfg Config, log *slog.Logger) (*enroll.Credential, error) {
	bo := backoff.New(backoff.Policy{Initial: cfg.BackoffInitial, Max: cfg.BackoffMax}, nil)
	for {
		cred, err := enroll.Obtain(ctx, src)
		if err == nil {
			return cred, nil
		}
		if ctx.Err() != nil {
			return nil, nil
		}
		retry, after := wire.Retryable(err)
		if !retry {
			return nil, &tunnel.PermanentError{Err: err}
		}
		d := bo.After(after)
		log.Warn("enrollment failed; retrying", "err", err, "delay", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, nil
		case <-t.C:
		}
	}
}

// rootCAs returns the pool that verifies the gateway: -ca-file and the CA saved at
// enrollment, or nil (the system roots) when there is neither.
func rootCAs(caFile, stateDir string) (*x509.CertPool, error) {
	var bundles [][]byte
	if caFile != "" {
		b, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("reading -ca-file: %w", err)
		}
		bundles = append(bundles, b)
	}
	saved, err := enroll.Store{Dir: stateDir}.LoadCA()
	if err != nil {
		return nil, fmt.Errorf("reading saved CA: %w", err)
	}
	if len(saved) > 0 {
		bundles = append(bundles, saved)
	}
	if len(bundles) == 0 {
		return nil, nil
	}
	pool := x509.NewCertPool()
	for _, b := range bundles {
		if !pool.AppendCertsFromPEM(b) {
			return nil, errors.New("a CA bundle holds no PEM certificate")
		}
	}
	return pool, nil
}
