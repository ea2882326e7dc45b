package run

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"streamspace.dev/libs/apperr"
)

// DefaultCheckTimeout bounds each readiness check when Readiness.CheckTimeout is zero. It
// is short because probes have their own, usually small, timeouts.
const DefaultCheckTimeout = 2 * time.Second

// Check reports whether a dependency is usable, e.g. a database ping. It must honour ctx.
type Check func(ctx context.Context) error

// Readiness is the state behind /readyz: ready only while Serve has marked it so and every
// check passes. The zero value is usable and not ready.
type Readiness struct {
	// CheckTimeout bounds each check; DefaultCheckTimeout when zero. Set it before serving.
	CheckTimeout time.Duration

	ready  atomic.Bool
	mu     sync.Mutex
	checks []namedCheck
}

type namedCheck struct {
	name  string
	check Check
}

// AddCheck adds a check that must pass for the binary to be ready. name appears in the
// 503 response; the check's error does not (it may name hosts or credentials).
func (r *Readiness) AddCheck(name string, c Check) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, namedCheck{name, c})
}

// Set marks the binary ready or not. Serve calls it; tests and binaries with slow warm-up
// may too.
func (r *Readiness) Set(ready bool) { r.ready.Store(ready) }

// Ready reports the flag set by Set, without running the checks.
func (r *Readiness) Ready() bool { return r.ready.Load() }

// Check returns nil when ready, or an apperr.Unavailable error naming the first failing
// check. Checks run concurrently, each under CheckTimeout.
func (r *Readiness) Check(ctx context.Context) error {
	if !r.ready.Load() {
		return apperr.New(apperr.Unavailable, "not ready")
	}
	r.mu.Lock()
	checks := append([]namedCheck(nil), r.checks...)
	r.mu.Unlock()
	timeout := r.CheckTimeout
	if timeout <= 0 {
		timeout = DefaultCheckTimeout
	}

	errs := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			errs[i] = c.check(ctx)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return apperr.Wrap(err, apperr.Unavailable, "check %q failed", checks[i].name)
		}
	}
	return nil
}

// Handler serves /readyz: 200 "ok" when Check passes, otherwise 503
// application/problem+json with code "unavailable".
func (r *Readiness) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if err := r.Check(req.Context()); err != nil {
			apperr.WriteHTTP(w, req.URL.Path, err)
			return
		}
		writeOK(w)
	})
}

// Liveness serves /healthz: 200 "ok" for as long as the process can answer HTTP at all.
// It deliberately checks no dependency: a failing database must make the binary unready,
// not get it restarted.
func Liveness() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeOK(w) })
}

func writeOK(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = fmt.Fprint(w, "ok")
}
