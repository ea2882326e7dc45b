package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"streamspace.dev/libs/run"
)

// health is the state behind the agent's /healthz and /readyz.
//
// /healthz answers 200 for as long as the process serves HTTP: a gateway or apiserver
// outage must make the agent unready, never get it restarted (a restart cannot fix
// either, and would drop the sessions' traffic). /readyz answers 200 only while the
// tunnel is up (the gateway accepted the agent) and the backend has synced its view of
// the cluster, so a rollout waits for a new agent that can actually serve.
type health struct {
	ready   run.Readiness
	tunnel  atomic.Bool
	backend atomic.Pointer[syncer]
}

// syncer is the part of a backend /readyz asks: the Kubernetes backend implements it;
// a backend without it (memory) is synced once it exists.
type syncer interface {
	WaitSynced(ctx context.Context) error
}

func newHealth() *health {
	h := &health{}
	h.ready.AddCheck("tunnel", func(context.Context) error {
		if !h.tunnel.Load() {
			return errors.New("the tunnel to the gateway is not up")
		}
		return nil
	})
	h.ready.AddCheck("backend", func(context.Context) error {
		s := h.backend.Load()
		if s == nil {
			return errors.New("the backend is not started")
		}
		// An expired context makes WaitSynced a non-blocking look at the flag: a probe
		// must not wait for the informers.
		done, cancel := context.WithCancel(context.Background())
		cancel()
		return (*s).WaitSynced(done)
	})
	return h
}

// backendStarted records the running backend and marks the agent as past start-up, so
// the checks decide readiness from then on.
func (h *health) backendStarted(b any) {
	var s syncer = alwaysSynced{}
	if bs, ok := b.(syncer); ok {
		s = bs
	}
	h.backend.Store(&s)
	h.ready.Set(true)
}

// tunnelUp is the tunnel's Connected callback.
func (h *health) tunnelUp(up bool) { h.tunnel.Store(up) }

type alwaysSynced struct{}

func (alwaysSynced) WaitSynced(context.Context) error { return nil }

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", run.Liveness())
	mux.Handle("GET /readyz", h.ready.Handler())
	return mux
}

// serveHealth serves h on addr until the returned stop is called, and returns the bound
// address. The listener is bound before it returns, so a taken port fails the start
// instead of a probe much later.
func serveHealth(addr string, h *health, log *slog.Logger) (bound string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, fmt.Errorf("-health-listen: %w", err)
	}
	srv := &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("health endpoint failed", "err", err)
		}
	}()
	log.Info("health endpoint listening", "addr", ln.Addr().String())
	return ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
		<-done
	}, nil
}
