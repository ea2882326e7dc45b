// Package tenants creates, migrates, lists and deletes tenant schemas.
//
// The platform schema's tenants table is the registry: one row per tenant with its status
// and the schema version last recorded for it. Each tenant's schema t_<id> carries its own
// goose version table, which is the truth about that schema; the registry copy makes
// "which tenants lag" one indexed query across thousands of tenants.
//
// Every operation on one tenant holds that tenant's advisory lock, so concurrent
// operations — two `migrate --all` runs, a create racing a migrate — serialise per tenant
// and never apply a migration twice. Every operation is recorded in
// platform.tenant_operations and summarised on the tenant's row.
package tenants

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/tenants/migrations"
)

// Status is a tenant's lifecycle state.
type Status string

// The statuses. Only active tenants serve requests (see package tenantdb).
const (
	Creating  Status = "creating"
	Active    Status = "active"
	Suspended Status = "suspended"
	Failed    Status = "failed"
	Deleting  Status = "deleting"
	Deleted   Status = "deleted"
)

// Tenant is one row of the registry.
type Tenant struct {
	ID            tenant.ID   `json:"id"`
	Slug          tenant.Slug `json:"slug"`
	Name          string      `json:"name"`
	Status        Status      `json:"status"`
	SchemaVersion int64       `json:"schema_version"`
	CreatedAt     time.Time   `json:"created_at"`
	UpdatedAt     time.Time   `json:"updated_at"`
	MigratedAt    *time.Time  `json:"migrated_at,omitempty"`
	LastOperation string      `json:"last_operation,omitempty"`
	LastError     string      `json:"last_error,omitempty"`
}

// Manager administers tenant schemas. It is safe for concurrent use.
type Manager struct {
	pool       *pgxpool.Pool
	migrations fs.FS
	target     int64
	log        *slog.Logger
	actor      string
}

// Option configures a Manager.
type Option func(*Manager)

// WithMigrations replaces the embedded tenant migrations (tests add migrations this way).
func WithMigrations(f fs.FS) Option { return func(m *Manager) { m.migrations = f } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(m *Manager) { m.log = l } }

// WithActor names who performs operations, for the operation log (default "system").
func WithActor(actor string) Option { return func(m *Manager) { m.actor = actor } }

// New returns a Manager over pool, which must reach a database whose platform schema is
// migrated (see MigratePlatform).
func New(pool *pgxpool.Pool, opts ...Option) (*Manager, error) {
	m := &Manager{pool: pool, migrations: migrations.Tenant(), log: slog.Default(), actor: "system"}
	for _, o := range opts {
		o(m)
	}
	target, err := latestVersion(m.migrations)
	if err != nil {
		return nil, err
	}
	m.target = target
	return m, nil
}

// Target returns the tenant schema version that migrations lead to.
func (m *Manager) Target() int64 { return m.target }

// latestVersion reads the highest goose version among the migration files.
func latestVersion(f fs.FS) (int64, error) {
	names, err := fs.Glob(f, "*.sql")
	if err != nil {
		return 0, err
	}
	var max int64
	for _, n := range names {
		digits, _, _ := strings.Cut(path.Base(n), "_")
		v, err := strconv.ParseInt(digits, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("migration %s: name must start with a version number", n)
		}
		max = maxInt(max, v)
	}
	if max == 0 {
		return 0, errors.New("no tenant migrations found")
	}
	return max, nil
}

func maxInt(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// MigratePlatform creates the platform schema and applies its migrations. Concurrent
// callers serialise on an advisory lock.
func MigratePlatform(ctx context.Context, pool *pgxpool.Pool) error {
	return withLock(ctx, pool, "platform", func(conn *pgxpool.Conn) error {
		if _, err := conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS platform"); err != nil {
			return fmt.Errorf("creating platform schema: %w", err)
		}
		db := stdlib.OpenDB(*pool.Config().ConnConfig.Copy())
		defer db.Close()
		p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.Platform(),
			goose.WithTableName("platform.goose_db_version"), goose.WithDisableGlobalRegistry(true),
			goose.WithLogger(goose.NopLogger()))
		if err != nil {
			return err
		}
		if _, err := p.Up(ctx); err != nil {
			return fmt.Errorf("migrating platform schema: %w", err)
		}
		return nil
	})
}

// withLock runs fn holding the session advisory lock named key. fn gets the connection
// that holds the lock and must do its SQL there: taking a second pooled connection while
// holding one deadlocks once every pooled connection is a waiting lock holder. The lock
// blocks: a second operation on the same key waits its turn.
func withLock(ctx context.Context, pool *pgxpool.Pool, key string, fn func(conn *pgxpool.Conn) error) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquiring lock connection: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(hashtextextended($1, 0))", "streamspace.tenants:"+key); err != nil {
		return fmt.Errorf("locking %s: %w", key, err)
	}
	defer func() {
		if _, err := conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock(hashtextextended($1, 0))", "streamspace.tenants:"+key); err != nil {
			// A lock we cannot release must not go back to the pool still held.
			conn.Conn().Close(context.WithoutCancel(ctx))
		}
	}()
	return fn(conn)
}

