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

func currentTenant(ctx context.Context) tenant.ID {
	id, _ := tenant.FromContext(ctx)
	return id
}

// announceAgents queues, in tx, the announcement that the context tenant's agents changed.
func announceAgents(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, gateway.AgentsChannel, string(currentTenant(ctx)))
	return err
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
	// One round trip (tenantdb.InTenantRead): every scheduler pass reads the agents.
	b := &pgx.Batch{}
	b.Queue(`SELECT `+agentCols+` FROM agents ORDER BY name, id`, d, o)
	err := s.db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
		rows, err := br.Query()
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
		if err != nil {
			return notFound(err, "agent")
		}
		if p.Tags != nil || p.Draining != nil {
			return announceAgents(ctx, tx)
		}
		return nil
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
			SET owner_gateway = $2, owner_conn = $3, owner_since = now()
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

// Ownership implements gateway.Store. The age is the database's own now() minus the
// owning replica's stamp, so replicas' clocks never enter it.
func (s *Store) Ownership(ctx context.Context, id gateway.AgentID) (gateway.Ownership, error) {
	tid, ok := tenant.FromContext(ctx)
	if !ok {
		return gateway.Ownership{}, apperr.New(apperr.NotFound, "no such agent")
	}
	var gw, u *string
	var age *float64
	err := s.db.Pool().QueryRow(ctx, `SELECT d.owner_gateway, r.advertise_url, extract(epoch FROM now() - r.heartbeat)::float8
		FROM platform.agent_directory d LEFT JOIN platform.gateway_replicas r ON r.id = d.owner_gateway
		WHERE d.agent_id = $1 AND d.tenant_id = $2`, string(id), string(tid)).Scan(&gw, &u, &age)
	if err != nil {
		return gateway.Ownership{}, notFound(err, "agent")
	}
	var o gateway.Ownership
	if gw != nil {
		o.Gateway = *gw
	}
	if u != nil {
		o.URL = *u
	}
	if age != nil {
		o.Age, o.Live = time.Duration(*age*float64(time.Second)), true
	}
	return o, nil
}

// nullable is s, or NULL when it is empty.
func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// RegisterReplica implements gateway.Store.
func (s *Store) RegisterReplica(ctx context.Context, gw, advertiseURL string) error {
	_, err := s.db.Pool().Exec(ctx, `INSERT INTO platform.gateway_replicas (id, heartbeat, advertise_url) VALUES ($1, now(), $2)
		ON CONFLICT (id) DO UPDATE SET heartbeat = now(), advertise_url = excluded.advertise_url`, gw, nullable(advertiseURL))
	return err
}

// StampReplica implements gateway.Store.
func (s *Store) StampReplica(ctx context.Context, gw, advertiseURL string) error {
	_, err := s.db.Pool().Exec(ctx, `INSERT INTO platform.gateway_replicas (id, heartbeat, advertise_url) VALUES ($1, now(), $2)
		ON CONFLICT (id) DO UPDATE SET heartbeat = now()`, gw, nullable(advertiseURL))
	return err
}

// RemoveReplica implements gateway.Store. Rows of replicas that died without removing
// theirs, silent for a day, go with it.
func (s *Store) RemoveReplica(ctx context.Context, gw string) error {
	_, err := s.db.Pool().Exec(ctx, `DELETE FROM platform.gateway_replicas
		WHERE id = $1 OR heartbeat < now() - interval '1 day'`, gw)
	return err
}

// LostClaims implements gateway.Store. It only reads, and returns only the lost claims,
// so checking 10,000 held claims writes nothing and sends back nothing when all hold.
func (s *Store) LostClaims(ctx context.Context, owned map[gateway.AgentID]string) ([]gateway.AgentID, error) {
	if len(owned) == 0 {
		return nil, nil
	}
	ids := make([]string, 0, len(owned))
	conns := make([]string, 0, len(owned))
	for id, c := range owned {
		ids = append(ids, string(id))
		conns = append(conns, c)
	}
	rows, err := s.db.Pool().Query(ctx, `SELECT o.agent_id FROM unnest($1::text[], $2::text[]) AS o(agent_id, conn)
		WHERE NOT EXISTS (SELECT 1 FROM platform.agent_directory d WHERE d.agent_id = o.agent_id AND d.owner_conn = o.conn)`,
		ids, conns)
	if err != nil {
		return nil, err
	}
	lost, err := pgx.CollectRows(rows, pgx.RowTo[gateway.AgentID])
	return lost, err
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
		if _, err = tx.Exec(ctx, `UPDATE platform.agent_directory SET owner_gateway = NULL, owner_conn = NULL
			WHERE agent_id = $1 AND owner_conn = $2`, string(id), o.Conn); err != nil {
			return err
		}
		return announceAgents(ctx, tx)
	})
}

