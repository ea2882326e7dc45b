// Package postgres is the agent-gateway's Store on PostgreSQL.
//
// Agents, assignments and statuses live in each tenant's schema and are reached only
// through tenantdb.InTenant, so the tenant always comes from the context: a user's token,
// or, for an agent's own reports, auth.AsSystem with the tenant its certificate names.
// The agent directory and the CA live in the platform schema and are always named with it.
// Deleting an agent touches both in one tenant transaction, so a revoked agent can never
// linger in the directory.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"maps"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

// Thresholds age an agent's state on every read: a replica that died without marking
// its agents offline cannot leave them online.
type Thresholds struct {
	DegradedAfter time.Duration
	OfflineAfter  time.Duration
}

// Store implements gateway.Store.
type Store struct {
	db *tenantdb.DB
	th Thresholds
}

var _ gateway.Store = (*Store)(nil)

// New returns a Store over db. Zero thresholds take 30 s and 60 s.
func New(db *tenantdb.DB, th Thresholds) *Store {
	if th.DegradedAfter <= 0 {
		th.DegradedAfter = 30 * time.Second
	}
	if th.OfflineAfter <= 0 {
		th.OfflineAfter = 60 * time.Second
	}
	return &Store{db: db, th: th}
}

// agentCols selects an agent; $1 and $2 must be the degraded and offline thresholds in
// seconds. The state the owner wrote is aged by last_seen here.
const agentCols = `id, name, tags, reported_tags, version, facts,
	cpu_allocatable_millis, cpu_used_millis, memory_allocatable_bytes, memory_used_bytes, sessions, max_sessions,
	CASE WHEN state = 'offline' OR last_seen IS NULL THEN 'offline'
	     WHEN last_seen > now() - make_interval(secs => $1) THEN state
	     WHEN last_seen > now() - make_interval(secs => $2) THEN 'degraded'
	     ELSE 'offline' END,
	draining, last_seen, gateway_id, cert_serial, cert_not_after, created_at, updated_at`

func (s *Store) ages() (float64, float64) {
	return s.th.DegradedAfter.Seconds(), s.th.OfflineAfter.Seconds()
}

func scanAgent(row pgx.Row, tid tenant.ID) (gateway.Agent, error) {
	var a gateway.Agent
	var facts []byte
	err := row.Scan(&a.ID, &a.Name, &a.Tags, &a.ReportedTags, &a.Version, &facts,
		&a.Capacity.CPUAllocatableMillis, &a.Capacity.CPUUsedMillis, &a.Capacity.MemoryAllocatableBytes,
		&a.Capacity.MemoryUsedBytes, &a.Capacity.Sessions, &a.Capacity.MaxSessions,
		&a.State, &a.Draining, &a.LastSeen, &a.Gateway, &a.CertSerial, &a.CertNotAfter, &a.CreatedAt, &a.UpdatedAt)
	if err != nil {
		return a, err
	}
	a.Tenant = tid
	a.Facts = map[string]string{}
	if len(facts) > 0 {
		_ = json.Unmarshal(facts, &a.Facts)
	}
	return a, nil
}

func notFound(err error, what string) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return apperr.New(apperr.NotFound, "no such %s", what)
	}
	return err
}

func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func currentTenant(ctx context.Context) tenant.ID {
	id, _ := tenant.FromContext(ctx)
	return id
}

// CreateAgent implements gateway.Store.
func (s *Store) CreateAgent(ctx context.Context, a gateway.Agent, tokenID string) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tags := a.Tags
		if tags == nil {
			tags = []string{}
		}
		if _, err := tx.Exec(ctx, `INSERT INTO agents (id, name, tags, enrollment_token_id) VALUES ($1, $2, $3, $4)`,
			string(a.ID), a.Name, tags, tokenID); err != nil {
			return fmt.Errorf("inserting agent: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO platform.agent_directory (agent_id, tenant_id) VALUES ($1, $2)`,
			string(a.ID), string(currentTenant(ctx))); err != nil {
			return fmt.Errorf("inserting directory row: %w", err)
		}
		return nil
	})
}

