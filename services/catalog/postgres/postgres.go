// Package postgres is the catalog's Store on PostgreSQL.
//
// Tenant templates live in each tenant schema's templates table and are reached only
// through tenantdb.InTenant, so the tenant always comes from the verified context.
// Platform templates live in platform.templates and are named with their schema. A tenant
// transaction reads both: its search_path is the tenant schema, and the platform table is
// schema-qualified.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/catalog"
)

// The tables, quoted once. Only these two strings are ever spliced into SQL; every value
// travels as a parameter.
var (
	tenantTable   = pgx.Identifier{"templates"}.Sanitize()
	platformTable = pgx.Identifier{"platform", "templates"}.Sanitize()
	seedsTable    = pgx.Identifier{"platform", "catalog_seeds"}.Sanitize()
)

// Store implements catalog.Store.
type Store struct {
	db    *tenantdb.DB
	specs specCache
}

// maxCachedSpecs bounds the decoded-spec cache: a few MiB for thousands of templates.
const maxCachedSpecs = 4096

// specCache maps a spec's stored JSON text to its decoded form. Decoding JSON dominated the
// cost of a list (hundreds of specs per page), and a spec's text changes only when the
// template does, so the text itself is the key: no invalidation is needed, and a key can
// never be stale. The column is json, stored as written by derive's deterministic encoder,
// so equal specs share one entry across tenants.
type specCache struct {
	mu sync.Mutex
	m  map[string]catalog.Spec
}

func (c *specCache) decode(text []byte) (catalog.Spec, error) {
	c.mu.Lock()
	s, ok := c.m[string(text)]
	c.mu.Unlock()
	if ok {
		// Callers may change what they get; the cached value must stay as stored.
		return s.Clone(), nil
	}
	if err := json.Unmarshal(text, &s); err != nil {
		return s, err
	}
	s.Normalize()
	c.mu.Lock()
	if c.m == nil || len(c.m) >= maxCachedSpecs {
		// Dropping everything is crude but bounded, and rare: the working set is the
		// catalog a busy replica serves, far below the bound.
		c.m = make(map[string]catalog.Spec, 256)
	}
	c.m[string(text)] = s
	c.mu.Unlock()
	return s.Clone(), nil
}

var _ catalog.Store = (*Store)(nil)

// New returns a Store over db.
func New(db *tenantdb.DB) *Store { return &Store{db: db} }

// inScope runs fn in a transaction of the scope: a tenant transaction (search_path on the
// context's tenant, fails closed without one) or a plain one for the platform schema.
func (s *Store) inScope(ctx context.Context, scope catalog.Scope, readOnly bool, fn func(ctx context.Context, tx pgx.Tx, table string) error) error {
	switch scope {
	case catalog.ScopeTenant:
		return s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: readOnly}, func(ctx context.Context, tx pgx.Tx) error {
			return fn(ctx, tx, tenantTable)
		})
	case catalog.ScopePlatform:
		opts := pgx.TxOptions{}
		if readOnly {
			opts.AccessMode = pgx.ReadOnly
		}
		return pgx.BeginTxFunc(ctx, s.db.Pool(), opts, func(tx pgx.Tx) error { return fn(ctx, tx, platformTable) })
	default:
		return fmt.Errorf("postgres: unknown scope %q", scope)
	}
}

// columns is what every read returns, in scanTemplate's order, after a scope literal.
const columns = "name, version, enabled, spec, created_at, updated_at"

func (s *Store) scanTemplate(row pgx.Row) (catalog.Template, error) {
	var (
		t    catalog.Template
		spec []byte
	)
	if err := row.Scan(&t.Scope, &t.Name, &t.Version, &t.Enabled, &spec, &t.CreatedAt, &t.UpdatedAt); err != nil {
		return t, err
	}
	var err error
	if t.Spec, err = s.specs.decode(spec); err != nil {
		return t, fmt.Errorf("decoding stored spec of %s: %w", t.Name, err)
	}
	return t, nil
}