// validName refuses empty, overlong and control-character display names.
func validName(name string) error {
	if strings.TrimSpace(name) == "" || len(name) > 200 {
		return apperr.Validation("invalid tenant name", apperr.Field("name", "must be 1 to 200 characters"))
	}
	for _, r := range name {
		if unicode.IsControl(r) {
			return apperr.Validation("invalid tenant name", apperr.Field("name", "must not contain control characters"))
		}
	}
	return nil
}

// Create registers a tenant, creates its schema and migrates it to the target version.
// It is idempotent by slug: for a live tenant with that slug it returns it with
// created=false; for one whose creation was interrupted it finishes the job.
func (m *Manager) Create(ctx context.Context, slug, name string) (t Tenant, created bool, err error) {
	s, err := tenant.ParseSlug(slug)
	if err != nil {
		return Tenant{}, false, err
	}
	if err := validName(name); err != nil {
		return Tenant{}, false, err
	}
	t, created, err = m.register(ctx, s, name)
	if err != nil {
		return Tenant{}, false, err
	}
	if t.Status != Creating && t.Status != Failed {
		return t, false, nil
	}
	err = m.operate(ctx, t.ID, "create", func(op *operation) error {
		if _, err := op.conn.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{t.ID.Schema()}.Sanitize()); err != nil {
			return fmt.Errorf("creating schema: %w", err)
		}
		return m.migrateLocked(ctx, t.ID, op)
	})
	if err != nil {
		_, _ = m.pool.Exec(context.WithoutCancel(ctx),
			"UPDATE platform.tenants SET status = 'failed', updated_at = now() WHERE id = $1 AND status = 'creating'", string(t.ID))
		return Tenant{}, false, err
	}
	if _, err := m.pool.Exec(ctx, "UPDATE platform.tenants SET status = 'active', updated_at = now() WHERE id = $1 AND status IN ('creating', 'failed')", string(t.ID)); err != nil {
		return Tenant{}, false, err
	}
	t, err = m.Get(ctx, string(t.ID))
	return t, created, err
}

// register inserts the registry row, or returns the live row that holds the slug.
func (m *Manager) register(ctx context.Context, slug tenant.Slug, name string) (Tenant, bool, error) {
	id := tenant.NewID()
	tag, err := m.pool.Exec(ctx, `INSERT INTO platform.tenants (id, slug, name, status, last_operation)
		VALUES ($1, $2, $3, 'creating', 'create') ON CONFLICT (slug) WHERE status <> 'deleted' DO NOTHING`,
		string(id), string(slug), name)
	if err != nil {
		return Tenant{}, false, fmt.Errorf("registering tenant: %w", err)
	}
	t, err := m.Get(ctx, string(slug))
	return t, tag.RowsAffected() == 1, err
}

const tenantColumns = `id, slug, name, status, schema_version, created_at, updated_at, migrated_at,
	coalesce(last_operation, ''), coalesce(last_error, '')`

func scanTenant(row pgx.Row) (Tenant, error) {
	var t Tenant
	var id, slug, status string
	err := row.Scan(&id, &slug, &t.Name, &status, &t.SchemaVersion, &t.CreatedAt, &t.UpdatedAt,
		&t.MigratedAt, &t.LastOperation, &t.LastError)
	t.ID, t.Slug, t.Status = tenant.ID(id), tenant.Slug(slug), Status(status)
	return t, err
}

// Get returns the live tenant with the given ID or slug. A deleted tenant is not found.
func (m *Manager) Get(ctx context.Context, idOrSlug string) (Tenant, error) {
	t, err := scanTenant(m.pool.QueryRow(ctx, `SELECT `+tenantColumns+` FROM platform.tenants
		WHERE (id = $1 OR slug = $1) AND status <> 'deleted'`, idOrSlug))
	if errors.Is(err, pgx.ErrNoRows) {
		return Tenant{}, apperr.New(apperr.NotFound, "tenant %q not found", idOrSlug)
	}
	return t, err
}

// List returns every tenant that is not deleted, ordered by slug.
func (m *Manager) List(ctx context.Context) ([]Tenant, error) {
	rows, err := m.pool.Query(ctx, `SELECT `+tenantColumns+` FROM platform.tenants
		WHERE status <> 'deleted' ORDER BY slug`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (Tenant, error) { return scanTenant(r) })
}