// SetCert implements gateway.Store.
func (s *Store) SetCert(ctx context.Context, id gateway.AgentID, serial string, notAfter time.Time) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE agents SET cert_serial = $2, cert_not_after = $3, updated_at = now() WHERE id = $1`,
			string(id), serial, notAfter)
		if err == nil && tag.RowsAffected() == 0 {
			return apperr.New(apperr.NotFound, "no such agent")
		}
		return err
	})
}

// Agent implements gateway.Store.
func (s *Store) Agent(ctx context.Context, id gateway.AgentID) (gateway.Agent, error) {
	var out gateway.Agent
	d, o := s.ages()
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = scanAgent(tx.QueryRow(ctx, `SELECT `+agentCols+` FROM agents WHERE id = $3`, d, o, string(id)), currentTenant(ctx))
		return notFound(err, "agent")
	})
	return out, err
}

// Agents implements gateway.Store.
func (s *Store) Agents(ctx context.Context) ([]gateway.Agent, error) {
	out := []gateway.Agent{}
	d, o := s.ages()
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+agentCols+` FROM agents ORDER BY name, id`, d, o)
		if err != nil {
			return err
		}
		tid := currentTenant(ctx)
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.Agent, error) { return scanAgent(r, tid) })
		return err
	})
	return out, err
}

// UpdateAgent implements gateway.Store.
func (s *Store) UpdateAgent(ctx context.Context, id gateway.AgentID, p gateway.AgentPatch) (gateway.Agent, error) {
	var out gateway.Agent
	d, o := s.ages()
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var tags []string
		if p.Tags != nil {
			tags = *p.Tags
			if tags == nil {
				tags = []string{}
			}
		}
		var err error
		out, err = scanAgent(tx.QueryRow(ctx, `UPDATE agents SET
			name = COALESCE($4, name), tags = COALESCE($5, tags), draining = COALESCE($6, draining), updated_at = now()
			WHERE id = $3 RETURNING `+agentCols, d, o, string(id), p.Name, tags, p.Draining), currentTenant(ctx))
		return notFound(err, "agent")
	})
	return out, err
}

// DeleteAgent implements gateway.Store.
func (s *Store) DeleteAgent(ctx context.Context, id gateway.AgentID) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM agents WHERE id = $1`, string(id))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return apperr.New(apperr.NotFound, "no such agent")
		}
		// The tenant check keeps a wrong agent id from touching another tenant's row, even
		// though agent ids are globally unique.
		if _, err := tx.Exec(ctx, `DELETE FROM platform.agent_directory WHERE agent_id = $1 AND tenant_id = $2`,
			string(id), string(currentTenant(ctx))); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, gateway.AgentChannel(id), gateway.NotifyRevoked)
		return err
	})
}

// DirectoryTenant implements gateway.Store.
func (s *Store) DirectoryTenant(ctx context.Context, id gateway.AgentID) (tenant.ID, error) {
	var tid string
	err := s.db.Pool().QueryRow(ctx, `SELECT d.tenant_id FROM platform.agent_directory d
		JOIN platform.tenants t ON t.id = d.tenant_id
		WHERE d.agent_id = $1 AND t.status = 'active'`, string(id)).Scan(&tid)
	return tenant.ID(tid), notFound(err, "agent")
}