// ReleaseMany implements gateway.Store. Like RecordHeartbeats it locks the agents' rows in
// id order before their directory rows, so it never deadlocks with a heartbeat flush, a
// Connect or a deletion; the batch is announced once.
func (s *Store) ReleaseMany(ctx context.Context, owned map[gateway.AgentID]string) error {
	if len(owned) == 0 {
		return nil
	}
	ids := make([]string, 0, len(owned))
	conns := make([]string, 0, len(owned))
	for id, c := range owned {
		ids = append(ids, string(id))
		conns = append(conns, c)
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `WITH o AS (SELECT * FROM unnest($1::text[], $2::text[]) AS o(id, conn)),
			mine AS (
				SELECT a.id FROM agents a JOIN o ON a.id = o.id
				WHERE EXISTS (SELECT 1 FROM platform.agent_directory d WHERE d.agent_id = o.id AND d.owner_conn = o.conn)
				ORDER BY a.id FOR NO KEY UPDATE OF a)
			UPDATE agents a SET state = 'offline', updated_at = now() FROM mine WHERE a.id = mine.id`, ids, conns)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE platform.agent_directory d SET owner_gateway = NULL, owner_conn = NULL
			FROM unnest($1::text[], $2::text[]) AS o(id, conn)
			WHERE d.agent_id = o.id AND d.owner_conn = o.conn AND d.tenant_id = $3`, ids, conns, string(currentTenant(ctx))); err != nil {
			return err
		}
		return announceAgents(ctx, tx)
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
		if err != nil {
			return err
		}
		return announceAgents(ctx, tx)
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
			SET owner_gateway = $2, owner_conn = $3, owner_since = now()
			WHERE agent_id = $1 AND tenant_id = $4`, string(id), o.Gateway, o.Conn, string(currentTenant(ctx)))
		b.Queue(`SELECT pg_notify($1, $2)`, gateway.AgentChannel(id), gateway.NotifyOwner+o.Conn)
		// Placement reads what an agent can host and whether it is online: announce it.
		b.Queue(`SELECT pg_notify($1, $2)`, gateway.AgentsChannel, string(currentTenant(ctx)))
		// The desired set as DesiredSet reads it: assignments and unacknowledged retirements.
		b.Queue(`SELECT `+assignmentCols+` FROM session_assignments
			WHERE agent_id = $1 AND NOT (desired = 'deleted' AND acked_generation >= generation)
			UNION ALL SELECT `+retiredCols+` FROM session_retirements WHERE agent_id = $1 `+unacked+`
			ORDER BY session_id`, string(id))
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
		for range 2 {
			if _, err := res.Exec(); err != nil {
				return err
			}
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
// A beat without capacity (has false) keeps the row's: it only says the agent is alive.
func (s *Store) RecordHeartbeats(ctx context.Context, beats []gateway.Beat) ([]gateway.AgentID, error) {
	if len(beats) == 0 {
		return nil, nil
	}
	n := len(beats)
	ids, conns, has := make([]string, n), make([]string, n), make([]bool, n)
	ca, cu, ma, mu := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	ss, ms := make([]int32, n), make([]int32, n)
	for i, b := range beats {
		ids[i], conns[i] = string(b.Agent), b.Conn
		if c := b.Capacity; c != nil {
			has[i] = true
			ca[i], cu[i], ma[i], mu[i] = c.CPUAllocatableMillis, c.CPUUsedMillis, c.MemoryAllocatableBytes, c.MemoryUsedBytes
			ss[i], ms[i] = int32(c.Sessions), int32(c.MaxSessions)
		}
	}
	var kept []string
	degraded, _ := s.ages()
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		// Placement reads what an agent can host (allocatable, its session limit) and
		// whether it is online; the batch is announced once if any of those changed or a
		// beat brought an aged agent back, never for beats that change nothing. The rows
		// are locked in id order, so two flushes can never deadlock, and with NO KEY
		// UPDATE, as the UPDATE itself would take: a full FOR UPDATE would queue every
		// beat behind the foreign-key locks of assignments naming the agent.
		// RETURNING sees the updated row, so a beat without capacity compares the kept one.
		rows, err := tx.Query(ctx, `WITH b AS (
				SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[], $8::int[], $9::int[])
					AS b(id, conn, has, ca, cu, ma, mu, ss, ms)),
			old AS (
				SELECT a.id, a.cpu_allocatable_millis, a.memory_allocatable_bytes, a.max_sessions, a.state,
					a.last_seen IS NULL OR a.last_seen <= now() - make_interval(secs => $10) AS aged
				FROM agents a JOIN b ON a.id = b.id
				WHERE EXISTS (SELECT 1 FROM platform.agent_directory d WHERE d.agent_id = b.id AND d.owner_conn = b.conn)
				ORDER BY a.id FOR NO KEY UPDATE OF a)
			UPDATE agents a SET
				cpu_allocatable_millis = CASE WHEN b.has THEN b.ca ELSE a.cpu_allocatable_millis END,
				cpu_used_millis = CASE WHEN b.has THEN b.cu ELSE a.cpu_used_millis END,
				memory_allocatable_bytes = CASE WHEN b.has THEN b.ma ELSE a.memory_allocatable_bytes END,
				memory_used_bytes = CASE WHEN b.has THEN b.mu ELSE a.memory_used_bytes END,
				sessions = CASE WHEN b.has THEN b.ss ELSE a.sessions END,
				max_sessions = CASE WHEN b.has THEN b.ms ELSE a.max_sessions END,
				state = 'online', last_seen = now()
			FROM b JOIN old ON old.id = b.id
			WHERE a.id = b.id
			RETURNING a.id, (old.cpu_allocatable_millis, old.memory_allocatable_bytes, old.max_sessions, old.state)
				IS DISTINCT FROM (a.cpu_allocatable_millis, a.memory_allocatable_bytes, a.max_sessions, a.state) OR old.aged`,
			ids, conns, has, ca, cu, ma, mu, ss, ms, degraded)
		if err != nil {
			return err
		}
		changed := false
		for rows.Next() {
			var id string
			var c bool
			if err := rows.Scan(&id, &c); err != nil {
				rows.Close()
				return err
			}
			kept = append(kept, id)
			changed = changed || c
		}
		if err := rows.Err(); err != nil {
			return err
		}
		if changed {
			return announceAgents(ctx, tx)
		}
		return nil
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
	res, err := s.AssignMany(ctx, []gateway.AssignmentInput{in}, traceParent)
	if err != nil {
		return gateway.Assignment{}, err
	}
	return res[0].Assignment, res[0].Err
}

// upsertAssignments writes the batch's assignments; $1..$4 are the inputs' sessions,
// agents, desired states and specs, $5 the trace context, $6 the sessions allowed to move,
// $7 the sessions arriving at an agent (new or moved). An identical write changes nothing,
// so retries by the caller never bump the generation (and never make the agent redo
// work). A session new to the outbox starts above every retirement it left behind, so
// that an agent it comes back to, which applied that retirement, does not take the new
// generation for an old one; and a session arriving at an agent supersedes what is left
// of its retirement there (deleted by the same statement, so the generation above is
// computed before, and only where the session did arrive: a row inserted concurrently
// for another agent keeps that agent's retirement).
const upsertAssignments = `WITH up AS (INSERT INTO session_assignments AS a (session_id, agent_id, generation, desired, spec, trace_parent)
	SELECT i.s, i.ag, COALESCE((SELECT max(r.generation) FROM session_retirements r WHERE r.session_id = i.s), 0) + 1,
		i.d, i.sp::jsonb, $5
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[]) AS i(s, ag, d, sp)
	ON CONFLICT (session_id) DO UPDATE SET generation = a.generation + 1, agent_id = EXCLUDED.agent_id,
		acked_generation = CASE WHEN a.agent_id = EXCLUDED.agent_id THEN a.acked_generation ELSE 0 END,
		desired = EXCLUDED.desired, spec = EXCLUDED.spec, trace_parent = EXCLUDED.trace_parent,
		ack_error = NULL, updated_at = now()
	WHERE (a.agent_id = EXCLUDED.agent_id AND (a.desired <> EXCLUDED.desired OR a.spec <> EXCLUDED.spec))
	   OR (a.agent_id <> EXCLUDED.agent_id AND a.session_id = ANY ($6::text[]))
	RETURNING ` + assignmentCols + `),
	superseded AS (DELETE FROM session_retirements r USING up
		WHERE r.session_id = up.session_id AND r.agent_id = up.agent_id AND r.session_id = ANY ($7::text[]))
	SELECT * FROM up`

// retire writes retirements: $1 sessions, $2 the agents they left, $3 the generation of
// each (the one the session moved at, above anything the agent applied), $4 the trace
// context. An older retirement of the same pair, long acknowledged, is reused.
const retire = `INSERT INTO session_retirements AS r (session_id, agent_id, generation, trace_parent)
	SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[]) AS m(s, ag, g), (SELECT $4::text) AS t
	ON CONFLICT (session_id, agent_id) DO UPDATE SET generation = GREATEST(r.generation, EXCLUDED.generation),
		trace_parent = EXCLUDED.trace_parent, ack_error = NULL, updated_at = now()`

// AssignMany implements gateway.Store. It locks the batch's assignment rows and agents
// first, so that it knows which agent each moved session leaves (that agent gets a
// retirement) and which agents exist; a row another transaction inserts meanwhile is
// caught by the upsert's own condition and reported as the conflict it is. Everything
// goes to the server in three pipelined round trips, whatever the batch's size, and each
// agent whose work changed is announced once.
func (s *Store) AssignMany(ctx context.Context, ins []gateway.AssignmentInput, traceParent string) ([]gateway.AssignResult, error) {
	out := make([]gateway.AssignResult, len(ins))
	if len(ins) == 0 {
		return out, nil
	}
	sids := make([]string, len(ins))
	var agents []string
	seen := map[gateway.AgentID]bool{}
	for i, in := range ins {
		sids[i] = string(in.SessionID)
		if !seen[in.AgentID] {
			seen[in.AgentID] = true
			agents = append(agents, string(in.AgentID))
		}
	}
	var err error
	for range 3 {
		err = s.assignMany(ctx, ins, sids, agents, traceParent, out)
		var pe *pgconn.PgError
		if !errors.Is(err, errRaced) && !(errors.As(err, &pe) && pe.Code == "23503") {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	return out, nil
}

// errRaced rolls back a batch that met a session inserted concurrently for another agent
// while it was to move it. Like an agent deleted since the batch read it (a foreign key
// violation), it makes AssignMany start over: the next attempt sees what changed.
var errRaced = errors.New("a session to move was assigned concurrently")

// assignMany is one attempt of AssignMany, filling out. Round trip 1 locks the batch's
// rows and agents and learns, per row, its agent and generation and whether the input
// would change it; round trip 2 sends everything else at once: the upsert, the
// retirements, the announcements and the read of the rows left as they were.
func (s *Store) assignMany(ctx context.Context, ins []gateway.AssignmentInput, sids, agents []string, traceParent string,
	out []gateway.AssignResult) error {
	specs := make([]string, len(ins))
	desired := make([]string, len(ins))
	for i, in := range ins {
		specs[i], desired[i] = string(in.Spec), string(in.Desired)
		if specs[i] == "" {
			specs[i] = "{}"
		}
	}
	type row struct {
		agent string
		gen   int64
		same  bool
	}
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		clear(out)
		b := &pgx.Batch{}
		b.Queue(`SELECT a.session_id, a.agent_id, a.generation, a.desired = i.d AND a.spec = i.sp::jsonb
			FROM session_assignments a JOIN unnest($1::text[], $2::text[], $3::text[]) AS i(s, d, sp) ON a.session_id = i.s
			ORDER BY a.session_id FOR UPDATE OF a`, sids, desired, specs)
		// Not locked: the foreign key locks what the upsert names, and an agent deleted
		// in between fails the batch, which is then tried again (see AssignMany).
		b.Queue(`SELECT id FROM agents WHERE id = ANY ($1)`, agents)
		br := tx.SendBatch(ctx, b)
		was := map[string]row{}
		var sid, aid string
		var r row
		rows, _ := br.Query()
		if _, err := pgx.ForEachRow(rows, []any{&sid, &r.agent, &r.gen, &r.same}, func() error { was[sid] = r; return nil }); err != nil {
			br.Close()
			return err
		}
		known := map[string]bool{}
		rows, _ = br.Query()
		if _, err := pgx.ForEachRow(rows, []any{&aid}, func() error { known[aid] = true; return nil }); err != nil {
			br.Close()
			return err
		}
		if err := br.Close(); err != nil {
			return err
		}

		var us, ua, ud, usp, moves, unchanged []string
		var rs, ra []string
		var rg []int64
		var fresh []string
		notify := map[string]bool{}
		for i, in := range ins {
			cur, assigned := was[string(in.SessionID)]
			moving := assigned && cur.agent != string(in.AgentID)
			switch {
			case moving && !in.Move:
				out[i].Err = apperr.New(apperr.Conflict, "session %s is assigned to another agent", in.SessionID)
				continue
			case !known[string(in.AgentID)]:
				out[i].Err = apperr.New(apperr.NotFound, "no such agent")
				continue
			case assigned && !moving && cur.same:
				unchanged = append(unchanged, string(in.SessionID))
				continue
			case moving:
				// The upsert gives the row generation gen+1; the agent it leaves gets its
				// retirement at that generation, above anything it applied.
				moves = append(moves, string(in.SessionID))
				rs, ra, rg = append(rs, string(in.SessionID)), append(ra, cur.agent), append(rg, cur.gen+1)
				notify[cur.agent] = true
			}
			if !assigned || moving {
				fresh = append(fresh, string(in.SessionID))
			}
			notify[string(in.AgentID)] = true
			us, ua, ud, usp = append(us, string(in.SessionID)), append(ua, string(in.AgentID)), append(ud, desired[i]), append(usp, specs[i])
		}

		b = &pgx.Batch{}
		if len(us) > 0 {
			b.Queue(upsertAssignments, us, ua, ud, usp, traceParent, moves, fresh)
		}
		if len(rs) > 0 {
			b.Queue(retire, rs, ra, rg, traceParent)
		}
		if len(notify) > 0 {
			channels := make([]string, 0, len(notify))
			for a := range notify {
				channels = append(channels, gateway.AgentChannel(gateway.AgentID(a)))
			}
			b.Queue(`SELECT pg_notify(c, $2) FROM unnest($1::text[]) AS c`, channels, gateway.NotifyWork)
		}
		if len(unchanged) > 0 {
			b.Queue(`SELECT `+assignmentCols+` FROM session_assignments WHERE session_id = ANY ($1)`, unchanged)
		}
		if b.Len() == 0 {
			return nil
		}
		br = tx.SendBatch(ctx, b)
		defer br.Close()
		got := make(map[gateway.SessionID]gateway.Assignment, len(ins))
		collect := func() error {
			rows, _ := br.Query()
			list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.Assignment, error) { return scanAssignment(r) })
			for _, a := range list {
				got[a.SessionID] = a
			}
			return err
		}
		if len(us) > 0 {
			if err := collect(); err != nil {
				return err
			}
		}
		for range b.Len() - min(len(us), 1) - min(len(unchanged), 1) {
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
		if len(unchanged) > 0 {
			if err := collect(); err != nil {
				return err
			}
		}
		for i, in := range ins {
			if out[i].Err != nil {
				continue
			}
			a, ok := got[in.SessionID]
			switch {
			case !ok && in.Move:
				// Inserted by another transaction after the lock was taken (the upsert
				// left it alone), so its agent was not known to retire: start over, now
				// that the row exists to lock.
				return errRaced
			case !ok || a.AgentID != in.AgentID:
				out[i].Err = apperr.New(apperr.Conflict, "session %s is assigned to another agent", in.SessionID)
			default:
				out[i].Assignment = a
			}
		}
		return br.Close()
	})
}

