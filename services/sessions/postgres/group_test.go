package postgres_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// Concurrent creates, committed in groups, meet the quotas exactly as one by one: the
// tenant's limit and each user's hold, every refusal is quota_exceeded, a session that
// alone exceeds a quota is refused without affecting its group, and the usage counters
// equal what the running sessions request, per user and for the tenant. Each create has
// its event and audit entry.
func TestGroupedCreatesHoldQuotas(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	tn, ctx := env.Tenant(t, "acme")
	store := postgres.New(env.DB)
	tenantMax, userMax, cpuMax := int64(25), int64(4), int64(1000)
	if err := store.SetSettings(ctx, sessions.Settings{Tenant: sessions.Quota{MaxSessions: &tenantMax},
		User: sessions.Quota{MaxSessions: &userMax, MaxCPUMillis: &cpuMax}}, "ada"); err != nil {
		t.Fatal(err)
	}
	const users, creates = 10, 120
	var (
		mu             sync.Mutex
		ok, refused    int
		perUser        = map[string]int{}
		wg             sync.WaitGroup
		huge, hugeSeen int
	)
	for i := range creates {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rec := record(fmt.Sprintf("user-%d", i%users))
			rec.Session.CPUMillis = 200
			if i%17 == 0 { // alone above the user's CPU quota
				rec.Session.CPUMillis = 5000
				mu.Lock()
				huge++
				mu.Unlock()
			}
			s, _, err := store.Create(ctx, rec, nil, rec.Session.Owner)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
				perUser[s.Owner]++
				if s.ID != rec.Session.ID || s.Generation != 1 || s.Desired != sessions.DesiredRunning {
					t.Errorf("created %+v", s)
				}
			case apperr.IsCode(err, apperr.QuotaExceeded):
				refused++
				if rec.Session.CPUMillis == 5000 {
					hugeSeen++
				}
			default:
				t.Errorf("create: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != int(tenantMax) || ok+refused != creates || hugeSeen != huge {
		t.Fatalf("%d created, %d refused (%d of %d alone too big); want %d created of %d", ok, refused, hugeSeen, huge, tenantMax, creates)
	}
	for u, n := range perUser {
		if n > int(userMax) {
			t.Fatalf("%s has %d sessions, above its quota of %d", u, n, userMax)
		}
	}
	schema := pgx.Identifier{tn.ID.Schema()}.Sanitize()
	rows, err := env.Pool.Query(context.Background(), `SELECT u.subject, u.sessions, u.cpu_millis,
			(SELECT count(*) FROM `+schema+`.sessions s WHERE u.subject = '' OR s.owner_id = u.subject),
			(SELECT COALESCE(sum(cpu_millis), 0) FROM `+schema+`.sessions s WHERE u.subject = '' OR s.owner_id = u.subject)
		FROM `+schema+`.session_usage u`)
	if err != nil {
		t.Fatal(err)
	}
	type usage struct{ n, cpu, rows, sum int64 }
	got := map[string]usage{}
	var subject string
	var u usage
	if _, err := pgx.ForEachRow(rows, []any{&subject, &u.n, &u.cpu, &u.rows, &u.sum}, func() error { got[subject] = u; return nil }); err != nil {
		t.Fatal(err)
	}
	for s, u := range got {
		if u.n != u.rows || u.cpu != u.sum {
			t.Fatalf("usage of %q: %d sessions, %dm CPU; the sessions say %d and %dm", s, u.n, u.cpu, u.rows, u.sum)
		}
	}
	if got[""].n != tenantMax {
		t.Fatalf("tenant usage %+v", got[""])
	}
	var events, audits int
	if err := env.Pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM `+schema+`.session_events WHERE kind = $1),
		(SELECT count(*) FROM `+schema+`.audit_log WHERE action = 'session.create')`, sessions.EventCreated).Scan(&events, &audits); err != nil {
		t.Fatal(err)
	}
	if events != ok || audits != ok {
		t.Fatalf("%d creation events and %d audit entries for %d sessions", events, audits, ok)
	}
}