// Claim implements gateway.Store.
func (s *Store) Claim(ctx context.Context, id gateway.AgentID, o gateway.Owner) error {
	return pgx.BeginFunc(ctx, s.db.Pool(), func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE platform.agent_directory
			SET owner_gateway = $2, owner_conn = $3, owner_since = now(), owner_heartbeat = now()
			WHERE agent_id = $1`, string(id), o.Gateway, o.Conn)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return apperr.New(apperr.NotFound, "no such agent")
		}
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, gateway.AgentChannel(id), gateway.NotifyOwner+o.Conn)
		return err
	})
}

// RenewOwnership implements gateway.Store.
func (s *Store) RenewOwnership(ctx context.Context, gw string, owned map[gateway.AgentID]string) ([]gateway.AgentID, error) {
	if len(owned) == 0 {
		return nil, nil
	}
	ids := make([]string, 0, len(owned))
	conns := make([]string, 0, len(owned))
	for id, c := range owned {
		ids = append(ids, string(id))
		conns = append(conns, c)
	}
	rows, err := s.db.Pool().Query(ctx, `UPDATE platform.agent_directory d SET owner_heartbeat = now()
		FROM unnest($1::text[], $2::text[]) AS o(agent_id, conn)
		WHERE d.agent_id = o.agent_id AND d.owner_conn = o.conn AND d.owner_gateway = $3
		RETURNING d.agent_id`, ids, conns, gw)
	if err != nil {
		return nil, err
	}
	kept, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	return missing(kept, maps.Keys(owned)), nil
}

// missing returns the ids that are not in kept, the rows a fenced statement changed.
func missing(kept []string, ids iter.Seq[gateway.AgentID]) []gateway.AgentID {
	still := make(map[string]bool, len(kept))
	for _, k := range kept {
		still[k] = true
	}
	var lost []gateway.AgentID
	for id := range ids {
		if !still[string(id)] {
			lost = append(lost, id)
		}
	}
	return lost
}

// fence is the condition under which a connection may write about its agent.
const fence = `EXISTS (SELECT 1 FROM platform.agent_directory WHERE agent_id = $1 AND owner_conn = $2)`

// Release implements gateway.Store.
func (s *Store) Release(ctx context.Context, id gateway.AgentID, o gateway.Owner) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE agents SET state = 'offline', updated_at = now() WHERE id = $1 AND `+fence,
			string(id), o.Conn)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return gateway.ErrNotOwner
		}
		_, err = tx.Exec(ctx, `UPDATE platform.agent_directory SET owner_gateway = NULL, owner_conn = NULL
			WHERE agent_id = $1 AND owner_conn = $2`, string(id), o.Conn)
		return err
	})
}

