package tenants_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/tenants"
	"streamspace.dev/tenants/migrations"
	"streamspace.dev/tenants/tenantstest"
)

// realTarget is the version the embedded tenant migrations lead to; test migrations are
// numbered after it, so new real migrations never collide with them.
func realTarget(t testing.TB) int64 {
	t.Helper()
	m, err := tenants.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return m.Target()
}

// withExtra returns the real tenant migrations plus the given bodies as the next
// versions, in order.
func withExtra(t testing.TB, bodies ...string) fs.FS {
	t.Helper()
	m := fstest.MapFS{}
	real := migrations.Tenant()
	names, err := fs.Glob(real, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := fs.ReadFile(real, n)
		if err != nil {
			t.Fatal(err)
		}
		m[n] = &fstest.MapFile{Data: b}
	}
	next := realTarget(t)
	for i, body := range bodies {
		m[fmt.Sprintf("%05d_test_%d.sql", next+int64(i)+1, i)] = &fstest.MapFile{Data: []byte(body)}
	}
	return m
}

// countingMigration records each application in a table, so applying it twice shows.
const countingMigration = `-- +goose Up
CREATE TABLE IF NOT EXISTS migration_probe (applied_at timestamptz NOT NULL DEFAULT now());
INSERT INTO migration_probe DEFAULT VALUES;
-- +goose Down
DROP TABLE migration_probe;
`

func newManager(t testing.TB, env *tenantstest.Env, f fs.FS) *tenants.Manager {
	t.Helper()
	m, err := tenants.New(env.Pool, tenants.WithMigrations(f))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func createTenants(t testing.TB, env *tenantstest.Env, n int) []tenants.Tenant {
	t.Helper()
	var out []tenants.Tenant
	for i := range n {
		tn, _ := env.Tenant(t, fmt.Sprintf("tenant-%d", i))
		out = append(out, tn)
	}
	return out
}

// assertAllAt checks every tenant's recorded and real version, and that the probe
// migration ran exactly once in each schema.
func assertAllAt(t *testing.T, env *tenantstest.Env, ts []tenants.Tenant, version int64) {
	t.Helper()
	ctx := context.Background()
	for _, tn := range ts {
		got, err := env.Tenants.Get(ctx, string(tn.ID))
		if err != nil {
			t.Fatal(err)
		}
		if got.SchemaVersion != version {
			t.Errorf("%s recorded at version %d, want %d", tn.Slug, got.SchemaVersion, version)
		}
		var real, applied, probes int64
		err = env.Pool.QueryRow(ctx, fmt.Sprintf(`SELECT max(version_id), count(*) FILTER (WHERE version_id = $1),
			(SELECT count(*) FROM %s) FROM %s`,
			pgx.Identifier{tn.ID.Schema(), "migration_probe"}.Sanitize(),
			pgx.Identifier{tn.ID.Schema(), "goose_db_version"}.Sanitize()), version).Scan(&real, &applied, &probes)
		if err != nil {
			t.Fatalf("%s: %v", tn.Slug, err)
		}
		if real != version || applied != 1 || probes != 1 {
			t.Errorf("%s: schema at %d, version %d recorded %d times, probe applied %d times", tn.Slug, real, version, applied, probes)
		}
	}
}

func TestMigrateAllBringsEveryTenantToANewVersion(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ts := createTenants(t, env, 3)
	m := newManager(t, env, withExtra(t, countingMigration))

	report, err := m.MigrateAll(context.Background(), tenants.MigrateOptions{Workers: 2})
	if err != nil {
		t.Fatal(err)
	}
	if report.Migrated != 3 || report.Current != 0 || report.Target != realTarget(t)+1 {
		t.Fatalf("report %+v", report)
	}
	assertAllAt(t, env, ts, m.Target())
	status, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(status.Lagging) != 0 || len(status.Tenants) != 3 {
		t.Fatalf("status after migrate: %d lagging of %d", len(status.Lagging), len(status.Tenants))
	}
	// A second run has nothing to do.
	report, err = m.MigrateAll(context.Background(), tenants.MigrateOptions{})
	if err != nil || report.Migrated+report.Current+len(report.Failed) != 0 {
		t.Fatalf("second run: %+v, %v", report, err)
	}
}

func TestMigrateAllResumesAfterInterruption(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ts := createTenants(t, env, 6)
	m := newManager(t, env, withExtra(t, countingMigration))

	ctx, cancel := context.WithCancel(context.Background())
	done := 0
	report, err := m.MigrateAll(ctx, tenants.MigrateOptions{Workers: 1, OnResult: func(tenants.Result) {
		done++
		if done == 2 {
			cancel() // the operator's Ctrl-C, or a crash, midway through the fan-out
		}
	}})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted run returned %v", err)
	}
	if report.Migrated < 2 || report.Migrated >= 6 {
		t.Fatalf("interrupted run migrated %d tenants", report.Migrated)
	}
	status, err := m.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(status.Lagging) != 6-report.Migrated {
		t.Fatalf("%d lagging after migrating %d of 6", len(status.Lagging), report.Migrated)
	}
	first := report.Migrated

	report, err = m.MigrateAll(context.Background(), tenants.MigrateOptions{Workers: 3})
	if err != nil {
		t.Fatal(err)
	}
	if report.Migrated != 6-first {
		t.Fatalf("resumed run migrated %d, want %d", report.Migrated, 6-first)
	}
	assertAllAt(t, env, ts, m.Target())
}

