package postgres_test

import (
	"context"
	"fmt"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/postgres"
	"streamspace.dev/tenants/tenantstest"
)

func spec(display string) catalog.Spec {
	s := catalog.Spec{
		DisplayName: display, Category: "Web Browsers", Tags: []string{"browser", "web"},
		Image: "lscr.io/linuxserver/firefox:latest",
		Ports: []catalog.Port{{Name: "vnc", Port: 3000, Protocol: catalog.TCP, Stream: catalog.StreamVNCWeb}},
	}
	s.Normalize()
	return s
}

func names(ts []catalog.Template) []string {
	out := make([]string, len(ts))
	for i, t := range ts {
		out[i] = fmt.Sprintf("%s:%s", t.Scope, t.Name)
	}
	return out
}

func TestTenantsSeeOnlyTheirOwnTemplatesAndShadowing(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	_, acme := env.Tenant(t, "acme")
	_, globex := env.Tenant(t, "globex")
	s := postgres.New(env.DB)
	ctx := context.Background()

	must := func(_ catalog.Template, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(s.Create(ctx, catalog.ScopePlatform, "firefox", spec("Firefox"), true))
	must(s.Create(ctx, catalog.ScopePlatform, "gimp", spec("GIMP"), true))
	must(s.Create(acme, catalog.ScopeTenant, "firefox", spec("Acme Firefox"), true))
	must(s.Create(acme, catalog.ScopeTenant, "acme-crm", spec("Acme CRM"), true))

	list := func(ctx context.Context, scope catalog.Scope, q catalog.StoreQuery) []string {
		t.Helper()
		if q.Limit == 0 {
			q.Limit = 100
		}
		ts, err := s.List(ctx, scope, q)
		if err != nil {
			t.Fatal(err)
		}
		return names(ts)
	}
	tests := []struct {
		name  string
		ctx   context.Context
		scope catalog.Scope
		q     catalog.StoreQuery
		want  string
	}{
		{"acme merged, shadowed platform firefox hidden", acme, catalog.ScopeTenant, catalog.StoreQuery{}, "[tenant:acme-crm tenant:firefox platform:gimp]"},
		{"globex sees only the platform", globex, catalog.ScopeTenant, catalog.StoreQuery{}, "[platform:firefox platform:gimp]"},
		{"platform scope ignores tenants", ctx, catalog.ScopePlatform, catalog.StoreQuery{}, "[platform:firefox platform:gimp]"},
		{"text search over display name", acme, catalog.ScopeTenant, catalog.StoreQuery{Text: "ACME"}, "[tenant:acme-crm tenant:firefox]"},
		{"shadowed entry does not reappear through a filter", acme, catalog.ScopeTenant, catalog.StoreQuery{Text: "Firefox"}, "[tenant:firefox]"},
		{"globex cannot find acme's text", globex, catalog.ScopeTenant, catalog.StoreQuery{Text: "acme"}, "[]"},
		{"tag filter", acme, catalog.ScopeTenant, catalog.StoreQuery{Tag: "web"}, "[tenant:acme-crm tenant:firefox platform:gimp]"},
		{"category filter", acme, catalog.ScopeTenant, catalog.StoreQuery{Category: "Office"}, "[]"},
		{"after cursor, limit+1 rows", acme, catalog.ScopeTenant, catalog.StoreQuery{After: "acme-crm", Limit: 1}, "[tenant:firefox platform:gimp]"},
	}
	for _, tc := range tests {
		if got := fmt.Sprint(list(tc.ctx, tc.scope, tc.q)); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, got, tc.want)
		}
	}

	// Get: acme's firefox is its own; globex's is the platform one; acme-crm is 404 for globex.
	if got, err := s.Get(acme, catalog.ScopeTenant, "firefox", true); err != nil || got.Scope != catalog.ScopeTenant || got.DisplayName != "Acme Firefox" {
		t.Fatalf("acme firefox: %+v %v", got, err)
	}
	if got, err := s.Get(globex, catalog.ScopeTenant, "firefox", true); err != nil || got.Scope != catalog.ScopePlatform {
		t.Fatalf("globex firefox: %+v %v", got, err)
	}
	if _, err := s.Get(globex, catalog.ScopeTenant, "acme-crm", true); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("globex reading acme-crm: %v", err)
	}
	if _, err := s.Get(globex, catalog.ScopeTenant, "gimp", false); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("unmerged get of a platform template: %v", err)
	}
	// Writes through globex cannot reach acme's rows either.
	if _, err := s.Update(globex, catalog.ScopeTenant, "acme-crm", spec("x"), nil, 0); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("globex updating acme-crm: %v", err)
	}
	if err := s.Delete(globex, catalog.ScopeTenant, "acme-crm", 0); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("globex deleting acme-crm: %v", err)
	}
	// Without a tenant in the context, tenant work fails closed.
	if _, err := s.List(ctx, catalog.ScopeTenant, catalog.StoreQuery{Limit: 10}); !apperr.IsCode(err, apperr.Unauthenticated) {
		t.Fatalf("list without tenant: %v", err)
	}
	// Deleting acme's shadow brings the platform entry back for acme.
	if err := s.Delete(acme, catalog.ScopeTenant, "firefox", 0); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(list(acme, catalog.ScopeTenant, catalog.StoreQuery{})); got != "[tenant:acme-crm platform:firefox platform:gimp]" {
		t.Fatalf("after unshadowing: %s", got)
	}
}

