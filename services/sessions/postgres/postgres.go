// Package postgres is the sessions Store on PostgreSQL, and the SQL of the service's
// background work: folding agents' reports into sessions, the progress, idle and duration
// timers, and the listener that feeds the live stream.
//
// Sessions live in each tenant's schema and are reached only through tenantdb.InTenant, so
// the tenant always comes from the context: the caller's token, or auth.AsSystem for
// background work in one tenant. Every change to a session commits together with its
// event, its audit entry, its quota usage and its NOTIFY.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/sessions"
)

// Store implements sessions.Store.
type Store struct {
	db    *tenantdb.DB
	group group
}

var _ sessions.Store = (*Store)(nil)

// New returns a Store over db.
func New(db *tenantdb.DB) *Store { return &Store{db: db} }

// DB returns the tenant database, for the loops that share it.
func (s *Store) DB() *tenantdb.DB { return s.db }

// The columns of a session in Scan's order, before and after its last activity, which
// the statements below read in two ways.
const (
	columnsHead = `id, owner_id, name, template, template_scope, template_version, tags, cpu_millis, memory_bytes,
	agent_tags, desired, generation, phase, reason, message, phase_since, COALESCE(agent_id, ''), agent_lost_at, endpoint,
	idle_timeout_seconds, max_duration_seconds, `
	columnsTail = `, started_at, created_at, updated_at,
	COALESCE(last_agent_id, ''), dispatched_generation, assignment_generation, status_observed_at`
)

// Columns is what every session read returns, in Scan's order, with the last activity as
// stored in the row (heartbeats, wakes, the start). The scheduler's store reads sessions
// with it too; what the API shows comes from apiColumns and rowColumns.
const Columns = columnsHead + `last_activity` + columnsTail

// A session's activity as the API shows it is the later of its row's last_activity and
// the stream traffic the gateway records in session_traffic, the same activity the idle
// rule goes by (see Reap): a session that streams is active though its client sends no
// heartbeat.
const (
	// apiColumns is Columns for a read FROM withTraffic.
	apiColumns = columnsHead + `greatest(sessions.last_activity, t.last_traffic_at)` + columnsTail
	// withTraffic joins each session to its traffic row (at most one: session_id is the
	// key), keeping sessions that have none.
	withTraffic = `sessions LEFT JOIN session_traffic t ON t.session_id = sessions.id`
	// rowColumns is Columns for a statement on sessions alone, where a join cannot be
	// written (RETURNING) or would lock the traffic row too (FOR UPDATE): the traffic
	// row is looked up by its key instead.
	rowColumns = columnsHead + `greatest(last_activity, ` + lastTraffic + `)` + columnsTail
)

// Scan reads a row selected with Columns.
func Scan(row pgx.Row) (sessions.Session, error) {
	var (
		s        sessions.Session
		endpoint []byte
	)
	err := row.Scan(&s.ID, &s.Owner, &s.Name, &s.Template, &s.TemplateScope, &s.TemplateVersion, &s.Tags,
		&s.CPUMillis, &s.MemoryBytes, &s.AgentTags, &s.Desired, &s.Generation, &s.Phase, &s.Reason, &s.Message,
		&s.PhaseSince, &s.AgentID, &s.AgentLostAt, &endpoint, &s.IdleTimeoutSeconds, &s.MaxDurationSeconds,
		&s.LastActivity, &s.StartedAt, &s.CreatedAt, &s.UpdatedAt, &s.LastAgentID, &s.DispatchedGeneration,
		&s.AssignmentGeneration, &s.StatusObservedAt)
	if err != nil {
		return s, err
	}
	s.AgentLost = s.AgentLostAt != nil
	if len(endpoint) > 0 {
		s.Endpoint = new(sessions.Endpoint)
		if err := json.Unmarshal(endpoint, s.Endpoint); err != nil {
			return s, fmt.Errorf("decoding stored endpoint of %s: %w", s.ID, err)
		}
	}
	return s, nil
}

func notFound(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return apperr.New(apperr.NotFound, "session not found")
	}
	return err
}

// Tx helpers shared with the scheduler's store.

const insertEvent = `INSERT INTO session_events (session_id, kind, phase, desired, generation, reason, message, actor)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`

