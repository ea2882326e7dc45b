package module_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	gateway "streamspace.dev/services/agent-gateway"
	gwpostgres "streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/services/scheduler/module"
	"streamspace.dev/services/scheduler/postgres"
	"streamspace.dev/services/sessions"
	"streamspace.dev/tenants/tenantstest"
)

// Sizes of BenchmarkPlacement.
const (
	benchAgents   = 1000
	benchSessions = 10000
)

// BenchmarkPlacement measures scheduling throughput: one tenant with 1,000 online agents
// and 10,000 sessions waiting for one, written straight into the gateway's and the
// sessions service's tables with COPY. The real placement loop then runs its passes over
// the tenant until every session is placed and its desired state is in the gateway's
// outbox. It reports placements per second (the goal of the sessions issue is at least
// 1,000). Each iteration starts from a fresh database; -benchtime=1x is one run.
func BenchmarkPlacement(b *testing.B) {
	for b.Loop() {
		b.StopTimer()
		env := tenantstest.New(b)
		tn, _ := env.Tenant(b, "acme")
		seedPlacement(b, env, tn.ID.Schema())
		gw := gwpostgres.New(env.DB, gwpostgres.Thresholds{DegradedAfter: time.Hour, OfflineAfter: 2 * time.Hour})
		loop := module.NewLoop(env.DB, postgres.New(env.DB, gateway.NewService(gw, nil)), module.Config{Replica: "bench"},
			slog.New(slog.DiscardHandler))
		b.StartTimer()
		start := time.Now()
		placed, passes := 0, 0
		for placed < benchSessions {
			res, err := loop.PassTenant(context.Background(), tn.ID)
			if err != nil {
				b.Fatal(err)
			}
			if res.Placed == 0 {
				b.Fatalf("a pass placed nothing with %d of %d placed: %+v", placed, benchSessions, res)
			}
			placed += res.Placed
			passes++
		}
		elapsed := time.Since(start)
		b.StopTimer()
		var inOutbox int
		if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM `+tn.ID.Schema()+`.session_assignments`).Scan(&inOutbox); err != nil {
			b.Fatal(err)
		}
		if inOutbox != benchSessions {
			b.Fatalf("%d assignments in the outbox, want %d", inOutbox, benchSessions)
		}
		b.ReportMetric(float64(placed)/elapsed.Seconds(), "placements/s")
		b.ReportMetric(float64(passes), "passes")
		b.StartTimer()
	}
}

// seedPlacement writes the agents (online, 16 CPUs and 64 GiB each, so every session
// fits somewhere) and the pending sessions (500m and 1 GiB each) into schema.
func seedPlacement(b *testing.B, env *tenantstest.Env, schema string) {
	b.Helper()
	ctx := context.Background()
	now := time.Now()
	agents := make([][]any, benchAgents)
	for i := range agents {
		agents[i] = []any{string(gateway.NewAgentID()), fmt.Sprintf("agent-%04d", i), "online", now, "gw-bench",
			int64(16000), int64(64 << 30), 200}
	}
	if _, err := env.Pool.CopyFrom(ctx, pgx.Identifier{schema, "agents"},
		[]string{"id", "name", "state", "last_seen", "gateway_id", "cpu_allocatable_millis", "memory_allocatable_bytes", "max_sessions"},
		pgx.CopyFromRows(agents)); err != nil {
		b.Fatal(err)
	}
	rows := make([][]any, benchSessions)
	for i := range rows {
		// Distinct creation times keep the pass's oldest-first order well defined.
		rows[i] = []any{string(sessions.NewID()), fmt.Sprintf("user-%03d", i%500), "desk", "tenant", int64(1),
			`{"image":"example.org/desk:1"}`, int64(500), int64(1 << 30), "running", int64(1), "Pending", "Created",
			1800, 43200, now.Add(time.Duration(i) * time.Microsecond)}
	}
	if _, err := env.Pool.CopyFrom(ctx, pgx.Identifier{schema, "sessions"},
		[]string{"id", "owner_id", "template", "template_scope", "template_version", "spec", "cpu_millis", "memory_bytes",
			"desired", "generation", "phase", "reason", "idle_timeout_seconds", "max_duration_seconds", "created_at"},
		pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	if _, err := env.Pool.Exec(ctx, `ANALYZE `+pgx.Identifier{schema, "sessions"}.Sanitize()+`, `+pgx.Identifier{schema, "agents"}.Sanitize()); err != nil {
		b.Fatal(err)
	}
}
