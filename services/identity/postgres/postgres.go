// Package postgres is identity's Store on PostgreSQL. Tenant data is reached only through
// tenantdb.InTenant, so every tenant-scoped method runs inside the schema of the tenant in
// its context and cannot run without one; platform tables are named with their schema.
// All SQL is parameterised.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/identity"
)

// Store implements identity.Store.
type Store struct {
	db   *tenantdb.DB
	pool *pgxpool.Pool
}

var _ identity.Store = (*Store)(nil)

// New returns a Store over db, whose pool also serves the platform schema.
func New(db *tenantdb.DB) *Store { return &Store{db: db, pool: db.Pool()} }

func uniqueViolation(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505"
}

// invalidText reports PostgreSQL's refusal of a malformed uuid: an id from a URL that is
// not a UUID names nothing, so it is a 404 like any other unknown id.
func invalidText(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "22P02"
}

const userColumns = `id::text, email, role, status, created_at, updated_at, last_login_at`

func scanUser(row pgx.Row, extra ...any) (identity.User, error) {
	var u identity.User
	var id, role, status string
	dest := append([]any{&id, &u.Email, &role, &status, &u.CreatedAt, &u.UpdatedAt, &u.LastLoginAt}, extra...)
	err := row.Scan(dest...)
	u.ID, u.Role, u.Status = identity.UserID(id), auth.Role(role), identity.UserStatus(status)
	return u, err
}

func notFoundUser(err error) error {
	if errors.Is(err, pgx.ErrNoRows) || invalidText(err) {
		return apperr.New(apperr.NotFound, "user not found")
	}
	return err
}

// CreateUser implements identity.Store.
func (s *Store) CreateUser(ctx context.Context, email, hash string, role auth.Role) (identity.User, error) {
	var u identity.User
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		u, err = scanUser(tx.QueryRow(ctx, `INSERT INTO users (email, password_hash, role) VALUES ($1, $2, $3)
			RETURNING `+userColumns, email, hash, string(role)))
		return err
	})
	if uniqueViolation(err) {
		return identity.User{}, apperr.Validation("a user with this email exists", apperr.Field("email", "is taken"))
	}
	return u, err
}

// UserByEmail implements identity.Store.
func (s *Store) UserByEmail(ctx context.Context, email string) (identity.User, string, error) {
	var u identity.User
	var hash string
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		u, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+`, password_hash FROM users WHERE lower(email) = lower($1)`, email), &hash)
		return err
	})
	return u, hash, notFoundUser(err)
}

// User implements identity.Store.
func (s *Store) User(ctx context.Context, id identity.UserID) (identity.User, error) {
	var u identity.User
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		u, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1::uuid`, string(id)))
		return err
	})
	return u, notFoundUser(err)
}

// Users implements identity.Store.
func (s *Store) Users(ctx context.Context) ([]identity.User, error) {
	var users []identity.User
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+userColumns+` FROM users ORDER BY email`)
		if err != nil {
			return err
		}
		users, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (identity.User, error) { return scanUser(r) })
		return err
	})
	if users == nil {
		users = []identity.User{}
	}
	return users, err
}

// lockUser reads a user FOR UPDATE, and with it every active owner, so two admins demoting
// the last two owners at once cannot both succeed.
func lockUser(ctx context.Context, tx pgx.Tx, id identity.UserID) (identity.User, int, error) {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM users WHERE role = 'owner' AND status = 'active' FOR UPDATE`); err != nil {
		return identity.User{}, 0, err
	}
	u, err := scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1::uuid FOR UPDATE`, string(id)))
	if err != nil {
		return u, 0, notFoundUser(err)
	}
	var owners int
	err = tx.QueryRow(ctx, `SELECT count(*) FROM users WHERE role = 'owner' AND status = 'active'`).Scan(&owners)
	return u, owners, err
}

var errLastOwner = apperr.New(apperr.PreconditionFailed, "the tenant must keep at least one active owner")

// UpdateUser implements identity.Store.
func (s *Store) UpdateUser(ctx context.Context, id identity.UserID, p identity.UserPatch, check func(identity.User) error) (identity.User, error) {
	var u identity.User
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		cur, owners, err := lockUser(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := check(cur); err != nil {
			return err
		}
		next := cur
		if p.Role != nil {
			next.Role = *p.Role
		}
		if p.Status != nil {
			next.Status = *p.Status
		}
		activeOwner := func(u identity.User) bool { return u.Role == auth.RoleOwner && u.Status == identity.UserActive }
		if activeOwner(cur) && !activeOwner(next) && owners <= 1 {
			return errLastOwner
		}
		u, err = scanUser(tx.QueryRow(ctx, `UPDATE users SET role = $2, status = $3, updated_at = now()
			WHERE id = $1::uuid RETURNING `+userColumns, string(id), string(next.Role), string(next.Status)))
		return err
	})
	return u, err
}

// DeleteUser implements identity.Store.
func (s *Store) DeleteUser(ctx context.Context, id identity.UserID, check func(identity.User) error) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		cur, owners, err := lockUser(ctx, tx, id)
		if err != nil {
			return err
		}
		if err := check(cur); err != nil {
			return err
		}
		if cur.Role == auth.RoleOwner && cur.Status == identity.UserActive && owners <= 1 {
			return errLastOwner
		}
		_, err = tx.Exec(ctx, `DELETE FROM users WHERE id = $1::uuid`, string(id))
		return err
	})
}

// RecordLogin implements identity.Store.
func (s *Store) RecordLogin(ctx context.Context, id identity.UserID) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE users SET last_login_at = now() WHERE id = $1::uuid`, string(id))
		return err
	})
}