func eventArgs(e sessions.Event) []any {
	return []any{string(e.SessionID), e.Kind, string(e.Phase), string(e.Desired), e.Generation, e.Reason, e.Message, e.Actor}
}

// InsertEvent appends e to the session's history.
func InsertEvent(ctx context.Context, tx pgx.Tx, e sessions.Event) error {
	_, err := tx.Exec(ctx, insertEvent, eventArgs(e)...)
	return err
}

// QueueEvent is InsertEvent for a batch: the scheduler pipelines a session's statements
// so that a placement costs one round trip, not one per statement.
func QueueEvent(b *pgx.Batch, e sessions.Event) { b.Queue(insertEvent, eventArgs(e)...) }

// QueueEvents is QueueEvent for many events, in one statement.
func QueueEvents(b *pgx.Batch, es []sessions.Event) {
	if len(es) == 0 {
		return
	}
	cols := make([][]string, 7)
	gens := make([]int64, len(es))
	for i, e := range es {
		for j, v := range []string{string(e.SessionID), e.Kind, string(e.Phase), string(e.Desired), e.Reason, e.Message, e.Actor} {
			cols[j] = append(cols[j], v)
		}
		gens[i] = e.Generation
	}
	b.Queue(`INSERT INTO session_events (session_id, kind, phase, desired, generation, reason, message, actor)
		SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[], $8::text[])`,
		cols[0], cols[1], cols[2], cols[3], gens, cols[4], cols[5], cols[6])
}

// QueueNotifyChange is NotifyChange for a batch.
func QueueNotifyChange(ctx context.Context, b *pgx.Batch, s sessions.Session) {
	b.Queue(`SELECT pg_notify($1, $2)`, sessions.ChangeChannel, ChangePayload(ctx, s))
}

// QueueNotifyChanges announces many changes, with payloads from ChangePayload, in one
// statement.
func QueueNotifyChanges(b *pgx.Batch, payloads []string) {
	if len(payloads) > 0 {
		b.Queue(`SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p`, sessions.ChangeChannel, payloads)
	}
}

// Audit records a lifecycle action in the tenant's audit log.
func Audit(ctx context.Context, tx pgx.Tx, actor, action string, id sessions.ID, details map[string]any) error {
	b := &pgx.Batch{}
	if err := queueAudit(ctx, b, actor, action, id, details); err != nil {
		return err
	}
	return tx.SendBatch(ctx, b).Close()
}

// queueAudit is Audit for a batch.
func queueAudit(ctx context.Context, b *pgx.Batch, actor, action string, id sessions.ID, details map[string]any) error {
	d, err := json.Marshal(details)
	if err != nil {
		return err
	}
	traceID := ""
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		traceID = sc.TraceID().String()
	}
	b.Queue(`INSERT INTO audit_log (actor, action, target, trace_id, details) VALUES ($1, $2, $3, $4, $5::jsonb)`,
		actor, action, "session:"+string(id), traceID, string(d))
	return nil
}

// NotifyChange announces a change of s on sessions.ChangeChannel when tx commits.
func NotifyChange(ctx context.Context, tx pgx.Tx, s sessions.Session) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, sessions.ChangeChannel, ChangePayload(ctx, s))
	return err
}

// ChangePayload is the payload announcing a change of s on sessions.ChangeChannel.
func ChangePayload(ctx context.Context, s sessions.Session) string {
	tid, _ := tenant.FromContext(ctx)
	return string(tid) + ":" + string(s.ID) + ":" + s.Owner
}

// NotifyWork tells schedulers, when tx commits, that the tenant has work.
func NotifyWork(ctx context.Context, tx pgx.Tx) error {
	tid, _ := tenant.FromContext(ctx)
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, sessions.WorkChannel, string(tid))
	return err
}

// settingsSQL reads the tenant's stored session settings ($1: sessions.SettingsKey).
const settingsSQL = `SELECT value FROM settings WHERE key = $1`

// settings reads the tenant's settings with the defaults applied.
func settings(ctx context.Context, tx pgx.Tx) (sessions.Settings, error) {
	return decodeSettings(tx.QueryRow(ctx, settingsSQL, sessions.SettingsKey))
}

