// Package module mounts the scheduler on a server: its admin API behind the
// authentication middleware, and the placement loop (Loop), which runs a pass over a
// tenant whenever the sessions service announces work there, and over every tenant on a
// timer (notifications are lossy, and capacity or agents may change without one).
//
// It lives apart from package scheduler because it imports scheduler/postgres, which
// imports scheduler.
package module

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	gateway "streamspace.dev/services/agent-gateway"
	gwpostgres "streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/services/scheduler"
	"streamspace.dev/services/scheduler/postgres"
	"streamspace.dev/services/sessions"
)

// Config tunes placement.
type Config struct {
	// Strategy scores agents: spread (least allocated) or binpack.
	Strategy string
	// Grace is how long a session that is not yet Running waits for its lost agent.
	Grace time.Duration
	// Interval is how often every tenant gets a pass without being announced.
	Interval time.Duration
	// Replica names this scheduler in events and the audit log; the host name when empty.
	Replica string
	// AgentDegradedAfter and AgentOfflineAfter age an agent's state as the gateway does
	// (its settings of the same names); zero takes the gateway's defaults.
	AgentDegradedAfter, AgentOfflineAfter time.Duration
}

// Register defines the settings on fs.
func (c *Config) Register(fs *flag.FlagSet) {
	config.String(fs, &c.Strategy, "scheduler-strategy", "STREAMSPACE_SCHEDULER_STRATEGY", string(scheduler.Spread),
		"how to choose among the agents that fit: spread (least allocated) or binpack (most allocated)")
	config.Duration(fs, &c.Grace, "scheduler-agent-grace", "STREAMSPACE_SCHEDULER_AGENT_GRACE", time.Minute,
		"how long a session that is not yet Running waits for its lost agent before it is placed elsewhere")
	config.Duration(fs, &c.Interval, "scheduler-interval", "STREAMSPACE_SCHEDULER_INTERVAL", 2*time.Second,
		"how often every tenant is scheduled without an announcement (agents and capacity change silently)")
	config.String(fs, &c.Replica, "scheduler-replica", "STREAMSPACE_SCHEDULER_REPLICA", "", "this replica's name in session events (default: the host name)")
	// The gateway's own settings: the all-in-one binary registers them once, for the
	// gateway, and hands the values on (streamspace.ModulesWith).
	if fs.Lookup("agent-degraded-after") == nil {
		config.Duration(fs, &c.AgentDegradedAfter, "agent-degraded-after", "STREAMSPACE_AGENT_DEGRADED_AFTER", gateway.DefaultDegradedAfter,
			"silence after which an agent is degraded (as the gateway is configured)")
	}
	if fs.Lookup("agent-offline-after") == nil {
		config.Duration(fs, &c.AgentOfflineAfter, "agent-offline-after", "STREAMSPACE_AGENT_OFFLINE_AFTER", gateway.DefaultOfflineAfter,
			"silence after which an agent is offline (as the gateway is configured)")
	}
}

// WithDefaults fills unset values.
func (c Config) WithDefaults() Config {
	if c.Strategy == "" {
		c.Strategy = string(scheduler.Spread)
	}
	if c.Grace <= 0 {
		c.Grace = time.Minute
	}
	if c.Interval <= 0 {
		c.Interval = 2 * time.Second
	}
	if c.Replica == "" {
		c.Replica, _ = os.Hostname()
	}
	return c
}

// Validate checks the configuration.
func (c Config) Validate() error {
	if !scheduler.Strategy(c.Strategy).Valid() {
		return fmt.Errorf("--scheduler-strategy %q: want spread or binpack", c.Strategy)
	}
	return nil
}

// Module mounts the scheduler on a server.
type Module struct {
	routes []scheduler.Route
	auth   func(http.Handler) http.Handler
	loop   *Loop
	cancel context.CancelFunc
	done   chan struct{}
}

var _ server.Module = (*Module)(nil)

// New builds the scheduler and starts its loop; Close stops it. The gateway is reached
// through its Go API over the shared database.
func New(deps server.Deps, cfg Config) (*Module, error) {
	if deps.Verifier == nil {
		return nil, errors.New("scheduler: no access-token verifier; set --jwks-url (the all-in-one binary supplies identity's keys)")
	}
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	gw := gateway.NewService(gwpostgres.New(deps.DB, gwpostgres.Thresholds{DegradedAfter: cfg.AgentDegradedAfter,
		OfflineAfter: cfg.AgentOfflineAfter}), nil)
	store := postgres.New(deps.DB, gw)
	loop := NewLoop(deps.DB, store, cfg, deps.Logger)
	ctx, cancel := context.WithCancel(context.Background())
	m := &Module{routes: scheduler.MakeRoutes(scheduler.MakeEndpoints(scheduler.NewService(store)), deps.Logger),
		auth: auth.Middleware(deps.Verifier), loop: loop, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		loop.Run(ctx)
	}()
	return m, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return scheduler.Name }