func auditArgs(e identity.AuditEntry) ([]any, error) {
	details := e.Details
	if details == nil {
		details = map[string]any{}
	}
	b, err := json.Marshal(details)
	if err != nil {
		return nil, err
	}
	var ip *string
	if a, err := netip.ParseAddr(e.ClientIP); err == nil {
		s := a.String()
		ip = &s
	}
	outcome := "failure"
	if e.Success {
		outcome = "success"
	}
	return []any{e.Actor, e.Action, e.Target, outcome, ip, e.TraceID, string(b)}, nil
}

// Audit implements identity.Store.
func (s *Store) Audit(ctx context.Context, e identity.AuditEntry) error {
	args, err := auditArgs(e)
	if err != nil {
		return err
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO audit_log (actor, action, target, outcome, client_ip, trace_id, details)
			VALUES ($1, $2, $3, $4, $5::inet, $6, $7::jsonb)`, args...)
		return err
	})
}

// PlatformAudit implements identity.Store.
func (s *Store) PlatformAudit(ctx context.Context, e identity.AuditEntry) error {
	args, err := auditArgs(e)
	if err != nil {
		return err
	}
	_, err = s.pool.Exec(ctx, `INSERT INTO platform.audit_log (actor, action, target, outcome, client_ip, trace_id, details)
		VALUES ($1, $2, $3, $4, $5::inet, $6, $7::jsonb)`, args...)
	return err
}

// CreateRefreshToken implements identity.Store.
func (s *Store) CreateRefreshToken(ctx context.Context, user identity.UserID, hash []byte, expires time.Time) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at)
			VALUES (gen_random_uuid(), $1::uuid, $2, $3)`, string(user), hash, expires)
		return err
	})
}

