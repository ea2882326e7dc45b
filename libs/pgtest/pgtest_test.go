package pgtest

import (
	"context"
	"fmt"
	"testing"
	"time"

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

// TestSweepDropsOnlyOldIdleScratchDatabases plants scratch databases as a crashed run
// would leave them: an old idle one is dropped, while an old one still connected and a
// recent one survive.
func TestSweepDropsOnlyOldIdleScratchDatabases(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	admin := ServerURL(t)
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	old := time.Now().Add(-sweepAge - time.Hour).Unix()
	stale := fmt.Sprintf("sstest_%x_%s", old, randomHex(6))
	busy := fmt.Sprintf("sstest_%x_%s", old, randomHex(6))
	fresh := scratchName("sstest_")
	for _, n := range []string{stale, busy, fresh} {
		if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{n}.Sanitize()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_, _ = conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+pgx.Identifier{n}.Sanitize()+" WITH (FORCE)")
		})
	}
	holder, err := pgx.Connect(ctx, WithDatabase(admin, busy))
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close(ctx)

	sweep(ctx, conn, time.Now())
	for n, want := range map[string]bool{stale: false, busy: true, fresh: true} {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", n).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists != want {
			t.Errorf("after the sweep, %s exists = %v, want %v", n, exists, want)
		}
	}
	if _, ok := scratchBorn("sstest_0123abcd"); ok {
		t.Error("a name without a time part parsed as a scratch name")
	}
}
