package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// DefaultShutdownTimeout is used when Config.ShutdownTimeout is zero. It stays below
// Kubernetes' default 30 s termination grace period, leaving room for the drain delay.
const DefaultShutdownTimeout = 15 * time.Second

// Config tunes Serve's shutdown.
type Config struct {
	// DrainDelay is how long to keep serving after readiness fails, so that load balancers
	// and Kubernetes endpoints stop sending new requests before listeners close. A few
	// seconds in production; zero in tests.
	DrainDelay time.Duration
	// ShutdownTimeout bounds the drain of in-flight requests; connections still open after
	// it are closed by force. The closers get a fresh budget of the same length.
	// DefaultShutdownTimeout when zero.
	ShutdownTimeout time.Duration
	// Logger receives one line per shutdown step; slog.Default() when nil.
	Logger *slog.Logger
}

// Server is one HTTP server and the listener it serves. Binding the listener is the
// caller's job, so tests and end-to-end runs can listen on ":0" and read the port back.
type Server struct {
	// Name labels the server in logs and errors, e.g. "public" or "internal".
	Name string
	// HTTP is the server; Serve sets its BaseContext hook (keeping any already set).
	HTTP *http.Server
	// Listener is already bound; Serve closes it.
	Listener net.Listener
}

// Serve serves every server until ctx is cancelled, SIGINT or SIGTERM arrives, or a server
// fails, then shuts down in order and returns.
//
// ready (optional) is marked ready once every server is serving. Serve sets each server's
// BaseContext hook to learn that (calling any hook already set). The closers run last,
// newest first, so resources are released in reverse order of acquisition: pass the
// tracer's shutdown first and the database pool after it.
//
// It returns nil after a requested stop that drained cleanly; otherwise the failing
// server's error joined with any drain or closer errors. After the first signal, a second
// one terminates the process at once.
func Serve(ctx context.Context, cfg Config, ready *Readiness, servers []Server, closers ...func(context.Context) error) error {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if ready == nil {
		ready = new(Readiness)
	}
	timeout := cfg.ShutdownTimeout
	if timeout <= 0 {
		timeout = DefaultShutdownTimeout
	}
	// Shutdown must still run after the caller's ctx is cancelled, but with its values.
	baseCtx := context.WithoutCancel(ctx)

	sigCtx, stopSignals := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stopSignals()

	type result struct {
		server int
		err    error
	}
	results := make(chan result, len(servers))
	started := make(chan struct{}, len(servers))
	for i, s := range servers {
		// http.Server calls BaseContext once, right before its accept loop: the only hook
		// that tells "serving" apart from "about to serve".
		prev := s.HTTP.BaseContext
		s.HTTP.BaseContext = func(l net.Listener) context.Context {
			started <- struct{}{}
			if prev != nil {
				return prev(l)
			}
			return context.Background()
		}
		go func() { results <- result{i, s.HTTP.Serve(s.Listener)} }()
	}
	returned := 0 // Serve calls that have returned; each sends exactly one result

	var failure error
	fail := func(r result) {
		returned++
		failure = fmt.Errorf("run: server %s: %w", serverName(servers[r.server]), r.err)
	}

	// Wait until every server serves, one fails, or we are asked to stop first.
	wasReady := false
	for waiting := len(servers); waiting > 0 && failure == nil && sigCtx.Err() == nil; {
		select {
		case <-started:
			waiting--
		case r := <-results:
			fail(r)
		case <-sigCtx.Done():
		}
	}
	if failure == nil && sigCtx.Err() == nil {
		ready.Set(true)
		wasReady = true
		log.Info("ready", "servers", serverNames(servers))

		select {
		case <-sigCtx.Done():
		case r := <-results:
			fail(r)
		}
	}
	// From here on a second signal gets Go's default behaviour: the process exits at once.
	stopSignals()
	if failure != nil {
		log.Error("shutting down after a server failed", "err", failure)
	} else {
		log.Info("shutting down", "cause", context.Cause(sigCtx))
	}

	// 1. Fail readiness, so load balancers and Kubernetes stop routing new requests here.
	ready.Set(false)
	log.Info("shutdown step 1: readiness failed")

	// 2. Keep serving for the drain delay while they notice. Pointless if we never were
	// ready: nobody routed to us.
	if wasReady && cfg.DrainDelay > 0 {
		log.Info("shutdown step 2: waiting for load balancers", "delay", cfg.DrainDelay)
		t := time.NewTimer(cfg.DrainDelay)
		<-t.C
	}

	// 3. Stop accepting and drain in-flight requests, all servers at once, under one deadline.
	// 4. Whatever has not finished by then is closed by force.
	log.Info("shutdown step 3: draining in-flight requests", "timeout", timeout)
	drainCtx, cancelDrain := context.WithTimeout(baseCtx, timeout)
	drainErrs := make([]error, len(servers))
	var wg sync.WaitGroup
	for i, s := range servers {
		wg.Go(func() {
			err := s.HTTP.Shutdown(drainCtx)
			if err == nil {
				return
			}
			log.Warn("shutdown step 4: forcing connections closed", "server", serverName(s), "err", err)
			drainErrs[i] = errors.Join(
				fmt.Errorf("run: server %s: drain cut short: %w", serverName(s), err),
				s.HTTP.Close())
		})
	}
	wg.Wait()
	cancelDrain()
	// Every Serve has returned (http.ErrServerClosed) once Shutdown or Close began; collect
	// them so no goroutine outlives Serve.
	for ; returned < len(servers); returned++ {
		<-results
	}

	// 5. Release resources, newest first, each closer sharing a fresh deadline.
	log.Info("shutdown step 5: running closers", "count", len(closers))
	closeCtx, cancelClose := context.WithTimeout(baseCtx, timeout)
	defer cancelClose()
	var closeErrs []error
	for i := len(closers) - 1; i >= 0; i-- {
		if err := closers[i](closeCtx); err != nil {
			closeErrs = append(closeErrs, fmt.Errorf("run: closer %d: %w", i, err))
		}
	}

	err := errors.Join(failure, errors.Join(drainErrs...), errors.Join(closeErrs...))
	if err == nil {
		log.Info("shutdown complete")
	}
	return err
}

func serverNames(servers []Server) []string {
	names := make([]string, len(servers))
	for i, s := range servers {
		names[i] = serverName(s)
	}
	return names
}

func serverName(s Server) string {
	if s.Name != "" {
		return s.Name
	}
	return s.Listener.Addr().String()
}