func TestConcurrentMigrateAllAppliesEachMigrationOnce(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ts := createTenants(t, env, 8)
	f := withExtra(t, countingMigration)
	target := realTarget(t) + 1

	var wg sync.WaitGroup
	reports := make([]tenants.Report, 2)
	errs := make([]error, 2)
	for i := range 2 {
		// Separate managers stand in for two operators' processes.
		m := newManager(t, env, f)
		wg.Add(1)
		go func() {
			defer wg.Done()
			reports[i], errs[i] = m.MigrateAll(context.Background(), tenants.MigrateOptions{Workers: 3})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
	}
	if total := reports[0].Migrated + reports[1].Migrated; total != 8 {
		t.Fatalf("the two runs applied the migration %d times across 8 tenants: %+v", total, reports)
	}
	assertAllAt(t, env, ts, target)
}

func TestCreateIsIdempotent(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ctx := context.Background()
	a, created, err := env.Tenants.Create(ctx, "acme", "Acme")
	if err != nil || !created || a.Status != tenants.Active || a.SchemaVersion != env.Tenants.Target() {
		t.Fatalf("first create: %+v %v %v", a, created, err)
	}
	b, created, err := env.Tenants.Create(ctx, "acme", "Acme again")
	if err != nil || created || b.ID != a.ID {
		t.Fatalf("second create: %+v %v %v", b, created, err)
	}
	// Deleting needs the slug repeated; afterwards the slug is free again.
	if err := env.Tenants.Delete(ctx, "acme", "yes"); err == nil {
		t.Fatal("delete without confirmation succeeded")
	}
	if err := env.Tenants.Delete(ctx, "acme", "acme"); err != nil {
		t.Fatal(err)
	}
	var schemas int
	if err := env.Pool.QueryRow(ctx, "SELECT count(*) FROM pg_namespace WHERE nspname = $1", a.ID.Schema()).Scan(&schemas); err != nil || schemas != 0 {
		t.Fatalf("schema survives deletion: %d %v", schemas, err)
	}
	c, created, err := env.Tenants.Create(ctx, "acme", "Acme reborn")
	if err != nil || !created || c.ID == a.ID {
		t.Fatalf("re-create after delete: %+v %v %v", c, created, err)
	}
	var ops []string
	rows, _ := env.Pool.Query(ctx, "SELECT operation FROM platform.tenant_operations WHERE tenant_id = $1 ORDER BY id", string(a.ID))
	ops, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || fmt.Sprint(ops) != "[create delete]" {
		t.Fatalf("operation log %v %v", ops, err)
	}
}
