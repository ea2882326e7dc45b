package pgserver

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// TestStartStopReuse starts a real private cluster, proves it serves queries, that a second
// Start reuses it, and that Stop stops it.
func TestStartStopReuse(t *testing.T) {
	if _, err := Binaries(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	s, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	query := func() int {
		conn, err := pgx.Connect(ctx, s.URL("postgres"))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var n int
		if err := conn.QueryRow(ctx, "select 41 + 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if query() != 42 {
		t.Fatal("wrong answer")
	}
	again, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if again.Port != s.Port {
		t.Fatalf("second Start moved the port from %d to %d", s.Port, again.Port)
	}
	if err := s.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if reachable(s.Port) {
		t.Fatal("still reachable after Stop")
	}
}