// Unassign implements gateway.Store.
func (s *Store) Unassign(ctx context.Context, id gateway.SessionID, traceParent string) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var agent string
		var gen, acked int64
		var desired string
		err := tx.QueryRow(ctx, `DELETE FROM session_assignments WHERE session_id = $1
			RETURNING agent_id, generation, acked_generation, desired`, string(id)).Scan(&agent, &gen, &acked, &desired)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // nothing assigned: already done
		}
		if err != nil {
			return err
		}
		if desired == string(wire.DesiredDeleted) && acked >= gen {
			return nil // the agent already removed it
		}
		b := &pgx.Batch{}
		b.Queue(retire, []string{string(id)}, []string{agent}, []int64{gen + 1}, traceParent)
		b.Queue(`SELECT pg_notify($1, $2)`, gateway.AgentChannel(gateway.AgentID(agent)), gateway.NotifyWork)
		return tx.SendBatch(ctx, b).Close()
	})
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

// retiredCols selects a retirement as an assignment row: desired deleted, without a spec.
const retiredCols = `session_id, agent_id, generation, 'deleted', '{}'::jsonb, acked_generation, ack_error, trace_parent, created_at, updated_at`

// assignments reads the agent's assignments matching where and its retirements matching
// retiredWhere, in order.
func (s *Store) assignments(ctx context.Context, id gateway.AgentID, where, retiredWhere, order string) ([]gateway.Assignment, error) {
	out := []gateway.Assignment{}
	// One round trip (tenantdb.InTenantRead): a push reads its pending work with it, on
	// the path from a session's create to its agent.
	b := &pgx.Batch{}
	b.Queue(`SELECT `+assignmentCols+` FROM session_assignments WHERE agent_id = $1 `+where+`
			UNION ALL SELECT `+retiredCols+` FROM session_retirements WHERE agent_id = $1 `+retiredWhere+` ORDER BY `+order, string(id))
	err := s.db.InTenantRead(ctx, b, func(br pgx.BatchResults) error {
		rows, err := br.Query()
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (gateway.Assignment, error) { return scanAssignment(r) })
		return err
	})
	return out, err
}

