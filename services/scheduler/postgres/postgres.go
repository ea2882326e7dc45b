// Package postgres is the scheduler's placement pass on PostgreSQL, and the Store of its
// admin API.
//
// Sessions are the sessions service's rows (package sessions/postgres reads and writes
// them the same way); agents and assignments are the gateway's, reached only through its
// Go API (Gateway). Everything runs in the context's tenant through tenantdb.
package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/scheduler"
	"streamspace.dev/services/sessions"
	sesspg "streamspace.dev/services/sessions/postgres"
)

// Gateway is what the scheduler needs from the agent gateway: its agents (with their
// liveness) and the assignment outbox. gateway.Service satisfies it; the scheduler calls
// it as auth.AsSystem for the tenant.
type Gateway interface {
	Agents(ctx context.Context) ([]gateway.Agent, error)
	Assign(ctx context.Context, in gateway.AssignmentInput) (gateway.Assignment, error)
}

// Options tune a pass.
type Options struct {
	Strategy scheduler.Strategy
	// Grace is how long a session that is not yet Running waits for its lost agent
	// before it is placed elsewhere.
	Grace time.Duration
	// Batch bounds the sessions one pass claims.
	Batch int
	// Actor names the scheduler replica in events and the audit log.
	Actor string
}

// Store runs placement passes and serves the admin API.
type Store struct {
	db *tenantdb.DB
	gw Gateway
}

var _ scheduler.Store = (*Store)(nil)

// New returns a Store over db and the gateway gw.
func New(db *tenantdb.DB, gw Gateway) *Store { return &Store{db: db, gw: gw} }

// Result counts what a pass did.
type Result struct {
	// Skipped: another replica held the tenant's scheduling lock.
	Skipped     bool
	Placed      int
	Delivered   int
	Unplaced    int
	Lost        int
	Returned    int
	Rescheduled int
}

// candidates reads the tenant's agents and adds what is placed on each (in tx).
func (s *Store) candidates(ctx context.Context, tx pgx.Tx) ([]scheduler.Candidate, map[string]*gateway.Agent, error) {
	agents, err := s.gw.Agents(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("listing agents: %w", err)
	}
	rows, err := tx.Query(ctx, `SELECT agent_id, sum(cpu_millis), sum(memory_bytes), count(*) FROM sessions
		WHERE agent_id IS NOT NULL AND desired = 'running' AND deleted_at IS NULL GROUP BY agent_id`)
	if err != nil {
		return nil, nil, err
	}
	type load struct {
		cpu, mem int64
		n        int
	}
	loads := map[string]load{}
	for rows.Next() {
		var id string
		var l load
		if err := rows.Scan(&id, &l.cpu, &l.mem, &l.n); err != nil {
			rows.Close()
			return nil, nil, err
		}
		loads[id] = l
	}
	if err := rows.Err(); err != nil {
		return nil, nil, err
	}
	out := make([]scheduler.Candidate, len(agents))
	byID := make(map[string]*gateway.Agent, len(agents))
	for i := range agents {
		a := &agents[i]
		byID[string(a.ID)] = a
		tags := append(append([]string{}, a.Tags...), a.ReportedTags...)
		l := loads[string(a.ID)]
		out[i] = scheduler.Candidate{ID: string(a.ID), Name: a.Name, Tags: tags, Online: a.State == gateway.StateOnline,
			Draining: a.Draining, CPUAllocatable: a.Capacity.CPUAllocatableMillis, MemoryAllocatable: a.Capacity.MemoryAllocatableBytes,
			MaxSessions: a.Capacity.MaxSessions, CPUPlaced: l.cpu, MemoryPlaced: l.mem, Sessions: l.n}
	}
	return out, byID, nil
}

// Candidates implements scheduler.Store.
func (s *Store) Candidates(ctx context.Context) ([]scheduler.Candidate, error) {
	var out []scheduler.Candidate
	err := s.db.InTenantTx(ctx, tenantdb.TxOptions{ReadOnly: true}, func(ctx context.Context, tx pgx.Tx) error {
		var err error
		out, _, err = s.candidates(ctx, tx)
		return err
	})
	return out, err
}

