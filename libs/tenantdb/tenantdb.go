package tenantdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
)

// Errors returned by InTenant before any of the caller's SQL runs. Compare with errors.Is.
var (
	// ErrNoTenant: the context carries no authenticated tenant.
	ErrNoTenant = &apperr.Error{Code: apperr.Unauthenticated, Message: "no tenant in the request context"}
	// ErrUnknownTenant: the tenant does not exist, or was deleted.
	ErrUnknownTenant = &apperr.Error{Code: apperr.Unauthenticated, Message: "unknown tenant"}
	// ErrTenantSuspended: the tenant exists but is suspended.
	ErrTenantSuspended = &apperr.Error{Code: apperr.Forbidden, Message: "tenant is suspended"}
	// ErrTenantNotReady: the tenant is still being created or its creation failed.
	ErrTenantNotReady = &apperr.Error{Code: apperr.Unavailable, Message: "tenant is not ready", RetryAfter: time.Second}
)

// DefaultStatusTTL is how long a tenant's status is trusted before it is read again.
const DefaultStatusTTL = 5 * time.Second

// DB scopes transactions to tenants. It is safe for concurrent use.
type DB struct {
	pool *pgxpool.Pool
	ttl  time.Duration
	now  func() time.Time

	mu     sync.Mutex
	status map[tenant.ID]cached
}

type cached struct {
	status  string
	expires time.Time
}

// Option configures a DB.
type Option func(*DB)

// WithStatusTTL sets how long a tenant's status is cached; 0 reads it on every transaction.
func WithStatusTTL(d time.Duration) Option { return func(db *DB) { db.ttl = d } }

// ConfigurePool applies tenantdb's requirements to a pool configuration: the statement-
// cache-free exec mode (see the package documentation).
func ConfigurePool(cfg *pgxpool.Config) {
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeExec
}

// Open connects a pool configured for tenant work. tune, if not nil, may adjust the
// configuration further (tracing, pool size); it must not change the exec mode.
func Open(ctx context.Context, url string, tune func(*pgxpool.Config), opts ...Option) (*DB, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parsing database URL: %w", err)
	}
	ConfigurePool(cfg)
	if tune != nil {
		tune(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to PostgreSQL: %w", err)
	}
	db, err := New(pool, opts...)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return db, nil
}

// New wraps a pool. The pool must use QueryExecModeExec (see ConfigurePool).
func New(pool *pgxpool.Pool, opts ...Option) (*DB, error) {
	if mode := pool.Config().ConnConfig.DefaultQueryExecMode; mode != pgx.QueryExecModeExec {
		return nil, fmt.Errorf("tenantdb: pool uses query exec mode %v; tenant schemas need QueryExecModeExec (see package doc)", mode)
	}
	db := &DB{pool: pool, ttl: DefaultStatusTTL, now: time.Now, status: map[tenant.ID]cached{}}
	for _, o := range opts {
		o(db)
	}
	return db, nil
}

// Pool returns the underlying pool, for the platform schema and for administration.
// Tenant data must never be read through it.
func (db *DB) Pool() *pgxpool.Pool { return db.pool }

// Close closes the pool.
func (db *DB) Close() { db.pool.Close() }

// TxOptions tune a tenant transaction.
type TxOptions struct {
	// ReadOnly opens a READ ONLY transaction.
	ReadOnly bool
	// Serializable opens a SERIALIZABLE transaction and retries fn, up to MaxAttempts,
	// when PostgreSQL reports a serialization failure or deadlock. fn must then be
	// safe to run more than once.
	Serializable bool
	// MaxAttempts bounds retries of a Serializable transaction; default 5.
	MaxAttempts int
}

// InTenant runs fn in a transaction scoped to the context's tenant, committing if fn
// returns nil and rolling back otherwise. The tx must not escape fn.
func (db *DB) InTenant(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return db.InTenantTx(ctx, TxOptions{}, fn)
}

// InTenantTx is InTenant with options.
func (db *DB) InTenantTx(ctx context.Context, opts TxOptions, fn func(ctx context.Context, tx pgx.Tx) error) error {
	id, err := db.tenant(ctx)
	if err != nil {
		return err
	}
	begin := beginSQL(id, opts)
	attempts := 1
	if opts.Serializable {
		attempts = opts.MaxAttempts
		if attempts <= 0 {
			attempts = 5
		}
	}
	for range attempts {
		err = pgx.BeginTxFunc(ctx, db.pool, pgx.TxOptions{BeginQuery: begin}, func(tx pgx.Tx) error {
			return fn(ctx, tx)
		})
		if !retryable(err) {
			break
		}
	}
	if undefinedTable(err) {
		// The schema may have vanished under a cached "active": forget the status so the
		// next call reads it again and refuses cleanly.
		db.Forget(id)
	}
	return err
}