// RotateRefreshToken implements identity.Store.
func (s *Store) RotateRefreshToken(ctx context.Context, old, next []byte, expires time.Time) (identity.User, error) {
	var u identity.User
	reused := false
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var id, family, userID string
		var rotated, revoked *time.Time
		var expiresAt time.Time
		// FOR UPDATE serialises two presentations of one token: the second sees rotated_at.
		err := tx.QueryRow(ctx, `SELECT id::text, family_id::text, user_id::text, expires_at, rotated_at, revoked_at
			FROM refresh_tokens WHERE token_hash = $1 FOR UPDATE`, old).Scan(&id, &family, &userID, &expiresAt, &rotated, &revoked)
		if errors.Is(err, pgx.ErrNoRows) {
			return errBadRefresh
		}
		if err != nil {
			return err
		}
		if revoked != nil {
			return errBadRefresh
		}
		if rotated != nil {
			// Reuse: the token was stolen, or its holder is confused. Either way nobody
			// holding any token of this family can be trusted. Commit the revocation.
			reused = true
			_, err := tx.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1::uuid AND revoked_at IS NULL`, family)
			return err
		}
		if !time.Now().Before(expiresAt) {
			return errBadRefresh
		}
		u, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1::uuid`, userID))
		if errors.Is(err, pgx.ErrNoRows) {
			return errBadRefresh
		}
		if err != nil {
			return err
		}
		if u.Status != identity.UserActive {
			return errBadRefresh
		}
		if _, err := tx.Exec(ctx, `UPDATE refresh_tokens SET rotated_at = now() WHERE id = $1::uuid`, id); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO refresh_tokens (family_id, user_id, token_hash, expires_at)
			VALUES ($1::uuid, $2::uuid, $3, $4)`, family, userID, next, expires)
		return err
	})
	if err == nil && reused {
		return identity.User{}, identity.ErrTokenReused
	}
	return u, err
}

var errBadRefresh = apperr.New(apperr.Unauthenticated, "invalid or expired refresh token")

// RevokeRefreshFamily implements identity.Store.
func (s *Store) RevokeRefreshFamily(ctx context.Context, hash []byte) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = now()
			WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1) AND revoked_at IS NULL`, hash)
		return err
	})
}

// RevokeUserRefreshTokens implements identity.Store.
func (s *Store) RevokeUserRefreshTokens(ctx context.Context, user identity.UserID) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1::uuid AND revoked_at IS NULL`, string(user))
		return err
	})
}

const apiTokenColumns = `id::text, user_id::text, name, scopes, created_at, expires_at, last_used_at, revoked_at`

func scanAPIToken(row pgx.Row) (identity.APIToken, error) {
	var t identity.APIToken
	var id, user string
	err := row.Scan(&id, &user, &t.Name, &t.Scopes, &t.CreatedAt, &t.ExpiresAt, &t.LastUsedAt, &t.RevokedAt)
	t.ID, t.UserID = identity.TokenID(id), identity.UserID(user)
	if t.Scopes == nil {
		t.Scopes = []string{}
	}
	return t, err
}

// CreateAPIToken implements identity.Store.
func (s *Store) CreateAPIToken(ctx context.Context, t identity.APIToken, hash []byte) (identity.APIToken, error) {
	var out identity.APIToken
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = scanAPIToken(tx.QueryRow(ctx, `INSERT INTO api_tokens (user_id, name, scopes, token_hash, expires_at)
			VALUES ($1::uuid, $2, $3, $4, $5) RETURNING `+apiTokenColumns, string(t.UserID), t.Name, t.Scopes, hash, t.ExpiresAt))
		return err
	})
	return out, err
}

// APITokens implements identity.Store.
func (s *Store) APITokens(ctx context.Context, user identity.UserID) ([]identity.APIToken, error) {
	var out []identity.APIToken
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+apiTokenColumns+` FROM api_tokens WHERE user_id = $1::uuid ORDER BY created_at`, string(user))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (identity.APIToken, error) { return scanAPIToken(r) })
		return err
	})
	if out == nil {
		out = []identity.APIToken{}
	}
	return out, err
}

// RevokeAPIToken implements identity.Store.
func (s *Store) RevokeAPIToken(ctx context.Context, user identity.UserID, id identity.TokenID) error {
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now())
			WHERE id = $1::uuid AND user_id = $2::uuid`, string(id), string(user))
		if err == nil && tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) || invalidText(err) {
		return apperr.New(apperr.NotFound, "token not found")
	}
	return err
}

// UseAPIToken implements identity.Store.
func (s *Store) UseAPIToken(ctx context.Context, hash []byte) (identity.APIToken, identity.User, error) {
	var t identity.APIToken
	var u identity.User
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		t, err = scanAPIToken(tx.QueryRow(ctx, `UPDATE api_tokens SET last_used_at = now()
			WHERE token_hash = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())
			RETURNING `+apiTokenColumns, hash))
		if err != nil {
			return err
		}
		u, err = scanUser(tx.QueryRow(ctx, `SELECT `+userColumns+` FROM users WHERE id = $1::uuid AND status = 'active'`, string(t.UserID)))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return identity.APIToken{}, identity.User{}, apperr.New(apperr.Unauthenticated, "invalid or expired API token")
	}
	return t, u, err
}

