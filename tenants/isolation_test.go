package tenants_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants"
	"streamspace.dev/tenants/tenantstest"
)

func audit(ctx context.Context, db *tenantdb.DB, action string) error {
	return db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "INSERT INTO audit_log (actor, action) VALUES ('tester', $1)", action)
		return err
	})
}

func actions(t *testing.T, ctx context.Context, db *tenantdb.DB) []string {
	t.Helper()
	var got []string
	err := db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, "SELECT action FROM audit_log ORDER BY id")
		if err != nil {
			return err
		}
		got, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestIsolation: two tenants with identical tables never see each other's rows, and the
// scope never outlives its transaction on a pooled connection.
func TestIsolation(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, ctxA := env.Tenant(t, "alpha")
	_, ctxB := env.Tenant(t, "bravo")

	for i := range 3 {
		if err := audit(ctxA, env.DB, fmt.Sprintf("a%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := audit(ctxB, env.DB, "b0"); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(actions(t, ctxA, env.DB)); got != "[a0 a1 a2]" {
		t.Fatalf("tenant A sees %s", got)
	}
	if got := fmt.Sprint(actions(t, ctxB, env.DB)); got != "[b0]" {
		t.Fatalf("tenant B sees %s", got)
	}

	// A row id of A looked up from B is simply absent.
	var idA int64
	if err := env.Pool.QueryRow(context.Background(), "SELECT max(id) FROM "+pgx.Identifier{a.ID.Schema(), "audit_log"}.Sanitize()).Scan(&idA); err != nil {
		t.Fatal(err)
	}
	err := env.DB.InTenant(ctxB, func(ctx context.Context, tx pgx.Tx) error {
		var s string
		return tx.QueryRow(ctx, "SELECT action FROM audit_log WHERE id = $1 AND action LIKE 'a%'", idA).Scan(&s)
	})
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("B reading A's row: %v", err)
	}

	// After a tenant transaction, the same pooled connection is back to the default path.
	conn, err := env.DB.Pool().Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var path string
	if err := conn.QueryRow(context.Background(), "SHOW search_path").Scan(&path); err != nil {
		t.Fatal(err)
	}
	if path != `"$user", public` {
		t.Fatalf("search_path leaked out of a transaction: %q", path)
	}
}

// TestFailsClosed: no tenant, a malformed tenant, an unknown tenant and a suspended or
// deleted tenant are refused with typed errors before the caller's function runs.
func TestFailsClosed(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	suspended, ctxSuspended := env.Tenant(t, "suspended")
	if err := env.Tenants.SetStatus(context.Background(), suspended.ID, tenants.Suspended); err != nil {
		t.Fatal(err)
	}
	deleted, ctxDeleted := env.Tenant(t, "deleted")
	if err := env.Tenants.Delete(context.Background(), string(deleted.ID), "deleted"); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		ctx  context.Context
		want error
		code apperr.Code
	}{
		{"no tenant", context.Background(), tenantdb.ErrNoTenant, apperr.Unauthenticated},
		{"unknown tenant", tenantstest.Context(tenant.NewID()), tenantdb.ErrUnknownTenant, apperr.Unauthenticated},
		{"malformed tenant", tenantstest.Context(tenant.ID(`x"; drop schema public; --`)), tenantdb.ErrUnknownTenant, apperr.Unauthenticated},
		{"suspended tenant", ctxSuspended, tenantdb.ErrTenantSuspended, apperr.Forbidden},
		{"deleted tenant", ctxDeleted, tenantdb.ErrUnknownTenant, apperr.Unauthenticated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ran := false
			err := env.DB.InTenant(tc.ctx, func(context.Context, pgx.Tx) error { ran = true; return nil })
			if !errors.Is(err, tc.want) || apperr.CodeOf(err) != tc.code {
				t.Fatalf("err = %v, want %v (%s)", err, tc.want, tc.code)
			}
			if ran {
				t.Fatal("the caller's function ran")
			}
		})
	}
}

// TestHostileIdentifiers: hostile slugs and names are refused with a clear error and leave
// the database exactly as it was.
func TestHostileIdentifiers(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	snapshot := func() string {
		var s string
		err := env.Pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM platform.tenants)::text || '/' ||
			(SELECT string_agg(nspname, ',' ORDER BY nspname) FROM pg_namespace)`).Scan(&s)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	before := snapshot()
	hostile := []struct{ slug, name string }{
		{`x"; drop schema public; --`, "x"},
		{`acme'; DROP TABLE platform.tenants; --`, "x"},
		{"t_abc\"", "x"},
		{"../../etc", "x"},
		{"acme\x00evil", "x"},
		{"ACME", "x"},
		{"acme", ""},
		{"acme", "line\nbreak"},
	}
	for _, h := range hostile {
		_, _, err := env.Tenants.Create(ctx, h.slug, h.name)
		if apperr.CodeOf(err) != apperr.Invalid {
			t.Errorf("Create(%q, %q) = %v, want an invalid error", h.slug, h.name, err)
		}
	}
	for _, bad := range []string{`x"; drop schema public; --`, "nobody"} {
		if err := env.Tenants.Delete(ctx, bad, bad); apperr.CodeOf(err) != apperr.NotFound {
			t.Errorf("Delete(%q) = %v, want not found", bad, err)
		}
		if err := env.Tenants.Migrate(ctx, bad); apperr.CodeOf(err) != apperr.NotFound {
			t.Errorf("Migrate(%q) = %v, want not found", bad, err)
		}
	}
	if after := snapshot(); after != before {
		t.Fatalf("hostile input changed the database:\n before %s\n after  %s", before, after)
	}
}