// unacked is the condition of a retirement the agent has not yet acknowledged.
const unacked = `AND generation > acked_generation`

// DesiredSet implements gateway.Store.
func (s *Store) DesiredSet(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, id, `AND NOT (desired = 'deleted' AND acked_generation >= generation)`, unacked, `session_id`)
}

// AgentAssignments implements gateway.Store.
func (s *Store) AgentAssignments(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, id, ``, unacked, `session_id`)
}

// Pending implements gateway.Store.
func (s *Store) Pending(ctx context.Context, id gateway.AgentID) ([]gateway.Assignment, error) {
	return s.assignments(ctx, id, unacked, unacked, `updated_at, session_id`)
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
		rows, err := tx.Query(ctx, `SELECT agent_id FROM session_assignments
				WHERE agent_id = ANY($1::text[]) AND generation > acked_generation
			UNION SELECT agent_id FROM session_retirements
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
		// A session is assigned to an agent or retired from it, never both (an assignment
		// arriving at an agent deletes the retirement there), so one of these matches.
		for _, table := range []string{"session_assignments", "session_retirements"} {
			tag, err := tx.Exec(ctx, `UPDATE `+table+` SET
				acked_generation = CASE WHEN $4 THEN GREATEST(acked_generation, LEAST(generation, $3)) ELSE acked_generation END,
				ack_error = CASE WHEN $3 >= generation OR $5::jsonb IS NOT NULL THEN $5::jsonb ELSE ack_error END
				WHERE session_id = $1 AND agent_id = $2`, string(session), string(id), gen, advance, failJSON)
			if err != nil || tag.RowsAffected() > 0 {
				return err
			}
		}
		return apperr.New(apperr.NotFound, "session %s is not assigned to this agent", session)
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
				// A session that left this agent is no longer its to report on, but the
				// agent has not yet applied the retirement: not a refusal, only stale.
				if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM session_assignments WHERE session_id = $1 AND agent_id = $2)
						OR EXISTS (SELECT 1 FROM session_retirements WHERE session_id = $1 AND agent_id = $2)`,
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