const enrollmentColumns = `id::text, name, tags, coalesce(created_by::text, ''), created_at, expires_at, used_at, revoked_at`

func scanEnrollment(row pgx.Row) (identity.EnrollmentToken, error) {
	var t identity.EnrollmentToken
	var id, by string
	err := row.Scan(&id, &t.Name, &t.Tags, &by, &t.CreatedAt, &t.ExpiresAt, &t.UsedAt, &t.RevokedAt)
	t.ID, t.CreatedBy = identity.TokenID(id), identity.UserID(by)
	if t.Tags == nil {
		t.Tags = []string{}
	}
	return t, err
}

// CreateEnrollmentToken implements identity.Store.
func (s *Store) CreateEnrollmentToken(ctx context.Context, t identity.EnrollmentToken, hash []byte) (identity.EnrollmentToken, error) {
	var out identity.EnrollmentToken
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = scanEnrollment(tx.QueryRow(ctx, `INSERT INTO enrollment_tokens (name, tags, token_hash, created_by, expires_at)
			VALUES ($1, $2, $3, nullif($4, '')::uuid, $5) RETURNING `+enrollmentColumns, t.Name, t.Tags, hash, string(t.CreatedBy), t.ExpiresAt))
		return err
	})
	return out, err
}

// EnrollmentTokens implements identity.Store.
func (s *Store) EnrollmentTokens(ctx context.Context) ([]identity.EnrollmentToken, error) {
	var out []identity.EnrollmentToken
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+enrollmentColumns+` FROM enrollment_tokens ORDER BY created_at`)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (identity.EnrollmentToken, error) { return scanEnrollment(r) })
		return err
	})
	if out == nil {
		out = []identity.EnrollmentToken{}
	}
	return out, err
}

// RevokeEnrollmentToken implements identity.Store.
func (s *Store) RevokeEnrollmentToken(ctx context.Context, id identity.TokenID) error {
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE enrollment_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1::uuid`, string(id))
		if err == nil && tag.RowsAffected() == 0 {
			return pgx.ErrNoRows
		}
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) || invalidText(err) {
		return apperr.New(apperr.NotFound, "enrollment token not found")
	}
	return err
}

// ConsumeEnrollmentToken implements identity.Store.
func (s *Store) ConsumeEnrollmentToken(ctx context.Context, hash []byte) (identity.EnrollmentToken, error) {
	var out identity.EnrollmentToken
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		// One UPDATE with every condition in its WHERE: two agents racing with one token
		// cannot both match, because the second waits for the first's row lock and then
		// re-checks used_at.
		out, err = scanEnrollment(tx.QueryRow(ctx, `UPDATE enrollment_tokens SET used_at = now()
			WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now()
			RETURNING `+enrollmentColumns, hash))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return identity.EnrollmentToken{}, apperr.New(apperr.Unauthenticated, "invalid or expired enrollment token")
	}
	return out, err
}

// Throttled implements identity.Store.
func (s *Store) Throttled(ctx context.Context, keys ...string) (time.Time, error) {
	var until *time.Time
	err := s.pool.QueryRow(ctx, `SELECT max(locked_until) FROM platform.login_throttle
		WHERE key = ANY($1) AND locked_until > now()`, keys).Scan(&until)
	if err != nil || until == nil {
		return time.Time{}, err
	}
	return *until, nil
}

// RecordFailure implements identity.Store. The whole update is one statement, so replicas
// counting failures for one key at once never lose a count.
func (s *Store) RecordFailure(ctx context.Context, key string, threshold int, base, maxLock, window time.Duration) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO platform.login_throttle AS t (key, failures, locked_until, updated_at)
		VALUES ($1, 1, CASE WHEN $2 <= 1 THEN now() + make_interval(secs => $3) END, now())
		ON CONFLICT (key) DO UPDATE SET
			failures = CASE WHEN t.updated_at < now() - make_interval(secs => $5) AND (t.locked_until IS NULL OR t.locked_until < now())
				THEN 1 ELSE t.failures + 1 END,
			locked_until = CASE
				WHEN (CASE WHEN t.updated_at < now() - make_interval(secs => $5) AND (t.locked_until IS NULL OR t.locked_until < now())
					THEN 1 ELSE t.failures + 1 END) >= $2
				THEN now() + make_interval(secs => least($4, $3 * power(2, least(30,
					(CASE WHEN t.updated_at < now() - make_interval(secs => $5) AND (t.locked_until IS NULL OR t.locked_until < now())
						THEN 1 ELSE t.failures + 1 END) - $2))))
				ELSE t.locked_until END,
			updated_at = now()`,
		key, threshold, base.Seconds(), maxLock.Seconds(), window.Seconds())
	return err
}