func TestOptimisticConcurrencyAndDisabled(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	_, acme := env.Tenant(t, "acme")
	s := postgres.New(env.DB)

	created, err := s.Create(acme, catalog.ScopeTenant, "firefox", spec("Firefox"), true)
	if err != nil || created.Version != 1 || !created.Enabled {
		t.Fatalf("create: %+v %v", created, err)
	}
	if _, err := s.Create(acme, catalog.ScopeTenant, "firefox", spec("Firefox"), true); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("duplicate create: %v", err)
	}
	updated, err := s.Update(acme, catalog.ScopeTenant, "firefox", spec("Firefox 2"), nil, 1)
	if err != nil || updated.Version != 2 || updated.DisplayName != "Firefox 2" {
		t.Fatalf("update: %+v %v", updated, err)
	}
	if _, err := s.Update(acme, catalog.ScopeTenant, "firefox", spec("lost update"), nil, 1); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("stale update: %v", err)
	}
	disabled, err := s.SetEnabled(acme, catalog.ScopeTenant, "firefox", false, 2)
	if err != nil || disabled.Enabled || disabled.Version != 3 {
		t.Fatalf("disable: %+v %v", disabled, err)
	}
	ts, err := s.List(acme, catalog.ScopeTenant, catalog.StoreQuery{Limit: 10})
	if err != nil || len(ts) != 0 {
		t.Fatalf("disabled template listed: %v %v", names(ts), err)
	}
	ts, err = s.List(acme, catalog.ScopeTenant, catalog.StoreQuery{Limit: 10, IncludeDisabled: true})
	if err != nil || len(ts) != 1 {
		t.Fatalf("include disabled: %v %v", names(ts), err)
	}
	if err := s.Delete(acme, catalog.ScopeTenant, "firefox", 2); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("stale delete: %v", err)
	}
	if err := s.Delete(acme, catalog.ScopeTenant, "firefox", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(acme, catalog.ScopeTenant, "firefox", spec("x"), nil, 3); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("update after delete: %v", err)
	}
}

func TestUpsertAndSeed(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	_, acme := env.Tenant(t, "acme")
	s := postgres.New(env.DB)

	steps := []struct {
		spec    catalog.Spec
		outcome catalog.ImportOutcome
		version int64
	}{
		{spec("Firefox"), catalog.OutcomeCreated, 1},
		{spec("Firefox"), catalog.OutcomeUnchanged, 1},
		{spec("Firefox ESR"), catalog.OutcomeUpdated, 2},
		{spec("Firefox ESR"), catalog.OutcomeUnchanged, 2},
	}
	for i, st := range steps {
		got, outcome, err := s.Upsert(acme, catalog.ScopeTenant, "firefox", st.spec)
		if err != nil || outcome != st.outcome || got.Version != st.version || got.DisplayName != st.spec.DisplayName {
			t.Fatalf("step %d: %v %+v %v", i, outcome, got, err)
		}
	}
	// An import keeps an admin's decision to disable.
	if _, err := s.SetEnabled(acme, catalog.ScopeTenant, "firefox", false, 0); err != nil {
		t.Fatal(err)
	}
	if got, outcome, err := s.Upsert(acme, catalog.ScopeTenant, "firefox", spec("Firefox 3")); err != nil || outcome != catalog.OutcomeUpdated || got.Enabled {
		t.Fatalf("upsert over disabled: %v %+v %v", outcome, got, err)
	}

	ctx := context.Background()
	seed := []catalog.NewTemplate{{Name: "firefox", Spec: spec("Firefox")}, {Name: "gimp", Spec: spec("GIMP")}}
	if applied, err := s.Seed(ctx, "test-v1", seed); err != nil || !applied {
		t.Fatalf("first seed: %v %v", applied, err)
	}
	if err := s.Delete(ctx, catalog.ScopePlatform, "gimp", 0); err != nil {
		t.Fatal(err)
	}
	if applied, err := s.Seed(ctx, "test-v1", seed); err != nil || applied {
		t.Fatalf("second seed: %v %v", applied, err)
	}
	if _, err := s.Get(ctx, catalog.ScopePlatform, "gimp", false); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("a deleted seed template came back: %v", err)
	}
}