// decodeSettings scans a settingsSQL row and applies the defaults.
func decodeSettings(row pgx.Row) (sessions.Settings, error) {
	var st sessions.Settings
	var raw []byte
	err := row.Scan(&raw)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return st, err
	default:
		if err := json.Unmarshal(raw, &st); err != nil {
			return st, fmt.Errorf("decoding stored session settings: %w", err)
		}
	}
	return st.WithDefaults(), nil
}

// userQuotaSQL reads a user's quota override ($1: the user).
const userQuotaSQL = `SELECT max_sessions, max_cpu_millis, max_memory_bytes FROM session_user_quotas WHERE user_id = $1`

// userQuota is the user's effective quota: the tenant's per-user default with the user's
// override applied.
func userQuota(ctx context.Context, tx pgx.Tx, st sessions.Settings, user string) (sessions.Quota, error) {
	return decodeUserQuota(tx.QueryRow(ctx, userQuotaSQL, user), st)
}

// decodeUserQuota scans a userQuotaSQL row and merges it over the tenant's default.
func decodeUserQuota(row pgx.Row, st sessions.Settings) (sessions.Quota, error) {
	var o sessions.Quota
	err := row.Scan(&o.MaxSessions, &o.MaxCPUMillis, &o.MaxMemoryBytes)
	if err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return o, err
	}
	return st.User.Merge(o), nil
}

// tenantSubject is the session_usage row of the whole tenant.
const tenantSubject = ""

// charge takes a session's requests from the tenant's and the owner's quotas. Each
// conditional upsert holds its usage row until commit, so concurrent charges queue on the
// row and each sees the others' effect: the quota can never be exceeded, whatever the
// isolation level. The tenant row is always locked before the user's, by every path, so
// charges and releases cannot deadlock.
//
// The tenant's row is the one point where all of a tenant's creates queue, and it stays
// locked until commit, so the time between taking it and committing bounds the tenant's
// create rate. That is why the settings are read first, and why both upserts and the
// statements of tail (the transaction's last ones, such as its notifications) go to the
// server in one pipelined batch: one round trip, then the commit, while the row is held.
// A refused upsert leaves the later statements to run for nothing; the error rolls them
// back.
func charge(ctx context.Context, tx pgx.Tx, owner string, cpu, mem int64, tail ...queued) error {
	st, err := settings(ctx, tx)
	if err != nil {
		return err
	}
	uq, err := userQuota(ctx, tx, st, owner)
	if err != nil {
		return err
	}
	return chargeWith(ctx, tx, st, uq, owner, cpu, mem, tail...)
}

// chargeWith is charge with the tenant's settings and the owner's quota already read (in
// tx).
func chargeWith(ctx context.Context, tx pgx.Tx, st sessions.Settings, uq sessions.Quota, owner string, cpu, mem int64, tail ...queued) error {
	one := sessions.Usage{Sessions: 1, CPUMillis: cpu, MemoryBytes: mem}
	subjects := []struct {
		subject, who string
		q            sessions.Quota
	}{{tenantSubject, "the tenant's", st.Tenant}, {owner, "your", uq}}
	b := &pgx.Batch{}
	for _, c := range subjects {
		if what := one.Exceeds(c.q); what != "" {
			return apperr.New(apperr.QuotaExceeded, "this session alone exceeds %s %s quota", c.who, what)
		}
		b.Queue(`INSERT INTO session_usage AS u (subject, sessions, cpu_millis, memory_bytes) VALUES ($1, 1, $2, $3)
			ON CONFLICT (subject) DO UPDATE SET sessions = u.sessions + 1, cpu_millis = u.cpu_millis + $2, memory_bytes = u.memory_bytes + $3
			WHERE ($4::bigint IS NULL OR u.sessions + 1 <= $4)
			  AND ($5::bigint IS NULL OR u.cpu_millis + $2 <= $5)
			  AND ($6::bigint IS NULL OR u.memory_bytes + $3 <= $6)
			RETURNING sessions`, c.subject, cpu, mem, c.q.MaxSessions, c.q.MaxCPUMillis, c.q.MaxMemoryBytes)
	}
	for _, q := range tail {
		b.Queue(q.sql, q.args...)
	}
	res := tx.SendBatch(ctx, b)
	refused := -1
	for i := range subjects {
		var n int64
		err := res.QueryRow().Scan(&n)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if refused < 0 {
				refused = i
			}
		case err != nil:
			res.Close()
			return err
		}
	}
	for range tail {
		if _, err := res.Exec(); err != nil {
			res.Close()
			return err
		}
	}
	if err := res.Close(); err != nil {
		return err
	}
	if refused >= 0 {
		c := subjects[refused]
		return quotaError(ctx, tx, c.subject, c.who, c.q, one)
	}
	return nil
}

