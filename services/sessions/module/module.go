// Package module mounts the sessions service on a server: it builds the onion — the
// PostgreSQL store, the service with its catalog dependency, its logging and metrics
// decorators, the endpoints and the HTTP routes behind the authentication middleware — and
// runs the service's background work (the Controller): folding agents' reports into
// sessions, the progress, idle and duration timers, and the feed of the live stream.
//
// It lives apart from package sessions because it imports sessions/postgres, which imports
// sessions, and the catalog's and the gateway's stores.
package module

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenant"
	gateway "streamspace.dev/services/agent-gateway"
	gwpostgres "streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/services/catalog"
	catpostgres "streamspace.dev/services/catalog/postgres"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
)

// Config tunes the sessions service's background work.
type Config struct {
	// ProgressTimeout fails a session that stays Pending, Scheduling, Starting or Stopping
	// this long.
	ProgressTimeout time.Duration
	// Interval is how often the timers run and reports are re-read (covering lost
	// notifications).
	Interval time.Duration
}

// Register defines the settings on fs.
func (c *Config) Register(fs *flag.FlagSet) {
	config.Duration(fs, &c.ProgressTimeout, "session-progress-timeout", "STREAMSPACE_SESSION_PROGRESS_TIMEOUT", 10*time.Minute,
		"a session making no progress this long (Pending, Scheduling, Starting, Stopping) is marked Failed")
	config.Duration(fs, &c.Interval, "session-timer-interval", "STREAMSPACE_SESSION_TIMER_INTERVAL", 5*time.Second,
		"how often idle, duration and progress timers run and agents' reports are re-read")
}

// WithDefaults fills unset values.
func (c Config) WithDefaults() Config {
	if c.ProgressTimeout <= 0 {
		c.ProgressTimeout = 10 * time.Minute
	}
	if c.Interval <= 0 {
		c.Interval = 5 * time.Second
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if c.ProgressTimeout < time.Second || c.Interval < 10*time.Millisecond {
		return errors.New("sessions: --session-progress-timeout must be at least 1s and --session-timer-interval at least 10ms")
	}
	return nil
}

// Module mounts the sessions service on a server.
type Module struct {
	routes []sessions.Route
	auth   func(http.Handler) http.Handler
	svc    sessions.Service
	store  *postgres.Store
	ctrl   *Controller
	cancel context.CancelFunc
	done   chan struct{}
}

var _ server.Module = (*Module)(nil)

// New builds the sessions service from the shared dependencies and starts its background
// work; Close stops it. It needs deps.Verifier.
func New(deps server.Deps, cfg Config) (*Module, error) {
	if deps.Verifier == nil {
		return nil, errors.New("sessions: no access-token verifier; set --jwks-url (the all-in-one binary supplies identity's keys)")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	store := postgres.New(deps.DB)
	// Templates are read through catalog's own service, so the caller's view (shadowing,
	// disabled templates hidden from members) is exactly the catalog API's.
	templates := catalog.NewService(catpostgres.New(deps.DB), nil, deps.Logger)
	var svc sessions.Service = sessions.NewService(store, templates)
	svc = sessions.Logging(deps.Logger)(svc)
	if deps.Registry != nil {
		svc = sessions.Instrumenting(deps.Registry)(svc)
	}
	hub := sessions.NewHub()
	// The controller reads only session statuses from the gateway's store, never an
	// agent's aged state, so the thresholds do not matter here (the scheduler's do).
	ctrl := NewController(store, gwpostgres.New(deps.DB, gwpostgres.Thresholds{}), hub, cfg, deps.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Module{
		routes: sessions.MakeRoutes(sessions.MakeEndpoints(svc), svc, hub, deps.Logger),
		auth:   auth.Middleware(deps.Verifier),
		svc:    svc, store: store, ctrl: ctrl, cancel: cancel, done: make(chan struct{}),
	}
	if deps.Ready != nil {
		// Live streams see changes only through the listener: until it listens, this
		// replica would show its viewers a frozen picture.
		deps.Ready.AddCheck("sessions-listener", func(context.Context) error {
			if !ctrl.Listening() {
				return errors.New("not listening for session changes")
			}
			return nil
		})
	}
	go func() {
		defer close(m.done)
		ctrl.Run(ctx)
	}()
	return m, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return sessions.Name }

// Register implements server.Module.
func (m *Module) Register(mux *http.ServeMux) {
	kitx.Mount(mux, m.routes, m.auth)
}

// Routes returns the patterns Register serves, for the test that holds them and the
// OpenAPI document together.
func (m *Module) Routes() []string {
	return kitx.Patterns(m.routes)
}

// Service returns the decorated service, for in-process callers.
func (m *Module) Service() sessions.Service { return m.svc }

// Store returns the store; the gateway records session traffic with its RecordActivity.
func (m *Module) Store() *postgres.Store { return m.store }

// Controller returns the background worker, for tests that drive it.
func (m *Module) Controller() *Controller { return m.ctrl }

// Close implements server.Closer: it stops the background work.
func (m *Module) Close(ctx context.Context) error {
	m.cancel()
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// StatusSource reads an agent's latest report about a session: the gateway's Store.
type StatusSource interface {
	SessionStatus(ctx context.Context, id gateway.SessionID) (gateway.SessionStatus, error)
}

// Controller is the sessions service's background work. One runs in every replica; all
// its writes lock the session row, so replicas never conflict, only repeat each other.
type Controller struct {
	store  *postgres.Store
	status StatusSource
	hub    *sessions.Hub
	cfg    Config
	logger *slog.Logger
	// listening is true while the notification connection holds its LISTENs.
	listening atomic.Bool
}

// Listening reports whether the controller is following change notifications, without
// which live streams and status folding wait for the next Tick.
func (c *Controller) Listening() bool { return c.listening.Load() }

// Actor is the audit log's name for the controller's own actions.
const Actor = "system:sessions"

// NewController returns the background worker.
func NewController(store *postgres.Store, status StatusSource, hub *sessions.Hub, cfg Config, logger *slog.Logger) *Controller {
	return &Controller{store: store, status: status, hub: hub, cfg: cfg.WithDefaults(), logger: logger}
}

// Run listens for notifications and runs the timers until ctx ends.
func (c *Controller) Run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.listen(ctx)
	}()
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-t.C:
			if err := c.Tick(ctx); err != nil && ctx.Err() == nil {
				c.logger.WarnContext(ctx, "session timers failed", "err", err)
			}
		}
	}
}

