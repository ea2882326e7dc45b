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
	AssignMany(ctx context.Context, ins []gateway.AssignmentInput) ([]gateway.AssignResult, error)
	Unassign(ctx context.Context, id gateway.SessionID) error
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
// with ev, records the event, in one pipelined round trip.
func (s *Store) update(ctx context.Context, tx pgx.Tx, cur sessions.Session, ev *sessions.Event, set string, args ...any) error {
	b := &pgx.Batch{}
	queueUpdate(ctx, b, cur, ev, set, args...)
	return tx.SendBatch(ctx, b).Close()
}

// event is the history entry of a change the pass makes to cur.
func event(cur sessions.Session, kind string, phase sessions.Phase, reason, msg, actor string) *sessions.Event {
	return &sessions.Event{SessionID: cur.ID, Kind: kind, Phase: phase, Desired: cur.Desired,
		Generation: cur.Generation, Reason: reason, Message: msg, Actor: actor}
}

// work claims the sessions whose generation is ahead of the gateway's, places those that
// need an agent, and delivers each one's desired state. Placement is decided in memory
// for the whole claim; the desired states then go to the gateway in one AssignMany (one
// transaction, one announcement per agent) and the sessions are updated in one pipelined
// batch, so a pass costs a handful of round trips and commits however many it places.
//
// The gateway's transaction commits before the pass's. Should the pass then fail, its
// sessions are still ahead of what was dispatched, so the next pass writes them again:
// identical writes change nothing, and a different choice is a move, which tells the
// first agent to remove the session. A session is never left running on two agents.
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
		var err error
		// Scan with the two extra columns: Scan's row wrapper reads only Columns.
		it.s, err = sesspg.Scan(extraRow{rows, []any{&it.spec, &it.deleted}})
		if err != nil {
			rows.Close()
			return err
		}
		items = append(items, it)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	index := make(map[string]int, len(cands))
	for i, c := range cands {
		index[c.ID] = i
	}
	take := func(agent string, cur sessions.Session, sign int64) {
		if i, ok := index[agent]; ok {
			cands[i].CPUPlaced += sign * cur.CPUMillis
			cands[i].MemoryPlaced += sign * cur.MemoryBytes
			cands[i].Sessions += int(sign)
		}
	}
	b := &pgx.Batch{}
	var ins []gateway.AssignmentInput
	type target struct {
		cur     sessions.Session
		agent   string
		deleted bool
	}
	var dispatch []target // in ins's order
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
			take(agent, cur, -1)
			prefer := agent
			if prefer == "" {
				prefer = cur.LastAgentID
			}
			chosen, why := scheduler.Choose(cands, scheduler.Request{CPU: cur.CPUMillis, Memory: cur.MemoryBytes, Tags: cur.AgentTags, Prefer: prefer}, o.Strategy)
			if chosen == "" {
				take(agent, cur, +1) // give the requests back: nothing moved
				if cur.Phase != sessions.PhaseScheduling || cur.Reason != sessions.ReasonNoAgentFits || cur.Message != why {
					var ev *sessions.Event
					if cur.Phase != sessions.PhaseScheduling || cur.Message != why {
						ev = event(cur, sessions.EventPhase, sessions.PhaseScheduling, sessions.ReasonNoAgentFits, why, o.Actor)
					}
					queueUpdate(ctx, b, cur, ev, `phase = $2, reason = $3, message = $4,
						phase_since = CASE WHEN phase <> $2 THEN now() ELSE phase_since END`,
						string(sessions.PhaseScheduling), sessions.ReasonNoAgentFits, why)
				}
				res.Unplaced++
				continue
			}
			take(chosen, cur, +1)
			agent = chosen
		}
		if agent == "" {
			// Nothing was placed, so nothing has to reach an agent, unless a pass that
			// failed after its gateway write left an assignment behind: Unassign clears
			// it, and is a no-op otherwise.
			if err := s.gw.Unassign(ctx, gateway.SessionID(cur.ID)); err != nil {
				return fmt.Errorf("unassigning session %s: %w", cur.ID, err)
			}
			b.Queue(`UPDATE sessions SET dispatched_generation = generation WHERE id = $1`, string(cur.ID))
			continue
		}
		var spec json.RawMessage
		if desired != wire.DesiredDeleted {
			spec = json.RawMessage(it.spec)
		}
		// Move: the session row is the truth about placement; an assignment naming
		// another agent is one the session is leaving, which Move retires there.
		ins = append(ins, gateway.AssignmentInput{SessionID: gateway.SessionID(cur.ID), AgentID: gateway.AgentID(agent),
			Desired: desired, Spec: spec, Move: true})
		dispatch = append(dispatch, target{cur: cur, agent: agent, deleted: it.deleted})
	}
	var results []gateway.AssignResult
	if len(ins) > 0 {
		if results, err = s.gw.AssignMany(ctx, ins); err != nil {
			return fmt.Errorf("assigning %d sessions: %w", len(ins), err)
		}
	}
	var u placements
	for i, d := range dispatch {
		cur, agent, r := d.cur, d.agent, results[i]
		switch {
		case apperr.IsCode(r.Err, apperr.NotFound) && ins[i].Desired == wire.DesiredDeleted:
			// The agent itself was deleted: nothing is left to tell.
			b.Queue(`UPDATE sessions SET dispatched_generation = generation WHERE id = $1`, string(cur.ID))
			continue
		case apperr.IsCode(r.Err, apperr.NotFound):
			// The agent was deleted since the candidates were read: the next pass places
			// the session elsewhere.
			take(agent, cur, -1)
			res.Unplaced++
			continue
		case r.Err != nil:
			return fmt.Errorf("assigning session %s to agent %s: %w", cur.ID, agent, r.Err)
		}
		placed := cur.AgentID != agent
		phase, reason, msg := cur.Phase, cur.Reason, cur.Message
		if cur.Desired == sessions.DesiredRunning && !d.deleted &&
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
			res.Placed++
		} else {
			res.Delivered++
		}
		u.add(ctx, cur, agent, r.Assignment.Generation, phase, reason, msg, ev)
	}
	u.queue(b)
	return tx.SendBatch(ctx, b).Close()
}

