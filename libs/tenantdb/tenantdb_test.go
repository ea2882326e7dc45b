package tenantdb

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/tenant"
)

// The database-backed tests (isolation, fail-closed, the statement-cache hazard) live in
// the tenants module, which owns the platform schema that tenantdb checks.

func TestNewRefusesACachingPool(t *testing.T) {
	t.Parallel()
	cfg, err := pgxpool.ParseConfig("postgres://nobody@127.0.0.1:1/none")
	if err != nil {
		t.Fatal(err)
	}
	// pgxpool connects lazily, so no server is needed to build the pool.
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if _, err := New(pool); err == nil {
		t.Fatal("New accepted a pool with pgx's statement cache")
	}
	ConfigurePool(cfg)
	pool2, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool2.Close()
	if _, err := New(pool2); err != nil {
		t.Fatalf("New refused a configured pool: %v", err)
	}
}

func TestBeginSQL(t *testing.T) {
	t.Parallel()
	id := tenant.ID("abcdefghijkl")
	cases := []struct {
		opts TxOptions
		want string
	}{
		{TxOptions{}, `BEGIN; SET LOCAL search_path TO "t_abcdefghijkl"`},
		{TxOptions{ReadOnly: true}, `BEGIN READ ONLY; SET LOCAL search_path TO "t_abcdefghijkl"`},
		{TxOptions{Serializable: true}, `BEGIN ISOLATION LEVEL SERIALIZABLE; SET LOCAL search_path TO "t_abcdefghijkl"`},
	}
	for _, tc := range cases {
		if got := beginSQL(id, tc.opts); got != tc.want {
			t.Errorf("beginSQL(%+v) = %q, want %q", tc.opts, got, tc.want)
		}
	}
}

func TestNoTenantFailsBeforeTouchingTheDatabase(t *testing.T) {
	t.Parallel()
	cfg, _ := pgxpool.ParseConfig("postgres://nobody@127.0.0.1:1/none")
	ConfigurePool(cfg)
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	db, _ := New(pool)
	err = db.InTenant(context.Background(), func(context.Context, pgx.Tx) error {
		t.Fatal("ran without a tenant")
		return nil
	})
	if !errors.Is(err, ErrNoTenant) {
		t.Fatalf("err = %v", err)
	}
}