// Pass runs one placement pass over the context's tenant (see the package documentation
// of scheduler).
func (s *Store) Pass(ctx context.Context, o Options) (Result, error) {
	var res Result
	tid, _ := tenant.FromContext(ctx)
	if o.Batch <= 0 {
		o.Batch = 500
	}
	if !o.Strategy.Valid() {
		o.Strategy = scheduler.Spread
	}
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		res = Result{}
		var locked bool
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtext($1))`, "streamspace-scheduler:"+string(tid)).Scan(&locked); err != nil {
			return err
		}
		if !locked {
			res.Skipped = true
			return nil
		}
		cands, agents, err := s.candidates(ctx, tx)
		if err != nil {
			return err
		}
		if err := s.watchAgents(ctx, tx, agents, o, &res); err != nil {
			return err
		}
		return s.work(ctx, tx, cands, agents, o, &res)
	})
	return res, err
}

// watchAgents marks sessions whose agent went offline, reschedules those that were not
// yet Running once the grace period has passed, and clears the mark when the agent is
// back. A Running session stays Running (its pod may well be fine; only the tunnel is
// gone) but says that its agent is lost.
func (s *Store) watchAgents(ctx context.Context, tx pgx.Tx, agents map[string]*gateway.Agent, o Options, res *Result) error {
	var offline, online []string
	for id, a := range agents {
		if a.State == gateway.StateOffline {
			offline = append(offline, id)
		} else {
			online = append(online, id)
		}
	}
	rows, err := tx.Query(ctx, `SELECT `+sesspg.Columns+` FROM sessions
		WHERE deleted_at IS NULL AND ((agent_id = ANY ($1) AND desired = 'running')
		   OR (agent_id = ANY ($2) AND agent_lost_at IS NOT NULL)
		   OR (agent_id IS NOT NULL AND NOT (agent_id = ANY ($1) OR agent_id = ANY ($2)) AND desired = 'running'))
		FOR UPDATE SKIP LOCKED`, offline, online)
	if err != nil {
		return err
	}
	list, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (sessions.Session, error) { return sesspg.Scan(r) })
	if err != nil {
		return err
	}
	for _, cur := range list {
		a, known := agents[cur.AgentID]
		back := known && a.State != gateway.StateOffline
		switch {
		case back:
			// The agent is back: drop the mark; its next report refreshes the phase.
			ev := event(cur, sessions.EventAgent, cur.Phase, sessions.ReasonAgentReturned, fmt.Sprintf("agent %s is back", cur.AgentID), o.Actor)
			if err := s.update(ctx, tx, cur, ev, `agent_lost_at = NULL, reason = CASE WHEN reason = $2 THEN $3 ELSE reason END, message = ''`,
				sessions.ReasonAgentLost, sessions.ReasonAgentReturned); err != nil {
				return err
			}
			res.Returned++
		case cur.AgentLostAt == nil:
			msg := fmt.Sprintf("agent %s stopped reporting", cur.AgentID)
			if !known {
				msg = fmt.Sprintf("agent %s was deleted", cur.AgentID)
			}
			ev := event(cur, sessions.EventAgent, cur.Phase, sessions.ReasonAgentLost, msg, o.Actor)
			if err := s.update(ctx, tx, cur, ev, `agent_lost_at = now(), reason = $2, message = $3`, sessions.ReasonAgentLost, msg); err != nil {
				return err
			}
			res.Lost++
		case cur.Phase != sessions.PhaseRunning && (time.Since(*cur.AgentLostAt) >= o.Grace || !known):
			// Not yet Running, so nothing the user sees is lost by starting it elsewhere.
			// The generation moves so that the pass below places and delivers it.
			msg := fmt.Sprintf("agent %s was lost before the session ran; placing it again", cur.AgentID)
			ev := event(cur, sessions.EventAgent, sessions.PhaseScheduling, sessions.ReasonRescheduled, msg, o.Actor)
			if err := s.update(ctx, tx, cur, ev, `agent_id = NULL, agent_lost_at = NULL, generation = generation + 1,
				phase = $2, reason = $3, message = $4, phase_since = now(), endpoint = NULL`,
				string(sessions.PhaseScheduling), sessions.ReasonRescheduled, msg); err != nil {
				return err
			}
			res.Rescheduled++
		}
	}
	return nil
}

// update changes the locked session cur with set (parameters from $2), announces it and,
// with ev, records the event: one pipelined round trip, because a pass makes these writes
// for every session it claims and round trips, not SQL, are what a pass spends its time on.
func (s *Store) update(ctx context.Context, tx pgx.Tx, cur sessions.Session, ev *sessions.Event, set string, args ...any) error {
	b := &pgx.Batch{}
	b.Queue(`UPDATE sessions SET `+set+`, updated_at = now() WHERE id = $1`, append([]any{string(cur.ID)}, args...)...)
	// The notice names the session and its owner, which no update changes.
	sesspg.QueueNotifyChange(ctx, b, cur)
	if ev != nil {
		sesspg.QueueEvent(b, *ev)
	}
	return tx.SendBatch(ctx, b).Close()
}

// event is the history entry of a change the pass makes to cur.
func event(cur sessions.Session, kind string, phase sessions.Phase, reason, msg, actor string) *sessions.Event {
	return &sessions.Event{SessionID: cur.ID, Kind: kind, Phase: phase, Desired: cur.Desired,
		Generation: cur.Generation, Reason: reason, Message: msg, Actor: actor}
}

// work claims the sessions whose generation is ahead of the gateway's, places those that
// need an agent, and delivers each one's desired state.
func (s *Store) work(ctx context.Context, tx pgx.Tx, cands []scheduler.Candidate, agents map[string]*gateway.Agent, o Options, res *Result) error {
	rows, err := tx.Query(ctx, `SELECT `+sesspg.Columns+`, spec::text, deleted_at IS NOT NULL FROM sessions
		WHERE generation > dispatched_generation ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED`, o.Batch)
	if err != nil {
		return err
	}
	type item struct {
		s       sessions.Session
		spec    string
		deleted bool
	}
	var items []item
	for rows.Next() {
		var it item
		var spec string
		var deleted bool
		var err error
		// Scan with the two extra columns: Scan's row wrapper reads only Columns.
		it.s, err = sesspg.Scan(extraRow{rows, []any{&spec, &deleted}})
		if err != nil {
			rows.Close()
			return err
		}
		it.spec, it.deleted = spec, deleted
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	index := make(map[string]int, len(cands))
	for i, c := range cands {
		index[c.ID] = i
	}
	for _, it := range items {
		cur := it.s
		desired := gateway.Desired(cur.Desired)
		if it.deleted {
			desired = wire.DesiredDeleted
		}
		agent := cur.AgentID
		if cur.Desired == sessions.DesiredRunning && !it.deleted {
			// A running session needs an agent that fits now. Its own requests are
			// already counted on its current agent (desired running), so they are taken
			// off before the check.
			if agent != "" {
				if i, ok := index[agent]; ok {
					cands[i].CPUPlaced -= cur.CPUMillis
					cands[i].MemoryPlaced -= cur.MemoryBytes
					cands[i].Sessions--
				}
			}
			prefer := agent
			if prefer == "" {
				prefer = cur.LastAgentID
			}
			chosen, why := scheduler.Choose(cands, scheduler.Request{CPU: cur.CPUMillis, Memory: cur.MemoryBytes, Tags: cur.AgentTags, Prefer: prefer}, o.Strategy)
			if chosen == "" {
				if agent != "" {
					if i, ok := index[agent]; ok { // give the requests back: nothing moved
						cands[i].CPUPlaced += cur.CPUMillis
						cands[i].MemoryPlaced += cur.MemoryBytes
						cands[i].Sessions++
					}
				}
				if cur.Phase != sessions.PhaseScheduling || cur.Reason != sessions.ReasonNoAgentFits || cur.Message != why {
					var ev *sessions.Event
					if cur.Phase != sessions.PhaseScheduling || cur.Message != why {
						ev = event(cur, sessions.EventPhase, sessions.PhaseScheduling, sessions.ReasonNoAgentFits, why, o.Actor)
					}
					if err := s.update(ctx, tx, cur, ev, `phase = $2, reason = $3, message = $4,
						phase_since = CASE WHEN phase <> $2 THEN now() ELSE phase_since END`,
						string(sessions.PhaseScheduling), sessions.ReasonNoAgentFits, why); err != nil {
						return err
					}
				}
				res.Unplaced++
				continue
			}
			i := index[chosen]
			cands[i].CPUPlaced += cur.CPUMillis
			cands[i].MemoryPlaced += cur.MemoryBytes
			cands[i].Sessions++
			if agent != "" && agent != chosen {
				if err := s.unassign(ctx, cur.ID, chosen); err != nil {
					return err
				}
			}
			agent = chosen
		}
		if agent == "" {
			// Nothing was ever placed, so nothing has to reach an agent.
			if _, err := tx.Exec(ctx, `UPDATE sessions SET dispatched_generation = generation WHERE id = $1`, string(cur.ID)); err != nil {
				return err
			}
			continue
		}
		var spec json.RawMessage
		if desired != wire.DesiredDeleted {
			spec = json.RawMessage(it.spec)
		}
		a, err := s.gw.Assign(ctx, gateway.AssignmentInput{SessionID: gateway.SessionID(cur.ID), AgentID: gateway.AgentID(agent),
			Desired: desired, Spec: spec})
		if apperr.IsCode(err, apperr.Conflict) {
			// The outbox still names another agent (a move whose clean-up did not
			// commit): clear it and try once more.
			if err := s.unassign(ctx, cur.ID, agent); err != nil {
				return err
			}
			a, err = s.gw.Assign(ctx, gateway.AssignmentInput{SessionID: gateway.SessionID(cur.ID), AgentID: gateway.AgentID(agent),
				Desired: desired, Spec: spec})
		}
		if apperr.IsCode(err, apperr.NotFound) && desired == wire.DesiredDeleted {
			// The agent itself was deleted: nothing is left to tell.
			if _, err := tx.Exec(ctx, `UPDATE sessions SET dispatched_generation = generation WHERE id = $1`, string(cur.ID)); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("assigning session %s to agent %s: %w", cur.ID, agent, err)
		}
		placed := cur.AgentID != agent
		phase, reason, msg := cur.Phase, cur.Reason, cur.Message
		if cur.Desired == sessions.DesiredRunning && !it.deleted &&
			(cur.Phase == sessions.PhasePending || cur.Phase == sessions.PhaseScheduling || cur.Phase == sessions.PhaseHibernated) {
			phase, reason = sessions.PhaseStarting, sessions.ReasonPlaced
			name := agent
			if ag := agents[agent]; ag != nil {
				name = fmt.Sprintf("%s (%s)", ag.Name, agent)
			}
			msg = "placed on agent " + name
			if cur.LastAgentID != "" && cur.LastAgentID != agent {
				msg += fmt.Sprintf("; the home volume stays with agent %s", cur.LastAgentID)
			}
		}
		var ev *sessions.Event
		if phase != cur.Phase || placed {
			ev = event(cur, sessions.EventPlaced, phase, reason, msg, o.Actor)
		}
		if err := s.update(ctx, tx, cur, ev, `agent_id = $2, last_agent_id = $2, dispatched_generation = $3, assignment_generation = $4,
			phase = $5, reason = $6, message = $7, phase_since = CASE WHEN phase <> $5 THEN now() ELSE phase_since END`,
			agent, cur.Generation, a.Generation, string(phase), reason, msg); err != nil {
			return err
		}
		if ev != nil {
			res.Placed++
		} else {
			res.Delivered++
		}
	}
	return nil
}

// unassign removes a session's assignment from any agent but keep: the agent it is leaving.
//
// TODO(gateway): the gateway's API has no way to move an assignment to another agent
// (Assign refuses with conflict), so this deletes the outbox row itself, in a transaction
// of its own (Assign for the new agent would otherwise wait on this row behind the pass's
// transaction). The old agent, when it returns, no longer finds the session in its full
// desired set and removes it as an orphan. Replace with the gateway's own call when it has
// one.
func (s *Store) unassign(ctx context.Context, id sessions.ID, keep string) error {
	return s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM session_assignments WHERE session_id = $1 AND agent_id <> $2`, string(id), keep)
		return err
	})
}

// extraRow scans Columns and then extra destinations from one row.
type extraRow struct {
	rows  pgx.Rows
	extra []any
}

func (r extraRow) Scan(dest ...any) error { return r.rows.Scan(append(dest, r.extra...)...) }