// queued is a statement for charge to send after the upserts.
type queued struct {
	sql  string
	args []any
}

// notifications are the NOTIFYs of NotifyWork and NotifyChange, for charge's tail.
func notifications(ctx context.Context, s sessions.Session) []queued {
	tid, _ := tenant.FromContext(ctx)
	return []queued{
		{`SELECT pg_notify($1, $2)`, []any{sessions.WorkChannel, string(tid)}},
		{`SELECT pg_notify($1, $2)`, []any{sessions.ChangeChannel, ChangePayload(ctx, s)}},
	}
}

// quotaError says which limit a refused charge would have broken.
func quotaError(ctx context.Context, tx pgx.Tx, subject, who string, q sessions.Quota, one sessions.Usage) error {
	var u sessions.Usage
	if err := tx.QueryRow(ctx, `SELECT sessions, cpu_millis, memory_bytes FROM session_usage WHERE subject = $1`, subject).
		Scan(&u.Sessions, &u.CPUMillis, &u.MemoryBytes); err != nil {
		return err
	}
	u = sessions.Usage{Sessions: u.Sessions + one.Sessions, CPUMillis: u.CPUMillis + one.CPUMillis, MemoryBytes: u.MemoryBytes + one.MemoryBytes}
	what := u.Exceeds(q)
	if what == "" {
		what = "session"
	}
	return apperr.New(apperr.QuotaExceeded, "starting this session would exceed %s %s quota; hibernate or stop another session first", who, what)
}

// release gives a session's requests back, in the same lock order as charge.
func release(ctx context.Context, tx pgx.Tx, owner string, cpu, mem int64) error {
	for _, subject := range []string{tenantSubject, owner} {
		if _, err := tx.Exec(ctx, `UPDATE session_usage SET sessions = GREATEST(sessions - 1, 0),
			cpu_millis = GREATEST(cpu_millis - $2, 0), memory_bytes = GREATEST(memory_bytes - $3, 0)
			WHERE subject = $1`, subject, cpu, mem); err != nil {
			return err
		}
	}
	return nil
}

// Create implements sessions.Store. Creates without an idempotency key commit in groups
// (see group); a key's claim is its own transaction's business, so those commit alone.
func (s *Store) Create(ctx context.Context, rec sessions.Record, idem *sessions.Idempotency, actor string) (sessions.Session, bool, error) {
	if idem == nil {
		out, err := s.createGrouped(ctx, rec, actor)
		return out, false, err
	}
	return s.createAlone(ctx, rec, idem, actor)
}

// queueInsert queues the insert of rec's session, returning Columns.
func queueInsert(b *pgx.Batch, rec sessions.Record) {
	n := rec.Session
	b.Queue(`INSERT INTO sessions (id, owner_id, name, template, template_scope, template_version,
			spec, cpu_millis, memory_bytes, agent_tags, tags, desired, generation, phase, reason,
			idle_timeout_seconds, max_duration_seconds)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 1, $13, $14, $15, $16)
		RETURNING `+Columns, string(n.ID), n.Owner, n.Name, n.Template, n.TemplateScope, n.TemplateVersion,
		string(rec.Spec), n.CPUMillis, n.MemoryBytes, n.AgentTags, n.Tags, string(n.Desired), string(n.Phase), n.Reason,
		n.IdleTimeoutSeconds, n.MaxDurationSeconds)
}

// queueCreated queues the creation event of the new session n.
func queueCreated(b *pgx.Batch, n sessions.Session, actor string) {
	QueueEvent(b, sessions.Event{SessionID: n.ID, Kind: sessions.EventCreated, Phase: n.Phase,
		Desired: n.Desired, Generation: 1, Reason: sessions.ReasonCreated,
		Message: fmt.Sprintf("created from template %s (%s, version %d)", n.Template, n.TemplateScope, n.TemplateVersion),
		Actor:   actor})
}