// derived are the filter columns stored beside the spec.
type derived struct {
	spec        string // JSON text: in exec mode a []byte would travel as bytea
	displayName string
	category    string
	tags        []string
	search      string
}

func derive(spec catalog.Spec, name catalog.TemplateName) (derived, error) {
	spec.Normalize()
	b, err := json.Marshal(spec)
	if err != nil {
		return derived{}, fmt.Errorf("encoding spec: %w", err)
	}
	return derived{
		spec: string(b), displayName: spec.DisplayName, category: spec.Category, tags: spec.Tags,
		search: strings.ToLower(string(name) + "\n" + spec.DisplayName + "\n" + spec.Description),
	}, nil
}

func scopeOf(table string) catalog.Scope {
	if table == platformTable {
		return catalog.ScopePlatform
	}
	return catalog.ScopeTenant
}

// List implements catalog.Store.
func (s *Store) List(ctx context.Context, scope catalog.Scope, q catalog.StoreQuery) ([]catalog.Template, error) {
	// In the tenant scope, platform rows a tenant row shadows are dropped before filtering:
	// a shadowed entry must not reappear just because the tenant's copy fails a filter.
	source := `SELECT 'platform' AS scope, ` + columns + `, category, tags, search FROM ` + platformTable
	if scope == catalog.ScopeTenant {
		source = `SELECT 'tenant' AS scope, ` + columns + `, category, tags, search FROM ` + tenantTable + `
			UNION ALL
			SELECT 'platform', p.name, p.version, p.enabled, p.spec, p.created_at, p.updated_at, p.category, p.tags, p.search
			FROM ` + platformTable + ` p
			WHERE NOT EXISTS (SELECT 1 FROM ` + tenantTable + ` t WHERE t.name = p.name)`
	}
	sql := `SELECT scope, ` + columns + ` FROM (` + source + `) m
		WHERE ($1 = '' OR category = $1)
		  AND ($2 = '' OR $2 = ANY (tags))
		  AND ($3 = '' OR strpos(search, $3) > 0)
		  AND name > $4
		  AND (enabled OR $5)
		ORDER BY name
		LIMIT $6`
	var out []catalog.Template
	err := s.inScope(ctx, scope, true, func(ctx context.Context, tx pgx.Tx, _ string) error {
		rows, err := tx.Query(ctx, sql, q.Category, q.Tag, strings.ToLower(q.Text), string(q.After), q.IncludeDisabled, q.Limit+1)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			t, err := s.scanTemplate(rows)
			if err != nil {
				return err
			}
			out = append(out, t)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, fmt.Errorf("listing templates: %w", err)
	}
	return out, nil
}

// Get implements catalog.Store.
func (s *Store) Get(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, merged bool) (catalog.Template, error) {
	var t catalog.Template
	query := func(table string) string {
		if scope == catalog.ScopeTenant && merged {
			return `SELECT scope, ` + columns + ` FROM (
				SELECT 0 AS rank, 'tenant' AS scope, ` + columns + ` FROM ` + tenantTable + ` WHERE name = $1
				UNION ALL
				SELECT 1, 'platform', ` + columns + ` FROM ` + platformTable + ` WHERE name = $1
			) m ORDER BY rank LIMIT 1`
		}
		return `SELECT '` + string(scopeOf(table)) + `', ` + columns + ` FROM ` + table + ` WHERE name = $1`
	}
	var err error
	if scope == catalog.ScopeTenant {
		// One round trip instead of three: every session create reads its template.
		b := &pgx.Batch{}
		b.Queue(query(tenantTable), string(name))
		err = s.db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
			var err error
			t, err = s.scanTemplate(br.QueryRow())
			return err
		})
	} else {
		err = s.inScope(ctx, scope, true, func(ctx context.Context, tx pgx.Tx, table string) error {
			var err error
			t, err = s.scanTemplate(tx.QueryRow(ctx, query(table), string(name)))
			return err
		})
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return t, notFound(name)
	}
	if err != nil {
		return t, fmt.Errorf("reading template %s: %w", name, err)
	}
	return t, nil
}