// RecordHello implements gateway.Store.
func (s *Store) RecordHello(ctx context.Context, id gateway.AgentID, o gateway.Owner, h gateway.Hello) error {
	facts, err := json.Marshal(h.Facts)
	if err != nil {
		return err
	}
	tags := h.ReportedTags
	if tags == nil {
		tags = []string{}
	}
	c := h.Capacity
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE agents SET version = $3, reported_tags = $4, facts = $5,
			cpu_allocatable_millis = $6, cpu_used_millis = $7, memory_allocatable_bytes = $8, memory_used_bytes = $9,
			sessions = $10, max_sessions = $11, state = 'online', last_seen = now(), gateway_id = $12, updated_at = now()
			WHERE id = $1 AND `+fence, string(id), o.Conn, h.Version, tags, string(facts),
			c.CPUAllocatableMillis, c.CPUUsedMillis, c.MemoryAllocatableBytes, c.MemoryUsedBytes, c.Sessions, c.MaxSessions, o.Gateway)
		if err == nil && tag.RowsAffected() == 0 {
			return gateway.ErrNotOwner
		}
		return err
	})
}

// Connect implements gateway.Store. Its statements go in one round trip; the agent's row
// is locked before its directory row, in the order DeleteAgent and Release take them.
func (s *Store) Connect(ctx context.Context, id gateway.AgentID, o gateway.Owner, h gateway.Hello) ([]gateway.Assignment, error) {
	facts, err := json.Marshal(h.Facts)
	if err != nil {
		return nil, err
	}
	tags := h.ReportedTags
	if tags == nil {
		tags = []string{}
	}
	c := h.Capacity
	var set []gateway.Assignment
	err = s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		b := &pgx.Batch{}
		b.Queue(`UPDATE agents SET version = $2, reported_tags = $3, facts = $4,
			cpu_allocatable_millis = $5, cpu_used_millis = $6, memory_allocatable_bytes = $7, memory_used_bytes = $8,
			sessions = $9, max_sessions = $10, state = 'online', last_seen = now(), gateway_id = $11, updated_at = now()
			WHERE id = $1`, string(id), h.Version, tags, string(facts),
			c.CPUAllocatableMillis, c.CPUUsedMillis, c.MemoryAllocatableBytes, c.MemoryUsedBytes, c.Sessions, c.MaxSessions, o.Gateway)
		b.Queue(`UPDATE platform.agent_directory
			SET owner_gateway = $2, owner_conn = $3, owner_since = now(), owner_heartbeat = now()
			WHERE agent_id = $1 AND tenant_id = $4`, string(id), o.Gateway, o.Conn, string(currentTenant(ctx)))
		b.Queue(`SELECT pg_notify($1, $2)`, gateway.AgentChannel(id), gateway.NotifyOwner+o.Conn)
		b.Queue(`SELECT `+assignmentCols+` FROM session_assignments
			WHERE agent_id = $1 AND NOT (desired = 'deleted' AND acked_generation >= generation) ORDER BY session_id`, string(id))
		res := tx.SendBatch(ctx, b)
		defer res.Close()
		for range 2 {
			tag, err := res.Exec()
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				return apperr.New(apperr.NotFound, "no such agent")
			}
		}
		if _, err := res.Exec(); err != nil {
			return err
		}
		rows, err := res.Query()
		if err != nil {
			return err
		}
		set, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.Assignment, error) { return scanAssignment(r) })
		if err != nil {
			return err
		}
		return res.Close()
	})
	if set == nil && err == nil {
		set = []gateway.Assignment{}
	}
	return set, err
}

// RecordHeartbeats implements gateway.Store. One statement stamps every beat of the
// batch; capacity is written with it because the row is rewritten for last_seen anyway.
func (s *Store) RecordHeartbeats(ctx context.Context, beats []gateway.Beat) ([]gateway.AgentID, error) {
	if len(beats) == 0 {
		return nil, nil
	}
	n := len(beats)
	ids, conns := make([]string, n), make([]string, n)
	ca, cu, ma, mu := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	ss, ms := make([]int32, n), make([]int32, n)
	for i, b := range beats {
		ids[i], conns[i] = string(b.Agent), b.Conn
		c := b.Capacity
		ca[i], cu[i], ma[i], mu[i] = c.CPUAllocatableMillis, c.CPUUsedMillis, c.MemoryAllocatableBytes, c.MemoryUsedBytes
		ss[i], ms[i] = int32(c.Sessions), int32(c.MaxSessions)
	}
	var kept []string
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `UPDATE agents a SET
			cpu_allocatable_millis = b.ca, cpu_used_millis = b.cu, memory_allocatable_bytes = b.ma, memory_used_bytes = b.mu,
			sessions = b.ss, max_sessions = b.ms, state = 'online', last_seen = now()
			FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::int[], $8::int[])
				AS b(id, conn, ca, cu, ma, mu, ss, ms)
			WHERE a.id = b.id
			  AND EXISTS (SELECT 1 FROM platform.agent_directory d WHERE d.agent_id = b.id AND d.owner_conn = b.conn)
			RETURNING a.id`, ids, conns, ca, cu, ma, mu, ss, ms)
		if err != nil {
			return err
		}
		kept, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, err
	}
	return missing(kept, func(yield func(gateway.AgentID) bool) {
		for _, b := range beats {
			if !yield(b.Agent) {
				return
			}
		}
	}), nil
}

const assignmentCols = `session_id, agent_id, generation, desired, spec, acked_generation, ack_error, trace_parent, created_at, updated_at`

func scanAssignment(row pgx.Row) (gateway.Assignment, error) {
	var a gateway.Assignment
	var spec, ackErr []byte
	err := row.Scan(&a.SessionID, &a.AgentID, &a.Generation, &a.Desired, &spec, &a.AckedGeneration, &ackErr,
		&a.TraceParent, &a.CreatedAt, &a.UpdatedAt)
	if err != nil {
		return a, err
	}
	a.Spec = json.RawMessage(spec)
	if len(ackErr) > 0 {
		a.AckError = new(wire.Error)
		if json.Unmarshal(ackErr, a.AckError) != nil {
			a.AckError = &wire.Error{Code: wire.CodeInternal, Message: "unreadable stored error"}
		}
	}
	return a, nil
}

// Assign implements gateway.Store.
func (s *Store) Assign(ctx context.Context, in gateway.AssignmentInput, traceParent string) (gateway.Assignment, error) {
	var out gateway.Assignment
	spec := []byte(in.Spec)
	if len(spec) == 0 {
		spec = []byte("{}")
	}
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		// An identical write changes nothing, so retries by the caller never bump the
		// generation (and never make the agent redo work).
		a, err := scanAssignment(tx.QueryRow(ctx, `INSERT INTO session_assignments
				(session_id, agent_id, generation, desired, spec, trace_parent)
			VALUES ($1, $2, 1, $3, $4, $5)
			ON CONFLICT (session_id) DO UPDATE SET generation = session_assignments.generation + 1,
				desired = EXCLUDED.desired, spec = EXCLUDED.spec, trace_parent = EXCLUDED.trace_parent,
				ack_error = NULL, updated_at = now()
			WHERE session_assignments.agent_id = EXCLUDED.agent_id
			  AND (session_assignments.desired <> EXCLUDED.desired OR session_assignments.spec <> EXCLUDED.spec)
			RETURNING `+assignmentCols, string(in.SessionID), string(in.AgentID), string(in.Desired), string(spec), traceParent))
		switch {
		case pgCode(err) == "23503":
			return apperr.New(apperr.NotFound, "no such agent")
		case errors.Is(err, pgx.ErrNoRows):
			cur, err := scanAssignment(tx.QueryRow(ctx, `SELECT `+assignmentCols+` FROM session_assignments WHERE session_id = $1`, string(in.SessionID)))
			if err != nil {
				return err
			}
			if cur.AgentID != in.AgentID {
				return apperr.New(apperr.Conflict, "session %s is assigned to another agent", in.SessionID)
			}
			out = cur
			return nil
		case err != nil:
			return err
		}
		out = a
		_, err = tx.Exec(ctx, `SELECT pg_notify($1, $2)`, gateway.AgentChannel(in.AgentID), gateway.NotifyWork)
		return err
	})
	return out, err
}

// Assignment implements gateway.Store.
func (s *Store) Assignment(ctx context.Context, id gateway.SessionID) (gateway.Assignment, error) {
	var out gateway.Assignment
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = scanAssignment(tx.QueryRow(ctx, `SELECT `+assignmentCols+` FROM session_assignments WHERE session_id = $1`, string(id)))
		return notFound(err, "assignment")
	})
	return out, err
}

func (s *Store) assignments(ctx context.Context, where string, id gateway.AgentID) ([]gateway.Assignment, error) {
	out := []gateway.Assignment{}
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+assignmentCols+` FROM session_assignments WHERE agent_id = $1 `+where, string(id))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.Assignment, error) { return scanAssignment(r) })
		return err
	})
	return out, err
}

// DesiredSet implements gateway.Store.
func (s *Store) DesiredSet(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, `AND NOT (desired = 'deleted' AND acked_generation >= generation) ORDER BY session_id`, id)
}

// AgentAssignments implements gateway.Store.
func (s *Store) AgentAssignments(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, `ORDER BY session_id`, id)
}

// Pending implements gateway.Store.
func (s *Store) Pending(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, `AND generation > acked_generation ORDER BY updated_at, session_id`, id)
}

// PendingAgents implements gateway.Store. The partial index on pending rows answers it
// without touching acknowledged ones.
func (s *Store) PendingAgents(ctx context.Context, ids []gateway.AgentID) ([]gateway.AgentID, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	in := make([]string, len(ids))
	for i, id := range ids {
		in[i] = string(id)
	}
	var out []gateway.AgentID
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT DISTINCT agent_id FROM session_assignments
			WHERE agent_id = ANY($1::text[]) AND generation > acked_generation`, in)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[gateway.AgentID])
		return err
	})
	return out, err
}