// createAlone is Create in a transaction of its own.
func (s *Store) createAlone(ctx context.Context, rec sessions.Record, idem *sessions.Idempotency, actor string) (sessions.Session, bool, error) {
	var (
		out      sessions.Session
		replayed bool
	)
	n := rec.Session
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		replayed = false
		if idem != nil {
			// Claim the key first. A concurrent request with the same key waits here on
			// the unique index until this transaction ends, then finds the stored result.
			tag, err := tx.Exec(ctx, `INSERT INTO session_idempotency (owner_id, key, request_hash) VALUES ($1, $2, $3)
				ON CONFLICT DO NOTHING`, n.Owner, idem.Key, idem.RequestHash)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				var hash string
				var sid string
				if err := tx.QueryRow(ctx, `SELECT request_hash, session_id FROM session_idempotency WHERE owner_id = $1 AND key = $2`,
					n.Owner, idem.Key).Scan(&hash, &sid); err != nil {
					return err
				}
				if hash != idem.RequestHash {
					return apperr.New(apperr.Conflict, "Idempotency-Key %q was already used with a different request", idem.Key)
				}
				// The first request's session, as it is now (it may have moved on since).
				// A deleted session is still that request's result.
				var err error
				out, err = Scan(tx.QueryRow(ctx, `SELECT `+Columns+` FROM sessions WHERE id = $1`, sid))
				replayed = true
				return notFound(err)
			}
		}
		// Everything up to the charge goes in one pipelined round trip: the row, its
		// event, the audit entry, and the settings and quota the charge checks against.
		b := &pgx.Batch{}
		queueInsert(b, rec)
		if idem != nil {
			b.Queue(`UPDATE session_idempotency SET session_id = $3 WHERE owner_id = $1 AND key = $2`, n.Owner, idem.Key, string(n.ID))
		}
		queueCreated(b, n, actor)
		if err := queueAudit(ctx, b, actor, "session.create", n.ID, map[string]any{"template": n.Template,
			"cpu_millis": n.CPUMillis, "memory_bytes": n.MemoryBytes}); err != nil {
			return err
		}
		b.Queue(settingsSQL, sessions.SettingsKey)
		b.Queue(userQuotaSQL, n.Owner)
		br := tx.SendBatch(ctx, b)
		var err error
		if out, err = Scan(br.QueryRow()); err != nil {
			br.Close()
			return fmt.Errorf("inserting session: %w", err)
		}
		for range b.Len() - 3 { // the idempotency record, the event, the audit entry
			if _, err := br.Exec(); err != nil {
				br.Close()
				return err
			}
		}
		st, err := decodeSettings(br.QueryRow())
		if err != nil {
			br.Close()
			return err
		}
		uq, err := decodeUserQuota(br.QueryRow(), st)
		if err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}
		// The charge comes last, with the notifications: its usage rows are the tenant's
		// one point of contention (see charge), so they are locked only from here to the
		// commit, not for the inserts above.
		return chargeWith(ctx, tx, st, uq, n.Owner, n.CPUMillis, n.MemoryBytes, notifications(ctx, out)...)
	})
	return out, replayed, err
}

// ownerClause limits a statement to the scope's owner; $2 must be the owner ("" for any).
const ownerClause = `($2 = '' OR owner_id = $2)`

// Get implements sessions.Store.
func (s *Store) Get(ctx context.Context, id sessions.ID, scope sessions.Scope) (sessions.Session, error) {
	var out sessions.Session
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = Scan(tx.QueryRow(ctx, `SELECT `+apiColumns+` FROM `+withTraffic+` WHERE id = $1 AND deleted_at IS NULL AND `+ownerClause,
			string(id), scope.Owner))
		return notFound(err)
	})
	return out, err
}

// listSQL is List's one statement: $1 the owner, $2 the phase, $3 the tag ("" for any),
// $4 and $5 the created_at and id to list before (NULL for the first page), $6 the limit.
// It walks sessions_live (or sessions_owner) newest first and looks each row's traffic up
// by its key, so a page costs its own rows, however many sessions or traffic rows the
// tenant has (TestListPlan).
const listSQL = `SELECT ` + apiColumns + ` FROM ` + withTraffic + `
	WHERE deleted_at IS NULL AND ($1 = '' OR owner_id = $1) AND ($2 = '' OR phase = $2) AND ($3 = '' OR $3 = ANY (tags))
	  AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5))
	ORDER BY created_at DESC, id DESC LIMIT $6`