// Tick runs one round of the periodic work over every active tenant: reports that were
// not folded (lost notifications), then the progress, idle and duration timers.
func (c *Controller) Tick(ctx context.Context) error {
	tenants, err := c.store.ActiveTenants(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, tid := range tenants {
		if err := c.TickTenant(ctx, tid); err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// TickTenant is Tick for one tenant.
func (c *Controller) TickTenant(ctx context.Context, tid tenant.ID) error {
	tctx := auth.AsSystem(ctx, tid, "sessions")
	stale, err := c.store.StaleStatus(tctx, 500)
	if err != nil {
		return err
	}
	for _, id := range stale {
		if err := c.Fold(tctx, id); err != nil {
			return err
		}
	}
	r, err := c.store.Reap(tctx, postgres.Timers{Progress: c.cfg.ProgressTimeout}, Actor)
	if r.Failed+r.Hibernated+r.Stopped > 0 {
		c.logger.InfoContext(ctx, "session timers acted", "tenant", tid, "failed", r.Failed, "hibernated", r.Hibernated, "stopped", r.Stopped)
	}
	return err
}

// Fold reads the agent's latest report about session id (in ctx's tenant) and folds it
// into the session.
func (c *Controller) Fold(ctx context.Context, id sessions.ID) error {
	st, err := c.status.SessionStatus(ctx, gateway.SessionID(id))
	if err != nil {
		if apperr.IsCode(err, apperr.NotFound) {
			return nil // nothing reported yet
		}
		return err
	}
	o := sessions.Observed{AgentID: string(st.AgentID), Phase: string(st.Phase), Reason: st.Reason, Message: st.Message,
		ObservedGeneration: st.ObservedGeneration, ObservedAt: st.ObservedAt}
	if st.Endpoint != nil {
		o.Endpoint = &sessions.Endpoint{Host: st.Endpoint.Host, Port: st.Endpoint.Port, Protocol: st.Endpoint.Protocol}
	}
	_, err = c.store.ApplyStatus(ctx, id, o, Actor)
	return err
}

// listen follows the two channels on one dedicated connection: the gateway's status
// changes, folded at once, and the sessions' own changes, fanned out to live streams.
// NOTIFY is lossy (the connection may drop), which Tick's re-read covers.
func (c *Controller) listen(ctx context.Context) {
	for ctx.Err() == nil {
		err := c.listenOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		c.logger.WarnContext(ctx, "session listener reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *Controller) listenOnce(ctx context.Context) error {
	conn, err := pgx.ConnectConfig(ctx, c.store.DB().Pool().Config().ConnConfig.Copy())
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, ch := range []string{sessions.ChangeChannel, gateway.StatusChannel} {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return err
		}
	}
	c.listening.Store(true)
	defer c.listening.Store(false)
	// Notices sent while no LISTEN was held are gone: live streams read their sessions
	// again (the first time there is nothing to catch up on, and few streams to ask).
	c.hub.Resync()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return err
		}
		switch n.Channel {
		case sessions.ChangeChannel:
			if ch, ok := sessions.ParseChange(n.Payload); ok {
				c.hub.Publish(ch)
			}
		case gateway.StatusChannel:
			tid, sid, ok := strings.Cut(n.Payload, ":")
			if !ok {
				continue
			}
			id, err := sessions.ParseID(sid)
			if err != nil {
				continue // not a session of this service
			}
			t, err := tenant.ParseID(tid)
			if err != nil {
				continue
			}
			if err := c.Fold(auth.AsSystem(ctx, t, "sessions"), id); err != nil && ctx.Err() == nil {
				c.logger.WarnContext(ctx, "folding a session report failed", "tenant", t, "session", id, "err", err)
			}
		}
	}
}