// VersionReport says where every tenant's schema stands against the target.
type VersionReport struct {
	Target  int64    `json:"target"`
	Tenants []Tenant `json:"tenants"`
	Lagging []Tenant `json:"lagging"`
}

// Status reports each tenant's schema version and which tenants lag behind the target.
func (m *Manager) Status(ctx context.Context) (VersionReport, error) {
	all, err := m.List(ctx)
	if err != nil {
		return VersionReport{}, err
	}
	r := VersionReport{Target: m.target, Tenants: all, Lagging: []Tenant{}}
	for _, t := range all {
		if t.SchemaVersion < m.target {
			r.Lagging = append(r.Lagging, t)
		}
	}
	return r, nil
}

// SetStatus suspends (Suspended) or resumes (Active) a tenant.
func (m *Manager) SetStatus(ctx context.Context, id tenant.ID, status Status) error {
	op := map[Status]string{Suspended: "suspend", Active: "resume"}[status]
	if op == "" {
		return apperr.Validation("invalid status", apperr.Field("status", "must be active or suspended"))
	}
	return m.operate(ctx, id, op, func(o *operation) error {
		tag, err := o.conn.Exec(ctx, `UPDATE platform.tenants SET status = $2, updated_at = now()
			WHERE id = $1 AND status IN ('active', 'suspended')`, string(id), string(status))
		if err == nil && tag.RowsAffected() == 0 {
			err = apperr.New(apperr.NotFound, "tenant %q not found", id)
		}
		return err
	})
}

// Delete drops a tenant's schema and all its data. confirm must repeat the tenant's slug:
// a typed confirmation, since nothing brings the data back.
func (m *Manager) Delete(ctx context.Context, idOrSlug, confirm string) error {
	t, err := m.Get(ctx, idOrSlug)
	if err != nil {
		return err
	}
	if confirm != string(t.Slug) {
		return apperr.Validation("deletion not confirmed", apperr.Field("confirm", fmt.Sprintf("must repeat the tenant's slug %q", t.Slug)))
	}
	return m.operate(ctx, t.ID, "delete", func(op *operation) error {
		// Mark first: from here no request is served for the tenant, even if the drop fails.
		if _, err := op.conn.Exec(ctx, "UPDATE platform.tenants SET status = 'deleting', updated_at = now() WHERE id = $1", string(t.ID)); err != nil {
			return err
		}
		if _, err := op.conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{t.ID.Schema()}.Sanitize()+" CASCADE"); err != nil {
			return fmt.Errorf("dropping schema: %w", err)
		}
		_, err := op.conn.Exec(ctx, "UPDATE platform.tenants SET status = 'deleted', deleted_at = now(), updated_at = now() WHERE id = $1", string(t.ID))
		return err
	})
}

// operation is one row of platform.tenant_operations while it runs.
type operation struct {
	conn             *pgxpool.Conn
	id               int64
	from, to         int64
	appliedMigration bool
}

// operate runs fn under the tenant's lock, recording the operation.
func (m *Manager) operate(ctx context.Context, id tenant.ID, name string, fn func(*operation) error) error {
	return withLock(ctx, m.pool, string(id), func(conn *pgxpool.Conn) error {
		op := &operation{conn: conn}
		if err := conn.QueryRow(ctx, `INSERT INTO platform.tenant_operations (tenant_id, operation, actor, from_version)
			SELECT id, $2, $3, schema_version FROM platform.tenants WHERE id = $1 RETURNING id, from_version`,
			string(id), name, m.actor).Scan(&op.id, &op.from); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return apperr.New(apperr.NotFound, "tenant %q not found", id)
			}
			return fmt.Errorf("recording %s: %w", name, err)
		}
		err := fn(op)
		ctx := context.WithoutCancel(ctx)
		errText := ""
		if err != nil {
			errText = err.Error()
		}
		_, recErr := conn.Exec(ctx, `UPDATE platform.tenant_operations SET finished_at = now(), to_version = $2, error = nullif($3, '')
			WHERE id = $1`, op.id, op.to, errText)
		_, recErr2 := conn.Exec(ctx, `UPDATE platform.tenants SET last_operation = $2, last_error = nullif($3, ''), updated_at = now()
			WHERE id = $1`, string(id), name, errText)
		return errors.Join(err, recErr, recErr2)
	})
}

