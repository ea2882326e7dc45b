package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/sessions"
)

// ActiveTenants lists the ids of active tenants, for the background loops that visit each.
func (s *Store) ActiveTenants(ctx context.Context) ([]tenant.ID, error) {
	rows, err := s.db.Pool().Query(ctx, `SELECT id FROM platform.tenants WHERE status = 'active' ORDER BY id`)
	if err != nil {
		return nil, err
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	out := make([]tenant.ID, len(ids))
	for i, id := range ids {
		out[i] = tenant.ID(id)
	}
	return out, err
}

// ApplyStatus folds an agent's report into the session (see sessions.Fold) in the
// context's tenant. It reports whether the session changed. A report older than the one
// already folded, or about a deleted session, changes nothing. A failure the agent
// reports while the session should run also stops it and releases its quota: nothing
// keeps running, or holding quota, behind a Failed session.
func (s *Store) ApplyStatus(ctx context.Context, id sessions.ID, o sessions.Observed, actor string) (bool, error) {
	changed := false
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		changed = false
		cur, err := Scan(tx.QueryRow(ctx, `SELECT `+Columns+` FROM sessions WHERE id = $1 AND deleted_at IS NULL FOR UPDATE`, string(id)))
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		if cur.StatusObservedAt != nil && o.ObservedAt.Before(*cur.StatusObservedAt) {
			return nil
		}
		out, ok := sessions.Fold(cur, o)
		if o.AgentID == cur.AgentID {
			if _, err := tx.Exec(ctx, `UPDATE sessions SET status_observed_at = $2 WHERE id = $1`, string(id), o.ObservedAt); err != nil {
				return err
			}
		}
		if !ok {
			return nil
		}
		changed = true
		if out.Phase == sessions.PhaseFailed && cur.Desired != sessions.DesiredStopped {
			d, err := sessions.Decide(cur, sessions.ActionFail, out.Reason, out.Message)
			if err != nil {
				return err
			}
			_, err = ApplyDecision(ctx, tx, cur, d, actor)
			return err
		}
		// JSON text, not the struct: in exec mode pgx cannot infer a jsonb parameter.
		var endpoint *string
		if out.Endpoint != nil {
			b, err := json.Marshal(out.Endpoint)
			if err != nil {
				return err
			}
			e := string(b)
			endpoint = &e
		}
		next, err := Scan(tx.QueryRow(ctx, `UPDATE sessions SET phase = $2, reason = $3, message = $4, endpoint = $5::jsonb,
				phase_since = CASE WHEN phase <> $2 THEN now() ELSE phase_since END,
				started_at = CASE WHEN $2 = 'Running' THEN COALESCE(started_at, now()) ELSE started_at END,
				last_activity = CASE WHEN $2 = 'Running' AND phase <> 'Running' THEN now() ELSE last_activity END,
				agent_lost_at = NULL, updated_at = now()
			WHERE id = $1 RETURNING `+Columns, string(id), string(out.Phase), out.Reason, out.Message, endpoint))
		if err != nil {
			return err
		}
		if next.Phase != cur.Phase || cur.AgentLostAt != nil {
			reason := out.Reason
			if cur.AgentLostAt != nil && reason == "" {
				reason = sessions.ReasonAgentReturned
			}
			if err := InsertEvent(ctx, tx, sessions.Event{SessionID: id, Kind: sessions.EventPhase, Phase: next.Phase,
				Desired: next.Desired, Generation: next.Generation, Reason: reason, Message: out.Message, Actor: actor}); err != nil {
				return err
			}
		}
		return NotifyChange(ctx, tx, next)
	})
	return changed, err
}

