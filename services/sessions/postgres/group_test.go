package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/poll"
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

// A grouped create whose caller has gone before the group decides is not committed: its
// caller gets its context's error, its session does not exist, and the quota counts only
// the sessions that do. The test makes the group wait, deterministically, on the tenant's
// usage row, which another transaction holds: the first create leads alone and waits
// there, four more queue behind it, one of which gives up while queued, the leader's
// caller gives up (its transaction rolls back), the others then wait there as one group,
// and one of them gives up too before the row is released.
func TestGroupedCreateOfGoneCallerIsDropped(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	tn, ctx := env.Tenant(t, "acme")
	store := postgres.New(env.DB)
	schema := pgx.Identifier{tn.ID.Schema()}.Sanitize()
	bg := context.Background()
	if _, _, err := store.Create(ctx, record("alice"), nil, "alice"); err != nil { // the usage rows now exist
		t.Fatal(err)
	}
	// waitsForLock says whether one of the test database's backends waits for a lock,
	// in a statement containing fragment, and no other backend does.
	waitsForLock := func(fragment string) func() bool {
		return func() bool {
			var all, these int
			if err := env.Pool.QueryRow(bg, `SELECT count(*), count(*) FILTER (WHERE strpos(query, $1) > 0) FROM pg_stat_activity
				WHERE datname = current_database() AND wait_event_type = 'Lock'`, fragment).Scan(&all, &these); err != nil {
				t.Fatal(err)
			}
			return all == 1 && these == 1
		}
	}

	holder, err := env.Pool.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(bg)
	if _, err := holder.Exec(bg, `SELECT 1 FROM `+schema+`.session_usage WHERE subject = '' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	type result struct {
		s   sessions.Session
		err error
	}
	type create struct {
		rec    sessions.Record
		cancel context.CancelFunc
		done   chan result
	}
	start := func() *create {
		cctx, cancel := context.WithCancel(ctx)
		c := &create{rec: record("bob"), cancel: cancel, done: make(chan result, 1)}
		go func() {
			s, _, err := store.Create(cctx, c.rec, nil, "bob")
			c.done <- result{s, err}
		}()
		return c
	}
	leader := start()
	poll.Until(t, time.Minute, "the leader waits for the usage row", waitsForLock("u.sessions + 1")) // charge's upsert
	queued := []*create{start(), start(), start(), start()}
	poll.Until(t, time.Minute, "four creates queue", func() bool { return postgres.QueuedCreates(store, tn.ID) == 4 })
	early := queued[3]
	early.cancel()
	if r := <-early.done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a queued caller gave up before its group began, and got %+v %v", r.s, r.err)
	}
	leader.cancel()
	if r := <-leader.done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("the leader's caller gave up, and got %+v %v", r.s, r.err)
	}
	poll.Until(t, time.Minute, "the group waits for the usage row", waitsForLock("SET subject = u.subject")) // the group's first lock
	gone := queued[1]
	gone.cancel()
	if r := <-gone.done; !errors.Is(r.err, context.Canceled) {
		t.Fatalf("a queued caller gave up, and got %+v %v", r.s, r.err)
	}
	if err := holder.Commit(bg); err != nil {
		t.Fatal(err)
	}
	for _, c := range []*create{queued[0], queued[2]} {
		if r := <-c.done; r.err != nil || r.s.ID != c.rec.Session.ID {
			t.Fatalf("a create of the group: %+v %v", r.s, r.err)
		}
	}
	// The group has committed (its other creates returned): what is stored is final.
	var rows, gones, used, bobs int64
	if err := env.Pool.QueryRow(bg, `SELECT (SELECT count(*) FROM `+schema+`.sessions),
			(SELECT count(*) FROM `+schema+`.sessions WHERE id = ANY ($1)),
			(SELECT sessions FROM `+schema+`.session_usage WHERE subject = ''),
			(SELECT sessions FROM `+schema+`.session_usage WHERE subject = 'bob')`,
		[]string{string(leader.rec.Session.ID), string(gone.rec.Session.ID), string(early.rec.Session.ID)}).Scan(&rows, &gones, &used, &bobs); err != nil {
		t.Fatal(err)
	}
	if rows != 3 || gones != 0 || used != 3 || bobs != 2 {
		t.Fatalf("%d sessions stored (%d of callers that gave up), the tenant's usage says %d and bob's %d; want 3, 0, 3, 2",
			rows, gones, used, bobs)
	}
}
