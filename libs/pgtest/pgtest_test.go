package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
)

func TestNewDatabaseIsMigratedAndPrivate(t *testing.T) {
	t.Parallel()
	tmpl := Template{Name: "pgtest_selftest", Hash: "v1", Migrate: func(ctx context.Context, url string) error {
		conn, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, "CREATE TABLE marker (n int); INSERT INTO marker VALUES (7)")
		return err
	}}
	a, b := NewDatabase(t, tmpl), NewDatabase(t, tmpl)
	if a == b {
		t.Fatal("two tests share a database")
	}
	ctx := context.Background()
	ca, err := pgx.Connect(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close(ctx)
	if _, err := ca.Exec(ctx, "INSERT INTO marker VALUES (8)"); err != nil {
		t.Fatal(err)
	}
	cb, err := pgx.Connect(ctx, b)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close(ctx)
	var n int
	if err := cb.QueryRow(ctx, "SELECT count(*) FROM marker").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("database b sees %d rows, want the template's 1", n)
	}
	t.Logf("server from %s", Source())
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	cases := map[string]string{
		"postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable": "postgres://postgres@127.0.0.1:5432/x?sslmode=disable",
		"postgres://u:p@h:1/db": "postgres://u:p@h:1/x",
		"postgresql://h":        "postgresql://h/x",
	}
	for in, want := range cases {
		if got := WithDatabase(in, "x"); got != want {
			t.Errorf("WithDatabase(%q) = %q, want %q", in, got, want)
		}
	}
}
