package postgres_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// The last activity the store hands the API is the later of the row's own (heartbeats,
// wakes) and the stream traffic the gateway records in session_traffic: Get, List and
// the answers of writes move with traffic, traffic older than the row's activity changes
// nothing, a session without traffic keeps its own, and another tenant's traffic row for
// the same id counts for nothing.
func TestLastActivityFollowsTraffic(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	acme, ctx := env.Tenant(t, "acme")
	globex, _ := env.Tenant(t, "globex")
	store := postgres.New(env.DB)
	streaming, _, err := store.Create(ctx, record("alice"), nil, "alice")
	if err != nil {
		t.Fatal(err)
	}
	quiet, _, err := store.Create(ctx, record("alice"), nil, "alice")
	if err != nil {
		t.Fatal(err)
	}
	// writeTraffic records traffic of id at `at` in the tenant schema, as the gateway's
	// flush does (its own statement, apart from the sessions row).
	writeTraffic := func(schema string, id sessions.ID, at time.Time) {
		t.Helper()
		if _, err := env.Pool.Exec(context.Background(), `INSERT INTO `+pgx.Identifier{schema}.Sanitize()+`.session_traffic
			(session_id, last_traffic_at, bytes_in, bytes_out) VALUES ($1, $2, 10, 20)
			ON CONFLICT (session_id) DO UPDATE SET last_traffic_at = EXCLUDED.last_traffic_at`, string(id), at); err != nil {
			t.Fatal(err)
		}
	}
	// activity reads id's last activity through Get and through List, which must agree.
	activity := func(id sessions.ID) time.Time {
		t.Helper()
		got, err := store.Get(ctx, id, sessions.Scope{})
		if err != nil {
			t.Fatal(err)
		}
		items, err := store.List(ctx, sessions.Scope{}, sessions.StoreQuery{Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, s := range items {
			if s.ID == id {
				n++
				if !s.LastActivity.Equal(got.LastActivity) {
					t.Fatalf("List shows %s's activity at %v, Get at %v", id, s.LastActivity, got.LastActivity)
				}
			}
		}
		if n != 1 || len(items) != 2 {
			t.Fatalf("List returned %d rows, %s %d times", len(items), id, n)
		}
		return got.LastActivity
	}
	own := activity(streaming.ID)
	if !own.Equal(streaming.LastActivity) {
		t.Fatalf("without traffic the activity is %v, the row says %v", own, streaming.LastActivity)
	}

	// Traffic before the row's own activity changes nothing; so does another tenant's
	// traffic row for the same id, even a later one.
	writeTraffic(acme.ID.Schema(), streaming.ID, own.Add(-time.Hour))
	writeTraffic(globex.ID.Schema(), streaming.ID, own.Add(3*time.Hour))
	if got := activity(streaming.ID); !got.Equal(own) {
		t.Fatalf("after older traffic the activity is %v, want %v", got, own)
	}

	// Later traffic moves it, in reads and in what writes return.
	later := own.Add(time.Hour).Truncate(time.Microsecond)
	writeTraffic(acme.ID.Schema(), streaming.ID, later)
	if got := activity(streaming.ID); !got.Equal(later) {
		t.Fatalf("after traffic at %v the activity is %v", later, got)
	}
	if got := activity(quiet.ID); !got.Equal(quiet.LastActivity) {
		t.Fatalf("the quiet session's activity moved to %v from %v", got, quiet.LastActivity)
	}
	tagged, err := store.SetTags(ctx, streaming.ID, sessions.Scope{}, []string{"x"}, "alice")
	if err != nil || !tagged.LastActivity.Equal(later) {
		t.Fatalf("SetTags answers activity %v (%v), want %v", tagged.LastActivity, err, later)
	}
	stopped, err := store.Transition(ctx, streaming.ID, sessions.Scope{}, "alice", func(cur sessions.Session) (sessions.Decision, error) {
		if !cur.LastActivity.Equal(later) {
			t.Errorf("Transition decides on activity %v, want %v", cur.LastActivity, later)
		}
		return sessions.Decide(cur, sessions.ActionStop, sessions.ReasonUserRequest, "")
	})
	if err != nil || !stopped.LastActivity.Equal(later) {
		t.Fatalf("Transition answers activity %v (%v), want %v", stopped.LastActivity, err, later)
	}
	// A heartbeat after the traffic wins again.
	if err := store.Touch(ctx, quiet.ID, sessions.Scope{}); err != nil {
		t.Fatal(err)
	}
	if got := activity(quiet.ID); !got.After(quiet.LastActivity) {
		t.Fatalf("after a heartbeat the quiet session's activity is %v, was %v", got, quiet.LastActivity)
	}
}

// TestListPlan shows that List's one statement stays an index walk with its traffic
// looked up by key, on a tenant with many sessions most of which have streamed (and so
// have a traffic row): no sequential scan of either table, for an admin's first page, a
// later page, a member's page and a filtered one, with the plans PostgreSQL makes for
// those parameters and its generic plan. (Where few sessions have traffic rows, the
// planner may hash the small traffic table for a member's page instead: its cost choice,
// cheap because that table is small.)
func TestListPlan(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	tn, _ := env.Tenant(t, "acme")
	schema := pgx.Identifier{tn.ID.Schema()}.Sanitize()
	bg := context.Background()
	if _, err := env.Pool.Exec(bg, `INSERT INTO `+schema+`.sessions (id, owner_id, template, template_scope, template_version,
			spec, cpu_millis, memory_bytes, desired, phase, idle_timeout_seconds, max_duration_seconds, created_at)
		SELECT 'ses_' || lpad(translate(to_hex(i), '0189', 'wxyz'), 20, 'q'), 'user-' || (i % 200), 'desk', 'tenant', 1,
			'{}', 500, 1073741824, 'running', 'Running', 1800, 0, now() - i * interval '1 second'
		FROM generate_series(1, 20000) AS i`); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Pool.Exec(bg, `INSERT INTO `+schema+`.session_traffic (session_id, last_traffic_at)
		SELECT id, now() FROM `+schema+`.sessions WHERE right(id, 1) <> 'e'`); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Pool.Exec(bg, `ANALYZE `+schema+`.sessions, `+schema+`.session_traffic`); err != nil {
		t.Fatal(err)
	}
	var traffic int
	if err := env.Pool.QueryRow(bg, `SELECT count(*) FROM `+schema+`.session_traffic`).Scan(&traffic); err != nil || traffic < 1000 {
		t.Fatalf("%d traffic rows (%v)", traffic, err)
	}
	// The parameters as literals: EXPLAIN EXECUTE takes no bound parameters.
	cases := []struct{ name, args string }{
		{"first page", `'', '', '', NULL, '', 51`},
		{"later page", `'', '', '', now() - interval '1 hour', 'ses_zzzzzzzzzzzzzzzzzzzz', 51`},
		{"member", `'user-7', '', '', NULL, '', 51`},
		{"phase and tag", `'', 'Running', 't', NULL, '', 51`},
	}
	for _, mode := range []string{"force_custom_plan", "force_generic_plan"} {
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				conn, err := env.Pool.Acquire(bg)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Release()
				tx, err := conn.Begin(bg)
				if err != nil {
					t.Fatal(err)
				}
				defer tx.Rollback(bg)
				if _, err := tx.Exec(bg, `SET LOCAL search_path TO `+schema+`; SET LOCAL plan_cache_mode = `+mode); err != nil {
					t.Fatal(err)
				}
				if _, err := tx.Exec(bg, `PREPARE list_plan AS `+postgres.ListSQL); err != nil {
					t.Fatal(err)
				}
				defer tx.Exec(bg, `DEALLOCATE list_plan`)
				rows, err := tx.Query(bg, `EXPLAIN EXECUTE list_plan(`+c.args+`)`)
				if err != nil {
					t.Fatal(err)
				}
				lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
				if err != nil {
					t.Fatal(err)
				}
				plan := strings.Join(lines, "\n")
				if strings.Contains(plan, "Seq Scan") || !strings.Contains(plan, "session_traffic_pkey") {
					t.Fatalf("List's plan scans a whole table or does not look traffic up by key:\n%s", plan)
				}
				t.Logf("\n%s", plan)
			})
		}
	}
}