// List implements sessions.Store.
func (s *Store) List(ctx context.Context, scope sessions.Scope, q sessions.StoreQuery) ([]sessions.Session, error) {
	owner := scope.Owner
	if owner == "" {
		owner = q.Owner
	}
	var beforeAt *time.Time
	beforeID := ""
	if q.Before != nil {
		beforeAt, beforeID = &q.Before.CreatedAt, string(q.Before.ID)
	}
	out := []sessions.Session{}
	// One round trip (see tenantdb.InTenantRead): a page is one statement.
	b := &pgx.Batch{}
	b.Queue(listSQL, owner, string(q.Phase), q.Tag, beforeAt, beforeID, q.Limit+1)
	err := s.db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (sessions.Session, error) { return Scan(r) })
		return err
	})
	return out, err
}

// Transition implements sessions.Store.
func (s *Store) Transition(ctx context.Context, id sessions.ID, scope sessions.Scope, actor string,
	decide func(sessions.Session) (sessions.Decision, error)) (sessions.Session, error) {
	var out sessions.Session
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		cur, err := Scan(tx.QueryRow(ctx, `SELECT `+rowColumns+` FROM sessions WHERE id = $1 AND deleted_at IS NULL AND `+ownerClause+` FOR UPDATE`,
			string(id), scope.Owner))
		if err != nil {
			return notFound(err)
		}
		d, err := decide(cur)
		if err != nil {
			return err
		}
		if d.Noop {
			out = cur
			return nil
		}
		out, err = ApplyDecision(ctx, tx, cur, d, actor)
		return err
	})
	return out, err
}

// ApplyDecision writes decision d about the locked session cur: usage, the row, its event,
// the audit entry and the notifications. The scheduler uses it too.
func ApplyDecision(ctx context.Context, tx pgx.Tx, cur sessions.Session, d sessions.Decision, actor string) (sessions.Session, error) {
	if d.Charge {
		if err := charge(ctx, tx, cur.Owner, cur.CPUMillis, cur.MemoryBytes); err != nil {
			return cur, err
		}
	}
	if d.Release {
		if err := release(ctx, tx, cur.Owner, cur.CPUMillis, cur.MemoryBytes); err != nil {
			return cur, err
		}
	}
	gen := cur.Generation
	if d.Bump {
		gen++
	}
	dispatched := cur.DispatchedGeneration
	if d.Settled {
		dispatched = gen
	}
	next, err := Scan(tx.QueryRow(ctx, `UPDATE sessions SET desired = $2, generation = $3, dispatched_generation = $4,
			phase = $5, reason = $6, message = $7,
			phase_since = CASE WHEN phase <> $5 THEN now() ELSE phase_since END,
			endpoint = CASE WHEN $5 = 'Running' THEN endpoint END,
			last_activity = CASE WHEN $8 THEN now() ELSE last_activity END,
			deleted_at = CASE WHEN $9 THEN now() ELSE deleted_at END,
			updated_at = now()
		WHERE id = $1 RETURNING `+rowColumns, string(cur.ID), string(d.Desired), gen, dispatched,
		string(d.Phase), d.Reason, d.Message, d.Charge, d.Delete))
	if err != nil {
		return cur, err
	}
	kind := sessions.EventDesired
	if d.Delete {
		kind = sessions.EventDeleted
	}
	if err := InsertEvent(ctx, tx, sessions.Event{SessionID: cur.ID, Kind: kind, Phase: next.Phase, Desired: next.Desired,
		Generation: next.Generation, Reason: d.Reason, Message: d.Message, Actor: actor}); err != nil {
		return next, err
	}
	if err := Audit(ctx, tx, actor, "session."+string(d.Action), cur.ID, map[string]any{
		"from_desired": cur.Desired, "desired": next.Desired, "phase": next.Phase, "reason": d.Reason}); err != nil {
		return next, err
	}
	if next.Generation > next.DispatchedGeneration {
		if err := NotifyWork(ctx, tx); err != nil {
			return next, err
		}
	}
	return next, NotifyChange(ctx, tx, next)
}