// ResetFailures implements identity.Store.
func (s *Store) ResetFailures(ctx context.Context, key string) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM platform.login_throttle WHERE key = $1`, key)
	return err
}

// EnsureOperator implements identity.Store.
func (s *Store) EnsureOperator(ctx context.Context, email, hash string) (bool, error) {
	tag, err := s.pool.Exec(ctx, `INSERT INTO platform.operators (email, password_hash) VALUES ($1, $2)
		ON CONFLICT ((lower(email))) DO NOTHING`, email, hash)
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
}

// OperatorByEmail implements identity.Store.
func (s *Store) OperatorByEmail(ctx context.Context, email string) (identity.Operator, string, error) {
	var o identity.Operator
	var hash, status string
	err := s.pool.QueryRow(ctx, `SELECT id::text, email, status, password_hash FROM platform.operators
		WHERE lower(email) = lower($1)`, email).Scan(&o.ID, &o.Email, &status, &hash)
	o.Status = identity.UserStatus(status)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, "", apperr.New(apperr.NotFound, "operator not found")
	}
	return o, hash, err
}

const keyColumns = `kid, public_key, private_key, created_at, activates_at, retired_at`

func scanKey(row pgx.Row) (identity.SigningKey, error) {
	var k identity.SigningKey
	err := row.Scan(&k.KID, &k.PublicKey, &k.PrivateKey, &k.CreatedAt, &k.ActivatesAt, &k.RetiredAt)
	return k, err
}

// SigningKeys implements identity.Store.
func (s *Store) SigningKeys(ctx context.Context) ([]identity.SigningKey, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+keyColumns+` FROM platform.signing_keys ORDER BY activates_at DESC, created_at DESC`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (identity.SigningKey, error) { return scanKey(r) })
}

// RotateSigningKey implements identity.Store. A transaction-scoped advisory lock makes
// replicas that decide to rotate at the same moment take turns; the second then sees the
// first's key as the newest and, for a scheduled rotation, finds nothing due.
func (s *Store) RotateSigningKey(ctx context.Context, plan func(newest *identity.SigningKey) (identity.SigningKey, bool)) (bool, error) {
	done := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('streamspace.identity:signing_keys', 0))`); err != nil {
			return err
		}
		var newest *identity.SigningKey
		k, err := scanKey(tx.QueryRow(ctx, `SELECT `+keyColumns+` FROM platform.signing_keys ORDER BY created_at DESC LIMIT 1`))
		switch {
		case err == nil:
			newest = &k
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		next, ok := plan(newest)
		if !ok {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE platform.signing_keys SET retired_at = $1 WHERE retired_at IS NULL`, next.ActivatesAt); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO platform.signing_keys (kid, algorithm, public_key, private_key, created_at, activates_at)
			VALUES ($1, 'EdDSA', $2, $3, $4, $5)`, next.KID, next.PublicKey, next.PrivateKey, next.CreatedAt, next.ActivatesAt); err != nil {
			return fmt.Errorf("inserting signing key: %w", err)
		}
		done = true
		return nil
	})
	return done, err
}

// PruneSigningKeys implements identity.Store.
func (s *Store) PruneSigningKeys(ctx context.Context, cutoff time.Time) error {
	_, err := s.pool.Exec(ctx, `DELETE FROM platform.signing_keys WHERE retired_at < $1`, cutoff)
	return err
}