// Ack implements gateway.Store.
func (s *Store) Ack(ctx context.Context, id gateway.AgentID, session gateway.SessionID, gen int64, failure *wire.Error) error {
	var failJSON *string
	if failure != nil {
		b, err := json.Marshal(failure)
		if err != nil {
			return err
		}
		f := string(b)
		failJSON = &f
	}
	// A retryable failure leaves the generation pending (it will be pushed again); a
	// permanent one cannot succeed on retry, so it counts as delivered, with its error kept
	// for the status the agent reports. A generation above the current one is an agent
	// bug and is clamped, so it can never hide later work.
	advance := failure == nil || failure.Permanent
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE session_assignments SET
			acked_generation = CASE WHEN $4 THEN GREATEST(acked_generation, LEAST(generation, $3)) ELSE acked_generation END,
			ack_error = CASE WHEN $3 >= generation OR $5::jsonb IS NOT NULL THEN $5::jsonb ELSE ack_error END
			WHERE session_id = $1 AND agent_id = $2`, string(session), string(id), gen, advance, failJSON)
		if err == nil && tag.RowsAffected() == 0 {
			return apperr.New(apperr.NotFound, "session %s is not assigned to this agent", session)
		}
		return err
	})
}

// ReportStatus implements gateway.Store.
func (s *Store) ReportStatus(ctx context.Context, id gateway.AgentID, o gateway.Owner, ss []wire.SessionStatus) ([]gateway.SessionID, error) {
	var refused []gateway.SessionID
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		refused = refused[:0]
		var owns bool
		if err := tx.QueryRow(ctx, `SELECT `+fence, string(id), o.Conn).Scan(&owns); err != nil {
			return err
		}
		if !owns {
			return gateway.ErrNotOwner
		}
		tid := string(currentTenant(ctx))
		for _, st := range ss {
			var endpoint *string
			if st.Endpoint != nil {
				b, _ := json.Marshal(st.Endpoint)
				e := string(b)
				endpoint = &e
			}
			var lt *time.Time
			if !st.LastTransition.IsZero() {
				lt = &st.LastTransition
			}
			var observed *time.Time
			if !st.ObservedAt.IsZero() {
				observed = &st.ObservedAt
			}
			// The session must be assigned to this very agent in this tenant: a
			// certificate can only speak for its own work.
			tag, err := tx.Exec(ctx, `INSERT INTO session_status AS s
					(session_id, agent_id, phase, reason, message, observed_generation, endpoint, last_transition, observed_at)
				SELECT $1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9, now())
				WHERE EXISTS (SELECT 1 FROM session_assignments WHERE session_id = $1 AND agent_id = $2)
				ON CONFLICT (session_id) DO UPDATE SET agent_id = EXCLUDED.agent_id, phase = EXCLUDED.phase,
					reason = EXCLUDED.reason, message = EXCLUDED.message,
					observed_generation = EXCLUDED.observed_generation, endpoint = EXCLUDED.endpoint,
					last_transition = EXCLUDED.last_transition, observed_at = EXCLUDED.observed_at, updated_at = now()
				WHERE s.observed_at <= EXCLUDED.observed_at`,
				string(st.SessionID), string(id), string(st.Phase), st.Reason, st.Message, st.ObservedGeneration,
				endpoint, lt, observed)
			if err != nil {
				return err
			}
			if tag.RowsAffected() == 0 {
				var assigned bool
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM session_assignments WHERE session_id = $1 AND agent_id = $2)`,
					string(st.SessionID), string(id)).Scan(&assigned); err != nil {
					return err
				}
				if !assigned {
					refused = append(refused, st.SessionID)
				}
				continue // or an older observation than the stored one: nothing to announce
			}
			if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, gateway.StatusChannel, tid+":"+string(st.SessionID)); err != nil {
				return err
			}
		}
		return nil
	})
	return refused, err
}