// StaleStatus lists sessions of the context's tenant whose agent reported something newer
// than what was folded: the periodic re-read that covers lost notifications.
func (s *Store) StaleStatus(ctx context.Context, limit int) ([]sessions.ID, error) {
	var out []sessions.ID
	err := s.db.InTenantTx(ctx, readOnly, func(ctx context.Context, tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT s.id FROM sessions s JOIN session_status st ON st.session_id = s.id
			WHERE s.deleted_at IS NULL AND st.agent_id = s.agent_id
			  AND (s.status_observed_at IS NULL OR st.observed_at > s.status_observed_at)
			LIMIT $1`, limit)
		if err != nil {
			return err
		}
		out, err = pgx.CollectRows(rows, pgx.RowTo[sessions.ID])
		return err
	})
	return out, err
}

var readOnly = tenantdb.TxOptions{ReadOnly: true}

// lastTraffic is a session's last stream traffic as the gateway recorded it
// (session_traffic), NULL without any (which greatest ignores).
const lastTraffic = `(SELECT t.last_traffic_at FROM session_traffic t WHERE t.session_id = sessions.id)`

// Timers configure Reap.
type Timers struct {
	// Progress is how long a session may stay Pending, Scheduling, Starting or Stopping
	// before it is marked Failed.
	Progress time.Duration
	// Limit bounds the sessions each rule handles per call.
	Limit int
}

// Reaped counts what one Reap call did.
type Reaped struct {
	Failed, Hibernated, Stopped, Purged int
}

// Reap applies the time rules to the context's tenant: a session that made no progress
// within t.Progress fails; a running session idle for its idle timeout hibernates; a
// session older than its maximum duration stops. Each session is decided again under its
// row lock, so a heartbeat or a report that lands meanwhile wins.
func (s *Store) Reap(ctx context.Context, t Timers, actor string) (Reaped, error) {
	var r Reaped
	if t.Limit <= 0 {
		t.Limit = 500
	}
	type rule struct {
		where  string
		args   []any
		count  *int
		decide func(cur sessions.Session, now time.Time) (sessions.Decision, error)
	}
	progressing := func(p sessions.Phase) bool {
		return p == sessions.PhasePending || p == sessions.PhaseScheduling || p == sessions.PhaseStarting || p == sessions.PhaseStopping
	}
	rules := []rule{{
		where: `phase IN ('Pending', 'Scheduling', 'Starting', 'Stopping') AND phase_since < now() - make_interval(secs => $1)`,
		args:  []any{t.Progress.Seconds()}, count: &r.Failed,
		decide: func(cur sessions.Session, now time.Time) (sessions.Decision, error) {
			if !progressing(cur.Phase) || now.Sub(cur.PhaseSince) < t.Progress {
				return sessions.Decision{Noop: true}, nil
			}
			why := cur.Reason
			if cur.Message != "" {
				why += ": " + cur.Message
			}
			return sessions.Decide(cur, sessions.ActionFail, sessions.ReasonProgressDeadline,
				fmt.Sprintf("no progress in %s for %s (last: %s)", cur.Phase, t.Progress, why))
		},
	}, {
		// Activity is the later of what the API records (heartbeats, wakes) and the
		// stream traffic the gateway records in its own table.
		where: `desired = 'running' AND phase = 'Running' AND idle_timeout_seconds > 0
			AND greatest(last_activity, ` + lastTraffic + `) < now() - make_interval(secs => idle_timeout_seconds)`,
		count: &r.Hibernated,
		decide: func(cur sessions.Session, now time.Time) (sessions.Decision, error) {
			// Transition reads cur's activity with its traffic (see rowColumns), as of
			// the row lock: the gateway writes traffic to its own table, which the lock
			// does not cover, so traffic after this read does not save the session.
			idle := time.Duration(cur.IdleTimeoutSeconds) * time.Second
			if cur.Desired != sessions.DesiredRunning || cur.Phase != sessions.PhaseRunning || now.Sub(cur.LastActivity) < idle {
				return sessions.Decision{Noop: true}, nil
			}
			return sessions.Decide(cur, sessions.ActionHibernate, sessions.ReasonIdleTimeout,
				fmt.Sprintf("no activity for %s", idle))
		},
	}, {
		where: `desired IN ('running', 'hibernated') AND max_duration_seconds > 0
			AND created_at < now() - make_interval(secs => max_duration_seconds)`,
		count: &r.Stopped,
		decide: func(cur sessions.Session, now time.Time) (sessions.Decision, error) {
			max := time.Duration(cur.MaxDurationSeconds) * time.Second
			if cur.Desired == sessions.DesiredStopped || now.Sub(cur.CreatedAt) < max {
				return sessions.Decision{Noop: true}, nil
			}
			return sessions.Decide(cur, sessions.ActionStop, sessions.ReasonMaxDuration,
				fmt.Sprintf("the session reached its maximum duration of %s", max))
		},
	}}
	for _, ru := range rules {
		var ids []sessions.ID
		err := s.db.InTenantTx(ctx, readOnly, func(ctx context.Context, tx pgx.Tx) error {
			args := append([]any{}, ru.args...)
			args = append(args, t.Limit)
			rows, err := tx.Query(ctx, fmt.Sprintf(`SELECT id FROM sessions WHERE deleted_at IS NULL AND %s LIMIT $%d`,
				ru.where, len(args)), args...)
			if err != nil {
				return err
			}
			ids, err = pgx.CollectRows(rows, pgx.RowTo[sessions.ID])
			return err
		})
		if err != nil {
			return r, err
		}
		for _, id := range ids {
			before := sessions.Session{}
			after, err := s.Transition(ctx, id, sessions.Scope{}, actor, func(cur sessions.Session) (sessions.Decision, error) {
				before = cur
				return ru.decide(cur, time.Now())
			})
			switch {
			case apperr.IsCode(err, apperr.NotFound), apperr.IsCode(err, apperr.Conflict):
				continue // deleted or moved on meanwhile
			case err != nil:
				return r, err
			}
			if after.Generation != before.Generation || after.Phase != before.Phase {
				*ru.count++
			}
		}
	}
	// Housekeeping: idempotency records live a day; a deleted session's row goes a day after,
	// once its agent has been told (its events stay, as the record).
	err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM session_idempotency WHERE created_at < now() - interval '24 hours'`); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `DELETE FROM sessions WHERE deleted_at < now() - interval '24 hours' AND dispatched_generation >= generation`)
		if err != nil {
			return err
		}
		r.Purged = int(tag.RowsAffected())
		if r.Purged > 0 {
			_, err = tx.Exec(ctx, `DELETE FROM session_traffic t WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id)`)
		}
		return err
	})
	return r, err
}
