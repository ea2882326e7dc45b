package postgres_test

import (
	"context"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// record is a session of owner as the service would hand it to Create.
func record(owner string) sessions.Record {
	return sessions.Record{Spec: []byte(`{"image":"example.org/desk:1"}`), Session: sessions.Session{
		ID: sessions.NewID(), Owner: owner, Name: "desk", Template: "desk", TemplateScope: "tenant", TemplateVersion: 1,
		Tags: []string{"t"}, CPUMillis: 500, MemoryBytes: 1 << 30, AgentTags: []string{},
		Desired: sessions.DesiredRunning, Generation: 1, Phase: sessions.PhasePending, Reason: sessions.ReasonCreated,
		IdleTimeoutSeconds: 1800, MaxDurationSeconds: 3600}}
}

// TestIsolation shows that the store's SQL keeps sessions inside their tenant and, for a
// member's scope, inside their owner: every read and write of another tenant's or another
// user's session finds nothing, exactly as for a session that does not exist.
func TestIsolation(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	acme, acmeCtx := env.Tenant(t, "acme")
	_, globexCtx := env.Tenant(t, "globex")
	store := postgres.New(env.DB)
	many := int64(100)
	if err := store.SetSettings(acmeCtx, sessions.Settings{IdleTimeoutSeconds: 600, User: sessions.Quota{MaxSessions: &many}}, "ada"); err != nil {
		t.Fatal(err)
	}
	alices, _, err := store.Create(acmeCtx, record("alice"), &sessions.Idempotency{Key: "k", RequestHash: "h"}, "alice")
	if err != nil {
		t.Fatal(err)
	}
	bobs, _, err := store.Create(acmeCtx, record("bob"), nil, "bob")
	if err != nil {
		t.Fatal(err)
	}
	// Globex has a session of its own, so its lists are not empty merely by being new.
	theirs, _, err := store.Create(globexCtx, record("gus"), nil, "gus")
	if err != nil {
		t.Fatal(err)
	}

	notFound := func(t *testing.T, what string, err error) {
		t.Helper()
		if !apperr.IsCode(err, apperr.NotFound) {
			t.Errorf("%s: %v, want not_found", what, err)
		}
	}
	// allRefused tries every per-session method on id in ctx with scope.
	allRefused := func(t *testing.T, ctx context.Context, id sessions.ID, scope sessions.Scope) {
		t.Helper()
		_, err := store.Get(ctx, id, scope)
		notFound(t, "Get", err)
		_, err = store.Events(ctx, id, scope)
		notFound(t, "Events", err)
		notFound(t, "Touch", store.Touch(ctx, id, scope))
		_, err = store.SetTags(ctx, id, scope, []string{"mine-now"}, "intruder")
		notFound(t, "SetTags", err)
		_, err = store.Transition(ctx, id, scope, "intruder", func(sessions.Session) (sessions.Decision, error) {
			t.Errorf("Transition decided on %s", id)
			return sessions.Decision{}, nil
		})
		notFound(t, "Transition", err)
	}
	list := func(t *testing.T, ctx context.Context, scope sessions.Scope, q sessions.StoreQuery) []sessions.ID {
		t.Helper()
		q.Limit = 50
		items, err := store.List(ctx, scope, q)
		if err != nil {
			t.Fatal(err)
		}
		var ids []sessions.ID
		for _, s := range items {
			ids = append(ids, s.ID)
		}
		return ids
	}

	t.Run("another tenant sees nothing", func(t *testing.T) {
		for _, id := range []sessions.ID{alices.ID, bobs.ID} {
			allRefused(t, globexCtx, id, sessions.Scope{}) // even with an admin's scope
		}
		if got := list(t, globexCtx, sessions.Scope{}, sessions.StoreQuery{}); len(got) != 1 || got[0] != theirs.ID {
			t.Errorf("globex lists %v", got)
		}
		if got := list(t, globexCtx, sessions.Scope{}, sessions.StoreQuery{Owner: "alice"}); len(got) != 0 {
			t.Errorf("globex lists alice's %v", got)
		}
		// Activity reported in globex's name does not reach acme's sessions.
		if err := store.RecordActivity(globexCtx, []sessions.ID{alices.ID}); err != nil {
			t.Fatal(err)
		}
		if got, err := store.Get(acmeCtx, alices.ID, sessions.Scope{}); err != nil || !got.LastActivity.Equal(alices.LastActivity) {
			t.Errorf("alice's session after globex's activity report: %v %v", got.LastActivity, err)
		}
		// Nor do acme's settings, idempotency keys or usage.
		st, err := store.Settings(globexCtx)
		if err != nil || st.IdleTimeoutSeconds != sessions.DefaultIdleTimeoutSeconds {
			t.Errorf("globex's settings %+v %v", st, err)
		}
		replay, replayed, err := store.Create(globexCtx, record("alice"), &sessions.Idempotency{Key: "k", RequestHash: "h"}, "alice")
		if err != nil || replayed || replay.ID == alices.ID {
			t.Errorf("globex's alice with acme's key: %s replayed=%v %v", replay.ID, replayed, err)
		}
		var used int64
		if err := env.Pool.QueryRow(context.Background(), `SELECT sessions FROM `+acme.ID.Schema()+`.session_usage WHERE subject = ''`).Scan(&used); err != nil || used != 2 {
			t.Errorf("acme's usage %d %v, want 2", used, err)
		}
	})

	t.Run("a member sees only their own", func(t *testing.T) {
		bob := sessions.Scope{Owner: "bob"}
		allRefused(t, acmeCtx, alices.ID, bob)
		if got := list(t, acmeCtx, bob, sessions.StoreQuery{}); len(got) != 1 || got[0] != bobs.ID {
			t.Errorf("bob lists %v", got)
		}
		// A member's scope wins over an owner filter (the service never passes one, but
		// the SQL must not depend on that).
		if got := list(t, acmeCtx, bob, sessions.StoreQuery{Owner: "alice"}); len(got) != 1 || got[0] != bobs.ID {
			t.Errorf("bob filtering for alice lists %v", got)
		}
		if _, err := store.Get(acmeCtx, bobs.ID, bob); err != nil {
			t.Errorf("bob's own session: %v", err)
		}
		if got := list(t, acmeCtx, sessions.Scope{}, sessions.StoreQuery{}); len(got) != 2 {
			t.Errorf("acme's admin lists %v", got)
		}
	})

	t.Run("no tenant, no access", func(t *testing.T) {
		_, err := store.List(context.Background(), sessions.Scope{}, sessions.StoreQuery{Limit: 50})
		if err == nil {
			t.Fatal("List ran without a tenant")
		}
		_, err = store.Get(context.Background(), alices.ID, sessions.Scope{})
		if err == nil {
			t.Fatal("Get ran without a tenant")
		}
	})
}