// migrateLocked applies pending migrations to one tenant's schema. The caller holds the
// tenant's lock.
func (m *Manager) migrateLocked(ctx context.Context, id tenant.ID, op *operation) error {
	cfg := m.pool.Config().ConnConfig.Copy()
	// A connection of its own whose search_path is the tenant's schema from the first
	// byte: a reconnect cannot silently fall back to another schema.
	cfg.RuntimeParams["search_path"] = pgx.Identifier{id.Schema()}.Sanitize()
	cfg.DefaultQueryExecMode = pgx.QueryExecModeExec
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	db.SetMaxOpenConns(1)
	p, err := goose.NewProvider(goose.DialectPostgres, db, m.migrations,
		goose.WithTableName(id.Schema()+".goose_db_version"), goose.WithDisableGlobalRegistry(true),
		goose.WithLogger(goose.NopLogger()))
	if err != nil {
		return err
	}
	results, upErr := p.Up(ctx)
	op.appliedMigration = len(results) > 0
	version, err := schemaVersion(ctx, db, id)
	if err != nil {
		return errors.Join(upErr, err)
	}
	op.to = version
	// Record whatever the schema truly reached, even when a later migration failed.
	if _, err := op.conn.Exec(context.WithoutCancel(ctx), `UPDATE platform.tenants SET schema_version = $2,
		migrated_at = CASE WHEN $3 THEN now() ELSE migrated_at END WHERE id = $1`,
		string(id), version, op.appliedMigration); err != nil {
		return errors.Join(upErr, err)
	}
	if upErr != nil {
		return fmt.Errorf("migrating %s: %w", id, upErr)
	}
	return nil
}

func schemaVersion(ctx context.Context, db *sql.DB, id tenant.ID) (int64, error) {
	var v sql.NullInt64
	err := db.QueryRowContext(context.WithoutCancel(ctx), "SELECT max(version_id) FROM "+
		pgx.Identifier{id.Schema(), "goose_db_version"}.Sanitize()+" WHERE is_applied").Scan(&v)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		return 0, nil
	}
	return v.Int64, err
}

// Migrate brings one tenant to the target version.
func (m *Manager) Migrate(ctx context.Context, idOrSlug string) error {
	t, err := m.Get(ctx, idOrSlug)
	if err != nil {
		return err
	}
	return m.operate(ctx, t.ID, "migrate", func(op *operation) error { return m.migrateLocked(ctx, t.ID, op) })
}

// MigrateOptions tune MigrateAll.
type MigrateOptions struct {
	// Workers migrate this many tenants at once; default 4.
	Workers int
	// OnResult, if set, is called after each tenant, from the worker's goroutine.
	OnResult func(Result)
}

// Result is the outcome of one tenant in a fan-out.
type Result struct {
	Tenant  tenant.ID
	From    int64
	To      int64
	Applied bool
	Err     error
}

// Report summarises a fan-out.
type Report struct {
	Target   int64
	Migrated int
	Current  int
	Failed   []Result
}

// MigrateAll brings every active or suspended tenant that lags behind the target version
// up to it, Workers at a time. One tenant's failure does not stop the others. It is
// resumable: the set to migrate is read from the registry, so a run that crashed or was
// cancelled midway is finished by running it again; and it is safe to run twice at once,
// since each tenant is migrated under its lock and goose skips applied versions.
func (m *Manager) MigrateAll(ctx context.Context, opts MigrateOptions) (Report, error) {
	workers := opts.Workers
	if workers <= 0 {
		workers = 4
	}
	rows, err := m.pool.Query(ctx, `SELECT id FROM platform.tenants
		WHERE status IN ('active', 'suspended') AND schema_version < $1 ORDER BY id`, m.target)
	if err != nil {
		return Report{}, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return Report{}, err
	}
	report := Report{Target: m.target}
	var mu sync.Mutex
	work := make(chan tenant.ID)
	var wg sync.WaitGroup
	for range min(workers, max(len(ids), 1)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range work {
				r := Result{Tenant: id}
				r.Err = m.operate(ctx, id, "migrate", func(op *operation) error {
					err := m.migrateLocked(ctx, id, op)
					r.From, r.To, r.Applied = op.from, op.to, op.appliedMigration
					return err
				})
				mu.Lock()
				switch {
				case r.Err != nil:
					report.Failed = append(report.Failed, r)
				case r.Applied:
					report.Migrated++
				default:
					report.Current++
				}
				mu.Unlock()
				if opts.OnResult != nil {
					opts.OnResult(r)
				}
			}
		}()
	}
feed:
	for _, id := range ids {
		select {
		case work <- tenant.ID(id):
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	sort.Slice(report.Failed, func(i, j int) bool { return report.Failed[i].Tenant < report.Failed[j].Tenant })
	if err := ctx.Err(); err != nil {
		return report, fmt.Errorf("fan-out interrupted, run it again to resume: %w", err)
	}
	if len(report.Failed) > 0 {
		return report, fmt.Errorf("%d of %d tenants failed to migrate", len(report.Failed), len(ids))
	}
	return report, nil
}