const statusCols = `session_id, agent_id, phase, reason, message, observed_generation, endpoint, last_transition, observed_at, updated_at`

func scanStatus(row pgx.Row) (gateway.SessionStatus, error) {
	var st gateway.SessionStatus
	var endpoint []byte
	err := row.Scan(&st.SessionID, &st.AgentID, &st.Phase, &st.Reason, &st.Message, &st.ObservedGeneration,
		&endpoint, &st.LastTransition, &st.ObservedAt, &st.UpdatedAt)
	if err == nil && len(endpoint) > 0 {
		st.Endpoint = new(wire.Endpoint)
		_ = json.Unmarshal(endpoint, st.Endpoint)
	}
	return st, err
}

// SessionStatus implements gateway.Store.
func (s *Store) SessionStatus(ctx context.Context, id gateway.SessionID) (gateway.SessionStatus, error) {
	var out gateway.SessionStatus
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, err = scanStatus(tx.QueryRow(ctx, `SELECT `+statusCols+` FROM session_status WHERE session_id = $1`, string(id)))
		return notFound(err, "session status")
	})
	return out, err
}

// AgentSessionStatus implements gateway.Store.
func (s *Store) AgentSessionStatus(ctx context.Context, id gateway.AgentID) ([]gateway.SessionStatus, error) {
	out := []gateway.SessionStatus{}
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT `+statusCols+` FROM session_status WHERE agent_id = $1 ORDER BY session_id`, string(id))
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.SessionStatus, error) { return scanStatus(r) })
		return err
	})
	return out, err
}

// CA implements gateway.Store.
func (s *Store) CA(ctx context.Context) (gateway.StoredCA, error) {
	var c gateway.StoredCA
	err := s.db.Pool().QueryRow(ctx, `SELECT id, cert_pem, private_key, not_after, created_at
		FROM platform.agent_cas ORDER BY created_at DESC LIMIT 1`).Scan(&c.ID, &c.CertPEM, &c.SealedKey, &c.NotAfter, &c.CreatedAt)
	return c, notFound(err, "CA")
}

// CreateCA implements gateway.Store.
func (s *Store) CreateCA(ctx context.Context, ca gateway.StoredCA) (gateway.StoredCA, error) {
	var out gateway.StoredCA
	err := pgx.BeginFunc(ctx, s.db.Pool(), func(tx pgx.Tx) error {
		// Replicas starting together must agree on one CA: the lock makes the second wait
		// and then find the first's row.
		if _, err := tx.Exec(ctx, `LOCK TABLE platform.agent_cas IN EXCLUSIVE MODE`); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT id, cert_pem, private_key, not_after, created_at
			FROM platform.agent_cas ORDER BY created_at DESC LIMIT 1`).Scan(&out.ID, &out.CertPEM, &out.SealedKey, &out.NotAfter, &out.CreatedAt)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO platform.agent_cas (id, cert_pem, private_key, not_after) VALUES ($1, $2, $3, $4)`,
			ca.ID, ca.CertPEM, ca.SealedKey, ca.NotAfter)
		out = ca
		return err
	})
	return out, err
}
