package tenants_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants/tenantstest"
)

// TestInTenantRead: the one-round-trip read sees its own tenant's rows only, in a
// read-only transaction; a failing statement or a reader that leaves results unread is
// an error and leaves the pooled connection clean; and it fails closed like InTenant.
func TestInTenantRead(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	_, ctxA := env.Tenant(t, "alpha")
	_, ctxB := env.Tenant(t, "bravo")
	for _, a := range []string{"a0", "a1"} {
		if err := audit(ctxA, env.DB, a); err != nil {
			t.Fatal(err)
		}
	}
	if err := audit(ctxB, env.DB, "b0"); err != nil {
		t.Fatal(err)
	}
	// One connection, so every read below reuses the connection the last one left.
	cfg, err := pgxpool.ParseConfig(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	tenantdb.ConfigurePool(cfg)
	cfg.MaxConns = 1
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db, err := tenantdb.New(pool, tenantdb.WithStatusTTL(0))
	if err != nil {
		t.Fatal(err)
	}
	read := func(ctx context.Context) (string, int64, error) {
		b := &pgx.Batch{}
		b.Queue("SELECT action FROM audit_log ORDER BY id")
		b.Queue("SELECT count(*) FROM audit_log")
		var actions []string
		var n int64
		err := db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
			rows, _ := br.Query()
			var err error
			if actions, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
				return err
			}
			return br.QueryRow().Scan(&n)
		})
		return strings.Join(actions, " "), n, err
	}
	clean := func() {
		t.Helper()
		var path string
		var status string
		if err := pool.QueryRow(context.Background(), "SELECT current_setting('search_path'), current_setting('transaction_read_only')").Scan(&path, &status); err != nil {
			t.Fatal(err)
		}
		if path != `"$user", public` || status != "off" {
			t.Fatalf("the connection came back with search_path %q, read only %s", path, status)
		}
	}
	for _, tc := range []struct {
		ctx  context.Context
		want string
	}{{ctxA, "a0 a1 2"}, {ctxB, "b0 1"}, {ctxA, "a0 a1 2"}} {
		actions, n, err := read(tc.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprintf("%s %d", actions, n); got != tc.want {
			t.Fatalf("read %q, want %q", got, tc.want)
		}
		clean()
	}

	// Read only: a write fails, and rolls back.
	b := &pgx.Batch{}
	b.Queue("INSERT INTO audit_log (actor, action) VALUES ('tester', 'sneaky')")
	err = db.InTenantRead(ctxA, b, func(br pgx.BatchResults) error { _, err := br.Exec(); return err })
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("a write in InTenantRead: %v, want read_only_sql_transaction", err)
	}
	clean()

	// A failing statement in the middle skips the rest and is the error.
	b = &pgx.Batch{}
	b.Queue("SELECT 1/0")
	b.Queue("SELECT 1")
	err = db.InTenantRead(ctxA, b, func(br pgx.BatchResults) error {
		var n int
		if err := br.QueryRow().Scan(&n); err != nil {
			return err
		}
		return br.QueryRow().Scan(&n)
	})
	if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Fatalf("a failing statement: %v, want division_by_zero", err)
	}
	clean()

	// A reader that leaves a result unread is told so.
	b = &pgx.Batch{}
	b.Queue("SELECT 1")
	err = db.InTenantRead(ctxA, b, func(pgx.BatchResults) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "unread") {
		t.Fatalf("a reader that read nothing: %v", err)
	}
	clean()
	if actions, _, err := read(ctxA); err != nil || actions != "a0 a1" {
		t.Fatalf("after the failures: %q, %v", actions, err)
	}

	// It fails closed before sending anything.
	ran := false
	err = db.InTenantRead(context.Background(), &pgx.Batch{}, func(pgx.BatchResults) error { ran = true; return nil })
	if !errors.Is(err, tenantdb.ErrNoTenant) || ran {
		t.Fatalf("without a tenant: %v (reader ran: %v)", err, ran)
	}
}