func notFound(name catalog.TemplateName) error {
	return apperr.New(apperr.NotFound, "template %q not found", name)
}

// Create implements catalog.Store.
func (s *Store) Create(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, spec catalog.Spec, enabled bool) (catalog.Template, error) {
	d, err := derive(spec, name)
	if err != nil {
		return catalog.Template{}, err
	}
	var t catalog.Template
	err = s.inScope(ctx, scope, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		var err error
		t, err = s.scanTemplate(tx.QueryRow(ctx, `INSERT INTO `+table+` (name, enabled, display_name, category, tags, search, spec)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (name) DO NOTHING
			RETURNING '`+string(scopeOf(table))+`', `+columns,
			string(name), enabled, d.displayName, d.category, d.tags, d.search, d.spec))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return t, apperr.New(apperr.Conflict, "a %s template named %q already exists", scope, name)
	}
	if err != nil {
		return t, fmt.Errorf("creating template %s: %w", name, err)
	}
	return t, nil
}

// Update implements catalog.Store.
func (s *Store) Update(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, spec catalog.Spec, enabled *bool, version int64) (catalog.Template, error) {
	d, err := derive(spec, name)
	if err != nil {
		return catalog.Template{}, err
	}
	var t catalog.Template
	err = s.inScope(ctx, scope, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		var err error
		t, err = s.scanTemplate(tx.QueryRow(ctx, `UPDATE `+table+`
			SET display_name = $3, category = $4, tags = $5, search = $6, spec = $7,
			    enabled = coalesce($8, enabled), version = version + 1, updated_at = now()
			WHERE name = $1 AND ($2 = 0 OR version = $2)
			RETURNING '`+string(scopeOf(table))+`', `+columns,
			string(name), version, d.displayName, d.category, d.tags, d.search, d.spec, enabled))
		if errors.Is(err, pgx.ErrNoRows) {
			return s.missOrStale(ctx, tx, table, name, version)
		}
		return err
	})
	if err != nil {
		return t, wrapWrite(err, "updating", name)
	}
	return t, nil
}

// SetEnabled flips the enabled flag under the same version check as Update.
func (s *Store) SetEnabled(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, enabled bool, version int64) (catalog.Template, error) {
	var t catalog.Template
	err := s.inScope(ctx, scope, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		var err error
		t, err = s.scanTemplate(tx.QueryRow(ctx, `UPDATE `+table+`
			SET enabled = $3, version = version + 1, updated_at = now()
			WHERE name = $1 AND ($2 = 0 OR version = $2)
			RETURNING '`+string(scopeOf(table))+`', `+columns, string(name), version, enabled))
		if errors.Is(err, pgx.ErrNoRows) {
			return s.missOrStale(ctx, tx, table, name, version)
		}
		return err
	})
	if err != nil {
		return t, wrapWrite(err, "updating", name)
	}
	return t, nil
}

// Delete implements catalog.Store.
func (s *Store) Delete(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, version int64) error {
	err := s.inScope(ctx, scope, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		tag, err := tx.Exec(ctx, `DELETE FROM `+table+` WHERE name = $1 AND ($2 = 0 OR version = $2)`, string(name), version)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return s.missOrStale(ctx, tx, table, name, version)
		}
		return nil
	})
	return wrapWrite(err, "deleting", name)
}

// missOrStale explains why a guarded write touched no row.
func (s *Store) missOrStale(ctx context.Context, tx pgx.Tx, table string, name catalog.TemplateName, version int64) error {
	var current int64
	err := tx.QueryRow(ctx, `SELECT version FROM `+table+` WHERE name = $1`, string(name)).Scan(&current)
	if errors.Is(err, pgx.ErrNoRows) {
		return notFound(name)
	}
	if err != nil {
		return err
	}
	return apperr.New(apperr.Conflict, "template %q is at version %d, not %d", name, current, version)
}

