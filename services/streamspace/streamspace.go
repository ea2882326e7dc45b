// Package streamspace assembles every StreamSpace service into one process: the
// all-in-one binary for a laptop or a small install, and the system under test of the
// end-to-end suite. Production runs the services' own binaries and scales each.
package streamspace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/server"
	"streamspace.dev/services/agent-gateway"
	gwpostgres "streamspace.dev/services/agent-gateway/postgres"
	catalog "streamspace.dev/services/catalog/module"
	"streamspace.dev/services/identity"
	idpostgres "streamspace.dev/services/identity/postgres"
	scheduler "streamspace.dev/services/scheduler/module"
	sessionsvc "streamspace.dev/services/sessions"
	sessions "streamspace.dev/services/sessions/module"
	"streamspace.dev/tenants"
)

// Modules builds every service, in dependency order, with the agent gateway's default
// settings (its agents' listener on a free loopback port). See ModulesWithGateway.
func Modules(d server.Deps, idcfg identity.Config) ([]server.Module, error) {
	return ModulesWithGateway(d, idcfg, gateway.Config{})
}

// ModulesWithGateway builds every service, in dependency order, with the scheduler's and
// the sessions service's default settings. See ModulesWith.
func ModulesWithGateway(d server.Deps, idcfg identity.Config, gwcfg gateway.Config) ([]server.Module, error) {
	return ModulesWith(d, Settings{Identity: idcfg, Gateway: gwcfg})
}

// Settings are the settings of the services that have their own, as the all-in-one
// binary's flags fill them.
type Settings struct {
	Identity  identity.Config
	Gateway   gateway.Config
	Scheduler scheduler.Config
	Sessions  sessions.Config
}

// ModulesWith builds every service, in dependency order. Identity comes first: the
// others verify tokens with its keys, read in-process rather than fetched over HTTP,
// unless Run already built a JWKS-backed verifier; the gateway consumes enrollment tokens
// through identity's service in-process and shares its key-encryption key.
func ModulesWith(d server.Deps, set Settings) ([]server.Module, error) {
	idcfg, gwcfg := set.Identity, set.Gateway
	// The scheduler ages agents exactly as the gateway does.
	if set.Scheduler.AgentDegradedAfter == 0 && set.Scheduler.AgentOfflineAfter == 0 {
		g := gwcfg.WithDefaults()
		set.Scheduler.AgentDegradedAfter, set.Scheduler.AgentOfflineAfter = g.DegradedAfter, g.OfflineAfter
	}
	var idm *identity.Module
	var sm *sessions.Module
	builders := []func(server.Deps) (server.Module, error){
		func(dd server.Deps) (server.Module, error) {
			m, err := identity.New(dd, idcfg, idpostgres.New(dd.DB))
			if err != nil {
				return nil, err
			}
			if d.Verifier == nil {
				d.Verifier = m.Verifier()
			}
			idm = m
			return m, nil
		},
		func(d server.Deps) (server.Module, error) { return catalog.New(d) },
		func(d server.Deps) (server.Module, error) { return scheduler.New(d, set.Scheduler) },
		func(d server.Deps) (server.Module, error) {
			m, err := sessions.New(d, set.Sessions)
			sm = m
			return m, err
		},
		func(d server.Deps) (server.Module, error) { return newGateway(d, idcfg, gwcfg, idm, sm) },
	}
	mods := make([]server.Module, 0, len(builders))
	for _, b := range builders {
		m, err := b(d)
		if err != nil {
			// Release what was built so far: identity runs a rotation loop.
			for _, built := range mods {
				if c, ok := built.(server.Closer); ok {
					_ = c.Close(context.Background())
				}
			}
			return nil, err
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// newGateway builds the agent gateway over identity's in-process enrollment and the
// sessions service's in-process lookup for session streams.
func newGateway(d server.Deps, idcfg identity.Config, cfg gateway.Config, idm *identity.Module, sm *sessions.Module) (server.Module, error) {
	if cfg.KEK == "" {
		cfg.KEK = idcfg.KEK
	}
	cfg = cfg.WithDefaults()
	enroll := gateway.EnrollerFunc(func(ctx context.Context, raw string) (gateway.Enrollment, error) {
		e, err := idm.Service().ConsumeEnrollmentToken(ctx, raw)
		return gateway.Enrollment{Tenant: e.Tenant, TokenID: string(e.TokenID), Name: e.Name, Tags: e.Tags}, err
	})
	store := gwpostgres.New(d.DB, gwpostgres.Thresholds{DegradedAfter: cfg.DegradedAfter, OfflineAfter: cfg.OfflineAfter})
	return gateway.New(d, cfg, store, enroll, streamTargets(sm.Service()))
}

// streamTargets answers the gateway's session lookups with the sessions service itself,
// as the caller: its Get decides who may see a session, for streams as for its API.
func streamTargets(svc sessionsvc.Service) gateway.SessionFinder {
	return gateway.SessionFinderFunc(func(ctx context.Context, id gateway.SessionID) (gateway.StreamTarget, error) {
		s, err := svc.Get(ctx, sessionsvc.ID(id))
		if err != nil {
			return gateway.StreamTarget{}, err
		}
		t := gateway.StreamTarget{Agent: gateway.AgentID(s.AgentID), Phase: string(s.Phase)}
		if s.Endpoint != nil {
			t.Port = s.Endpoint.Port
		}
		return t, nil
	})
}

// Migrate applies the platform migrations and brings every tenant to the current schema
// version. The all-in-one binary runs it on start; a fleet runs `tenants migrate --all`.
func Migrate(ctx context.Context, pool *pgxpool.Pool, logger *slog.Logger) error {
	if err := tenants.MigratePlatform(ctx, pool); err != nil {
		return err
	}
	m, err := tenants.New(pool, tenants.WithLogger(logger), tenants.WithActor("streamspace"))
	if err != nil {
		return err
	}
	report, err := m.MigrateAll(ctx, tenants.MigrateOptions{})
	logger.Info("migrations applied", "tenant_schema_version", report.Target,
		"tenants_migrated", report.Migrated, "tenants_failed", len(report.Failed))
	return err
}

// EnsureDatabase creates database name on the server at adminURL if it does not exist.
func EnsureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", redact(adminURL), err)
	}
	defer conn.Close(ctx)
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return err
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var dup interface{ SQLState() string }
	if errors.As(err, &dup) && dup.SQLState() == "42P04" {
		return nil // created by a concurrent start
	}
	return err
}

// redact hides a password in a URL for logs.
func redact(u string) string {
	cfg, err := pgx.ParseConfig(u)
	if err != nil {
		return "(unparsable URL)"
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}