// InTenantRead runs the statements queued in b in one READ ONLY transaction scoped to the
// context's tenant, in a single round trip: BEGIN, the scoping, b's statements and COMMIT
// travel as one pipeline. read must read the results of b's statements from br, in order
// and all of them (CollectRows, QueryRow(…).Scan and Exec each read one), and must not
// close br. It is InTenantTx with ReadOnly for reads that need no answer before their
// next statement: a transaction of one query costs one round trip instead of three
// (BEGIN, the query, COMMIT).
//
// Should a statement fail, PostgreSQL skips the rest of the pipeline and leaves the
// transaction aborted; InTenantRead then rolls it back, so the connection returns to
// the pool clean (or, if even that fails, is discarded by the pool).
func (db *DB) InTenantRead(ctx context.Context, b *pgx.Batch, read func(br pgx.BatchResults) error) error {
	id, err := db.tenant(ctx)
	if err != nil {
		return err
	}
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	full := &pgx.Batch{QueuedQueries: make([]*pgx.QueuedQuery, 0, len(b.QueuedQueries)+3)}
	full.Queue("BEGIN READ ONLY")
	full.Queue("SET LOCAL search_path TO " + pgx.Identifier{id.Schema()}.Sanitize())
	full.QueuedQueries = append(full.QueuedQueries, b.QueuedQueries...)
	full.Queue("COMMIT")
	br := conn.SendBatch(ctx, full)
	err = readPipeline(br, read)
	if cerr := br.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		if pc := conn.Conn().PgConn(); !pc.IsClosed() && pc.TxStatus() != 'I' {
			// If this fails too, Release sees the open transaction and closes the
			// connection.
			_, _ = conn.Exec(context.WithoutCancel(ctx), "ROLLBACK")
		}
	}
	if undefinedTable(err) {
		db.Forget(id) // as in InTenantTx
	}
	return err
}

// readPipeline reads InTenantRead's pipeline: BEGIN, the scoping, the caller's results
// through read, and COMMIT, whose tag proves that read read them all.
func readPipeline(br pgx.BatchResults, read func(br pgx.BatchResults) error) error {
	for range 2 {
		if _, err := br.Exec(); err != nil {
			return err
		}
	}
	if err := read(br); err != nil {
		return err
	}
	tag, err := br.Exec()
	if err != nil {
		return err
	}
	if tag.String() != "COMMIT" {
		return fmt.Errorf("tenantdb: InTenantRead's reader left results unread (next: %q)", tag.String())
	}
	return nil
}

// tenant returns the context's tenant once it has passed the checks every transaction
// needs: authenticated, well-formed, and active.
func (db *DB) tenant(ctx context.Context) (tenant.ID, error) {
	id, ok := tenant.FromContext(ctx)
	if !ok {
		return "", ErrNoTenant
	}
	// The ID came from a verified token, but it still passes the parser before it goes
	// near SQL: defence in depth against a future bug in what fills the context.
	if _, err := tenant.ParseID(string(id)); err != nil {
		return "", ErrUnknownTenant
	}
	if err := db.check(ctx, id); err != nil {
		return "", err
	}
	return id, nil
}

// beginSQL opens the transaction and scopes it in one simple-protocol message. pg_catalog
// comes first implicitly; nothing else — not public — is on the path.
func beginSQL(id tenant.ID, opts TxOptions) string {
	var b strings.Builder
	b.WriteString("BEGIN")
	if opts.Serializable {
		b.WriteString(" ISOLATION LEVEL SERIALIZABLE")
	}
	if opts.ReadOnly {
		b.WriteString(" READ ONLY")
	}
	b.WriteString("; SET LOCAL search_path TO ")
	b.WriteString(pgx.Identifier{id.Schema()}.Sanitize())
	return b.String()
}

func (db *DB) check(ctx context.Context, id tenant.ID) error {
	now := db.now()
	db.mu.Lock()
	c, ok := db.status[id]
	db.mu.Unlock()
	if !ok || !now.Before(c.expires) {
		var status string
		err := db.pool.QueryRow(ctx, "SELECT status FROM platform.tenants WHERE id = $1", string(id)).Scan(&status)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			status = "deleted"
		case err != nil:
			return apperr.Wrap(err, apperr.Unavailable, "checking tenant status")
		}
		c = cached{status: status, expires: now.Add(db.ttl)}
		db.mu.Lock()
		db.status[id] = c
		db.mu.Unlock()
	}
	switch c.status {
	case "active":
		return nil
	case "suspended":
		return ErrTenantSuspended
	case "creating", "failed":
		return ErrTenantNotReady
	default:
		return ErrUnknownTenant
	}
}

// Forget drops the cached status of a tenant, so the next transaction reads it afresh.
// Tenant administration calls it after changing a status in this process.
func (db *DB) Forget(id tenant.ID) {
	db.mu.Lock()
	delete(db.status, id)
	db.mu.Unlock()
}

func retryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

func undefinedTable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P01" || pgErr.Code == "3F000")
}