func wrapWrite(err error, verb string, name catalog.TemplateName) error {
	if err == nil {
		return nil
	}
	if _, ok := apperr.As(err); ok {
		return err
	}
	return fmt.Errorf("%s template %s: %w", verb, name, err)
}

// Upsert implements catalog.Store.
func (s *Store) Upsert(ctx context.Context, scope catalog.Scope, name catalog.TemplateName, spec catalog.Spec) (catalog.Template, catalog.UpsertOutcome, error) {
	d, err := derive(spec, name)
	if err != nil {
		return catalog.Template{}, "", err
	}
	var (
		t       catalog.Template
		outcome catalog.UpsertOutcome
	)
	err = s.inScope(ctx, scope, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		lit := `'` + string(scopeOf(table)) + `'`
		// Compared as jsonb, whose equality is semantic (key order and spacing do not
		// matter), so an unchanged document is recognised however it was once encoded.
		// xmax = 0 marks a row this statement inserted rather than updated.
		var inserted bool
		row := tx.QueryRow(ctx, `INSERT INTO `+table+` AS t (name, display_name, category, tags, search, spec)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT (name) DO UPDATE
			SET display_name = EXCLUDED.display_name, category = EXCLUDED.category, tags = EXCLUDED.tags,
			    search = EXCLUDED.search, spec = EXCLUDED.spec, version = t.version + 1, updated_at = now()
			WHERE t.spec::jsonb IS DISTINCT FROM EXCLUDED.spec::jsonb
			RETURNING (xmax = 0), `+lit+`, `+columns,
			string(name), d.displayName, d.category, d.tags, d.search, d.spec)
		var spec []byte
		err := row.Scan(&inserted, &t.Scope, &t.Name, &t.Version, &t.Enabled, &spec, &t.CreatedAt, &t.UpdatedAt)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			outcome = catalog.OutcomeUnchanged
			t, err = s.scanTemplate(tx.QueryRow(ctx, `SELECT `+lit+`, `+columns+` FROM `+table+` WHERE name = $1`, string(name)))
			return err
		case err != nil:
			return err
		case inserted:
			outcome = catalog.OutcomeCreated
		default:
			outcome = catalog.OutcomeUpdated
		}
		t.Spec, err = s.specs.decode(spec)
		return err
	})
	if err != nil {
		return t, "", fmt.Errorf("importing template %s: %w", name, err)
	}
	return t, outcome, nil
}

// Seed implements catalog.Store.
func (s *Store) Seed(ctx context.Context, id string, templates []catalog.NewTemplate) (bool, error) {
	applied := false
	err := s.inScope(ctx, catalog.ScopePlatform, false, func(ctx context.Context, tx pgx.Tx, table string) error {
		// The marker row goes first: a concurrent start blocks on it until this one
		// commits, then sees the seed applied and does nothing.
		tag, err := tx.Exec(ctx, `INSERT INTO `+seedsTable+` (seed) VALUES ($1) ON CONFLICT (seed) DO NOTHING`, id)
		if err != nil || tag.RowsAffected() == 0 {
			return err
		}
		applied = true
		for _, nt := range templates {
			d, err := derive(nt.Spec, nt.Name)
			if err != nil {
				return err
			}
			enabled := nt.Enabled == nil || *nt.Enabled
			if _, err := tx.Exec(ctx, `INSERT INTO `+table+` (name, enabled, display_name, category, tags, search, spec)
				VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING`,
				string(nt.Name), enabled, d.displayName, d.category, d.tags, d.search, d.spec); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("seeding catalog %s: %w", id, err)
	}
	return applied, nil
}