// SetTags implements sessions.Store.
func (s *Store) SetTags(ctx context.Context, id sessions.ID, scope sessions.Scope, tags []string, actor string) (sessions.Session, error) {
	var out sessions.Session
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = Scan(tx.QueryRow(ctx, `UPDATE sessions SET tags = $3, updated_at = now()
			WHERE id = $1 AND deleted_at IS NULL AND `+ownerClause+` RETURNING `+rowColumns, string(id), scope.Owner, tags))
		if err != nil {
			return notFound(err)
		}
		if err := InsertEvent(ctx, tx, sessions.Event{SessionID: id, Kind: sessions.EventTags, Phase: out.Phase,
			Desired: out.Desired, Generation: out.Generation, Actor: actor}); err != nil {
			return err
		}
		if err := Audit(ctx, tx, actor, "session.tags", id, map[string]any{"tags": tags}); err != nil {
			return err
		}
		return NotifyChange(ctx, tx, out)
	})
	return out, err
}

// Events implements sessions.Store.
func (s *Store) Events(ctx context.Context, id sessions.ID, scope sessions.Scope) ([]sessions.Event, error) {
	out := []sessions.Event{}
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND deleted_at IS NULL AND `+ownerClause+`)`,
			string(id), scope.Owner).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return apperr.New(apperr.NotFound, "session not found")
		}
		rows, err := tx.Query(ctx, `SELECT id, session_id, at, kind, phase, desired, generation, reason, message, actor
			FROM session_events WHERE session_id = $1 ORDER BY id`, string(id))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (sessions.Event, error) {
			var e sessions.Event
			err := r.Scan(&e.ID, &e.SessionID, &e.At, &e.Kind, &e.Phase, &e.Desired, &e.Generation, &e.Reason, &e.Message, &e.Actor)
			return e, err
		})
		return err
	})
	return out, err
}

// Touch implements sessions.Store.
func (s *Store) Touch(ctx context.Context, id sessions.ID, scope sessions.Scope) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE sessions SET last_activity = now() WHERE id = $1 AND deleted_at IS NULL AND `+ownerClause,
			string(id), scope.Owner)
		if err == nil && tag.RowsAffected() == 0 {
			return apperr.New(apperr.NotFound, "session not found")
		}
		return err
	})
}

// RecordActivity sets the last activity of the context tenant's sessions ids to now: the
// gateway calls it (as auth.AsSystem for the tenant) for sessions that carried traffic.
// Unknown ids are ignored.
func (s *Store) RecordActivity(ctx context.Context, ids []sessions.ID) error {
	strs := make([]string, len(ids))
	for i, id := range ids {
		strs[i] = string(id)
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE sessions SET last_activity = now() WHERE id = ANY ($1) AND deleted_at IS NULL`, strs)
		return err
	})
}

// Settings implements sessions.Store.
func (s *Store) Settings(ctx context.Context) (sessions.Settings, error) {
	var out sessions.Settings
	// One round trip: every create reads them (see tenantdb.InTenantRead).
	b := &pgx.Batch{}
	b.Queue(settingsSQL, sessions.SettingsKey)
	err := s.db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
		var err error
		out, err = decodeSettings(br.QueryRow())
		return err
	})
	return out, err
}

// SetSettings implements sessions.Store.
func (s *Store) SetSettings(ctx context.Context, st sessions.Settings, actor string) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO settings (key, value) VALUES ($1, $2::jsonb)
			ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()`, sessions.SettingsKey, string(b)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO audit_log (actor, action, target, details) VALUES ($1, 'sessions.settings', 'settings:sessions', $2::jsonb)`,
			actor, string(b))
		return err
	})
}

// SetUserQuota implements sessions.Store.
func (s *Store) SetUserQuota(ctx context.Context, user string, q sessions.Quota, actor string) error {
	b, err := json.Marshal(q)
	if err != nil {
		return err
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO session_user_quotas (user_id, max_sessions, max_cpu_millis, max_memory_bytes)
			VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET max_sessions = EXCLUDED.max_sessions,
			max_cpu_millis = EXCLUDED.max_cpu_millis, max_memory_bytes = EXCLUDED.max_memory_bytes, updated_at = now()`,
			user, q.MaxSessions, q.MaxCPUMillis, q.MaxMemoryBytes); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO audit_log (actor, action, target, details) VALUES ($1, 'sessions.user_quota', $2, $3::jsonb)`,
			actor, "user:"+user, string(b))
		return err
	})
}