// Register implements server.Module.
func (m *Module) Register(mux *http.ServeMux) {
	kitx.Mount(mux, m.routes, m.auth)
}

// Routes returns the served patterns.
func (m *Module) Routes() []string {
	return kitx.Patterns(m.routes)
}

// Loop returns the placement loop, for tests that drive it.
func (m *Module) Loop() *Loop { return m.loop }

// Close implements server.Closer.
func (m *Module) Close(ctx context.Context) error {
	m.cancel()
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Loop runs placement passes.
type Loop struct {
	db     *tenantdb.DB
	store  *postgres.Store
	opts   postgres.Options
	every  time.Duration
	logger *slog.Logger
}

// NewLoop returns a loop over store.
func NewLoop(db *tenantdb.DB, store *postgres.Store, cfg Config, logger *slog.Logger) *Loop {
	cfg = cfg.WithDefaults()
	return &Loop{db: db, store: store, every: cfg.Interval, logger: logger, opts: postgres.Options{
		Strategy: scheduler.Strategy(cfg.Strategy), Grace: cfg.Grace, Actor: "system:scheduler/" + cfg.Replica}}
}

// Options returns the pass options, for tests.
func (l *Loop) Options() postgres.Options { return l.opts }

// PassTenant runs one pass over tenant tid.
func (l *Loop) PassTenant(ctx context.Context, tid tenant.ID) (postgres.Result, error) {
	return l.store.Pass(auth.AsSystem(ctx, tid, "scheduler"), l.opts)
}

// PassAll runs one pass over every active tenant.
func (l *Loop) PassAll(ctx context.Context) error {
	rows, err := l.db.Pool().Query(ctx, `SELECT id FROM platform.tenants WHERE status = 'active'`)
	if err != nil {
		return err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		if _, err := l.PassTenant(ctx, tenant.ID(id)); err != nil {
			errs = append(errs, fmt.Errorf("tenant %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

// Run schedules until ctx ends: a tenant as soon as work is announced there, every tenant
// on the timer.
func (l *Loop) Run(ctx context.Context) {
	work := make(chan tenant.ID, 256)
	go l.listen(ctx, work)
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case tid := <-work:
			if res, err := l.PassTenant(ctx, tid); err != nil && ctx.Err() == nil {
				l.logger.WarnContext(ctx, "placement pass failed", "tenant", tid, "err", err)
			} else if res.Skipped {
				// Another replica holds the tenant; it may have started before this
				// announcement, so look again shortly rather than drop it.
				time.AfterFunc(50*time.Millisecond, func() {
					select {
					case work <- tid:
					default:
					}
				})
			}
		case <-t.C:
			if err := l.PassAll(ctx); err != nil && ctx.Err() == nil {
				l.logger.WarnContext(ctx, "placement passes failed", "err", err)
			}
		}
	}
}

// listen turns WorkChannel and gateway.AgentsChannel notifications into tenants to
// schedule. Lost notifications, and agents aged offline by silence (which nobody
// announces), are covered by the timer.
func (l *Loop) listen(ctx context.Context, work chan<- tenant.ID) {
	for ctx.Err() == nil {
		err := func() error {
			conn, err := pgx.ConnectConfig(ctx, l.db.Pool().Config().ConnConfig.Copy())
			if err != nil {
				return err
			}
			defer conn.Close(context.WithoutCancel(ctx))
			// Work in a tenant, and changes of its agents (online, offline, capacity,
			// draining): both name the tenant to place in.
			for _, ch := range []string{sessions.WorkChannel, gateway.AgentsChannel} {
				if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
					return err
				}
			}
			for {
				n, err := conn.WaitForNotification(ctx)
				if err != nil {
					return err
				}
				if tid, err := tenant.ParseID(n.Payload); err == nil {
					select {
					case work <- tid:
					default: // the timer will get to it
					}
				}
			}
		}()
		if ctx.Err() != nil {
			return
		}
		l.logger.WarnContext(ctx, "scheduler listener reconnecting", "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}
