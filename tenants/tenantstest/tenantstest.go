// Package tenantstest gives a test a fresh database with the platform schema migrated,
// a tenants.Manager over it and a tenantdb.DB for tenant work. Every service's store tests
// start here.
package tenantstest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/pgtest"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenant/tenanttest"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants"
	"streamspace.dev/tenants/migrations"
)

// Env is one test's database.
type Env struct {
	// URL of the test's own database.
	URL string
	// Pool is a general pool (pgx defaults), for the platform schema and assertions.
	Pool *pgxpool.Pool
	// Tenants administers tenant schemas.
	Tenants *tenants.Manager
	// DB scopes work to tenants. Its status cache is off, so status changes show at once.
	DB *tenantdb.DB
}

// Template is the pgtest template: an empty database with the platform schema migrated.
func Template() pgtest.Template {
	return pgtest.Template{Name: "platform", Hash: migrationsHash(), Migrate: func(ctx context.Context, url string) error {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			return err
		}
		defer pool.Close()
		return tenants.MigratePlatform(ctx, pool)
	}}
}

func migrationsHash() string {
	h := sha256.New()
	for _, f := range []fs.FS{migrations.Platform(), migrations.Tenant()} {
		_ = fs.WalkDir(f, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := fs.ReadFile(f, p)
			h.Write([]byte(p))
			h.Write(b)
			return err
		})
	}
	return hex.EncodeToString(h.Sum(nil))
}

// New returns a fresh Env, closed when the test ends.
func New(t testing.TB, opts ...tenants.Option) *Env {
	t.Helper()
	url := pgtest.NewDatabase(t, Template())
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	db, err := tenantdb.Open(ctx, url, nil, tenantdb.WithStatusTTL(0))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	m, err := tenants.New(pool, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{URL: url, Pool: pool, Tenants: m, DB: db}
}

// Tenant creates an active tenant and returns it with a context authenticated as one of
// its users.
func (e *Env) Tenant(t testing.TB, slug string) (tenants.Tenant, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tn, _, err := e.Tenants.Create(ctx, slug, "Tenant "+slug)
	if err != nil {
		t.Fatalf("creating tenant %s: %v", slug, err)
	}
	return tn, Context(tn.ID)
}

// Context returns a background context authenticated as a user of tenant id.
func Context(id tenant.ID) context.Context {
	return tenanttest.Context(context.Background(), id)
}