// placements collects the pass's dispatched sessions as columns, so that their updates,
// events and announcements are three statements whatever their number.
type placements struct {
	ids, agents, phases, reasons, msgs, notices []string
	gens, agens                                 []int64
	events                                      []sessions.Event
}

func (u *placements) add(ctx context.Context, cur sessions.Session, agent string, agen int64, phase sessions.Phase,
	reason, msg string, ev *sessions.Event) {
	u.ids, u.agents, u.gens, u.agens = append(u.ids, string(cur.ID)), append(u.agents, agent), append(u.gens, cur.Generation), append(u.agens, agen)
	u.phases, u.reasons, u.msgs = append(u.phases, string(phase)), append(u.reasons, reason), append(u.msgs, msg)
	u.notices = append(u.notices, sesspg.ChangePayload(ctx, cur))
	if ev != nil {
		u.events = append(u.events, *ev)
	}
}

func (u *placements) queue(b *pgx.Batch) {
	if len(u.ids) == 0 {
		return
	}
	b.Queue(`UPDATE sessions AS s SET agent_id = u.agent, last_agent_id = u.agent, dispatched_generation = u.gen,
			assignment_generation = u.agen, phase = u.phase, reason = u.reason, message = u.msg,
			phase_since = CASE WHEN s.phase <> u.phase THEN now() ELSE s.phase_since END, updated_at = now()
		FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[])
			AS u(id, agent, gen, agen, phase, reason, msg)
		WHERE s.id = u.id`, u.ids, u.agents, u.gens, u.agens, u.phases, u.reasons, u.msgs)
	sesspg.QueueEvents(b, u.events)
	sesspg.QueueNotifyChanges(b, u.notices)
}

// queueUpdate queues a change of the locked session cur with set (parameters from $2),
// its announcement and, with ev, its event.
func queueUpdate(ctx context.Context, b *pgx.Batch, cur sessions.Session, ev *sessions.Event, set string, args ...any) {
	b.Queue(`UPDATE sessions SET `+set+`, updated_at = now() WHERE id = $1`, append([]any{string(cur.ID)}, args...)...)
	// The notice names the session and its owner, which no update changes.
	sesspg.QueueNotifyChange(ctx, b, cur)
	if ev != nil {
		sesspg.QueueEvent(b, *ev)
	}
}

// extraRow scans Columns and then extra destinations from one row.
type extraRow struct {
	rows  pgx.Rows
	extra []any
}

func (r extraRow) Scan(dest ...any) error { return r.rows.Scan(append(dest, r.extra...)...) }
