package postgres

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/services/sessions"
)

// maxGroup bounds the creates one group transaction commits.
const maxGroup = 64

// Creates of one tenant queue on its usage row, which each holds from its charge to the
// end of its commit, WAL flush included: one create per flush, however many wait. A group
// commits the creates that queued meanwhile in one transaction instead: the tenant's row
// (then its users' rows, the same order as every charge) is locked once, the quota
// decisions are made in order in Go against the locked counters (so they are exactly the
// ones the creates would have met one by one), and the admitted creates' rows, events,
// audit entries, usage and notifications go in one pipelined round trip and one commit.
// Should the group's transaction fail, each of its creates runs alone, so that one bad
// request cannot fail the others.
//
// A queued create whose caller has gone (its context is done: the client disconnected or
// timed out) is dropped once the group holds the usage rows, just before the decisions:
// its caller got an error, so its session must not appear and count against the quotas.
// What remains is the window every request has: a caller that goes after that point (the
// group's last round trip and its commit) gets an error for a session that exists, and
// learns the truth as after any timeout, by listing or by retrying with an idempotency
// key.
type group struct {
	mu   sync.Mutex
	wait map[tenant.ID][]*groupCreate
	busy map[tenant.ID]bool
}

type groupCreate struct {
	ctx   context.Context
	rec   sessions.Record
	actor string
	out   sessions.Session
	err   error
	done  chan struct{}
}

// createGrouped queues a create (without idempotency key) and returns its outcome. The
// first create to find its tenant idle leads: it commits what has queued, its own
// included, and hands the lead on if more arrived meanwhile.
func (s *Store) createGrouped(ctx context.Context, rec sessions.Record, actor string) (sessions.Session, error) {
	tid, _ := tenant.FromContext(ctx)
	c := &groupCreate{ctx: ctx, rec: rec, actor: actor, done: make(chan struct{})}
	g := &s.group
	g.mu.Lock()
	if g.wait == nil {
		g.wait, g.busy = map[tenant.ID][]*groupCreate{}, map[tenant.ID]bool{}
	}
	g.wait[tid] = append(g.wait[tid], c)
	lead := !g.busy[tid]
	g.busy[tid] = true
	g.mu.Unlock()
	if lead {
		// The leader's create is in the group it commits, so its outcome is settled
		// now, whatever its context says.
		s.lead(tid)
		return c.out, c.err
	}
	select {
	case <-c.done:
		return c.out, c.err
	case <-ctx.Done():
		// Unless the group has passed the point where it drops the creates of callers
		// that have gone (see group), this create will not commit.
		return sessions.Session{}, ctx.Err()
	}
}

// lead commits the tenant's queued creates, a group at a time, until none are left. The
// leader's own create is in the first group, so it waits for one group only: later
// groups are led on a goroutine.
func (s *Store) lead(tid tenant.ID) {
	g := &s.group
	g.mu.Lock()
	batch := g.wait[tid]
	if len(batch) > maxGroup {
		batch = batch[:maxGroup]
	}
	g.wait[tid] = g.wait[tid][len(batch):]
	g.mu.Unlock()
	s.commitGroup(batch)
	g.mu.Lock()
	more := len(g.wait[tid]) > 0
	if !more {
		delete(g.wait, tid)
		delete(g.busy, tid)
	}
	g.mu.Unlock()
	if more {
		go s.lead(tid)
	}
}

func (s *Store) commitGroup(all []*groupCreate) {
	defer func() {
		for _, c := range all {
			close(c.done)
		}
	}()
	// Callers that went while queued are dropped here already; groupTx drops those that
	// go while it waits for the usage rows.
	var batch []*groupCreate
	for _, c := range all {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			continue
		}
		batch = append(batch, c)
	}
	if len(batch) == 0 {
		return
	}
	if len(batch) == 1 {
		c := batch[0]
		c.out, _, c.err = s.createAlone(c.ctx, c.rec, nil, c.actor)
		return
	}
	// The group's transaction must not die with its leader's request: the others wait.
	ctx := context.WithoutCancel(batch[0].ctx)
	if err := s.db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error { return s.groupTx(ctx, tx, batch) }); err != nil {
		for _, c := range batch {
			c.out, _, c.err = s.createAlone(c.ctx, c.rec, nil, c.actor)
		}
	}
}

// groupTx runs the group's creates in tx, setting each one's outcome.
func (s *Store) groupTx(ctx context.Context, tx pgx.Tx, batch []*groupCreate) error {
	owners := map[string]bool{}
	var users []string
	for _, c := range batch {
		if o := c.rec.Session.Owner; !owners[o] {
			owners[o] = true
			users = append(users, o)
		}
	}
	sort.Strings(users)
	subjects := append([]string{tenantSubject}, users...)
	// Round trip 1: lock the tenant's usage row, then its users' (creating missing ones),
	// and read the limits.
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO session_usage AS u (subject) VALUES ($1) ON CONFLICT (subject) DO UPDATE SET subject = u.subject`, tenantSubject)
	b.Queue(`INSERT INTO session_usage (subject) SELECT unnest($1::text[]) ORDER BY 1 ON CONFLICT (subject) DO NOTHING`, users)
	b.Queue(`SELECT subject, sessions, cpu_millis, memory_bytes FROM session_usage WHERE subject = ANY ($1) ORDER BY subject FOR UPDATE`, subjects)
	b.Queue(settingsSQL, sessions.SettingsKey)
	b.Queue(`SELECT user_id, max_sessions, max_cpu_millis, max_memory_bytes FROM session_user_quotas WHERE user_id = ANY ($1)`, users)
	br := tx.SendBatch(ctx, b)
	for range 2 {
		if _, err := br.Exec(); err != nil {
			br.Close()
			return err
		}
	}
	usage := map[string]*sessions.Usage{}
	var subj string
	var u sessions.Usage
	rows, _ := br.Query()
	if _, err := pgx.ForEachRow(rows, []any{&subj, &u.Sessions, &u.CPUMillis, &u.MemoryBytes}, func() error {
		v := u
		usage[subj] = &v
		return nil
	}); err != nil {
		br.Close()
		return err
	}
	st, err := decodeSettings(br.QueryRow())
	if err != nil {
		br.Close()
		return err
	}
	overrides := map[string]sessions.Quota{}
	var q sessions.Quota
	rows, _ = br.Query()
	if _, err := pgx.ForEachRow(rows, []any{&subj, &q.MaxSessions, &q.MaxCPUMillis, &q.MaxMemoryBytes}, func() error {
		overrides[subj] = q
		q = sessions.Quota{}
		return nil
	}); err != nil {
		br.Close()
		return err
	}
	if err := br.Close(); err != nil {
		return err
	}
	for _, sub := range subjects {
		if usage[sub] == nil {
			return fmt.Errorf("usage row of %q missing after its upsert", sub)
		}
	}

	// The quota decisions, in queue order, exactly as charge makes them one by one. The
	// creates whose callers have gone are dropped first, now that the usage rows are
	// held: waiting for them is where a group spends its time under load.
	b = &pgx.Batch{}
	var admitted []*groupCreate
	for _, c := range batch {
		if err := c.ctx.Err(); err != nil {
			c.err = err
			continue
		}
		n := c.rec.Session
		one := sessions.Usage{Sessions: 1, CPUMillis: n.CPUMillis, MemoryBytes: n.MemoryBytes}
		checks := []struct {
			subject, who string
			q            sessions.Quota
		}{{tenantSubject, "the tenant's", st.Tenant}, {n.Owner, "your", st.User.Merge(overrides[n.Owner])}}
		for _, ch := range checks {
			if what := one.Exceeds(ch.q); what != "" {
				c.err = apperr.New(apperr.QuotaExceeded, "this session alone exceeds %s %s quota", ch.who, what)
				break
			}
			cur := usage[ch.subject]
			after := sessions.Usage{Sessions: cur.Sessions + 1, CPUMillis: cur.CPUMillis + one.CPUMillis, MemoryBytes: cur.MemoryBytes + one.MemoryBytes}
			if what := after.Exceeds(ch.q); what != "" {
				c.err = apperr.New(apperr.QuotaExceeded, "starting this session would exceed %s %s quota; hibernate or stop another session first", ch.who, what)
				break
			}
		}
		if c.err != nil {
			continue
		}
		for _, sub := range []string{tenantSubject, n.Owner} {
			cur := usage[sub]
			cur.Sessions, cur.CPUMillis, cur.MemoryBytes = cur.Sessions+1, cur.CPUMillis+one.CPUMillis, cur.MemoryBytes+one.MemoryBytes
		}
		admitted = append(admitted, c)
		queueInsert(b, c.rec)
		queueCreated(b, n, c.actor)
		if err := queueAudit(c.ctx, b, c.actor, "session.create", n.ID, map[string]any{"template": n.Template,
			"cpu_millis": n.CPUMillis, "memory_bytes": n.MemoryBytes}); err != nil {
			return err
		}
	}
	if len(admitted) == 0 {
		return nil
	}
	// Round trip 2: the admitted creates and the counters as they now stand.
	var us []string
	var un, uc, um []int64
	for _, sub := range subjects {
		v := usage[sub]
		us, un, uc, um = append(us, sub), append(un, v.Sessions), append(uc, v.CPUMillis), append(um, v.MemoryBytes)
	}
	b.Queue(`UPDATE session_usage AS u SET sessions = v.n, cpu_millis = v.c, memory_bytes = v.m
		FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(s, n, c, m) WHERE u.subject = v.s`, us, un, uc, um)
	tid, _ := tenant.FromContext(ctx)
	b.Queue(`SELECT pg_notify($1, $2)`, sessions.WorkChannel, string(tid))
	changes := make([]string, len(admitted))
	for i, c := range admitted {
		changes[i] = ChangePayload(ctx, c.rec.Session) // id and owner: known before the insert
	}
	QueueNotifyChanges(b, changes)
	br = tx.SendBatch(ctx, b)
	defer br.Close()
	for _, c := range admitted {
		if c.out, err = Scan(br.QueryRow()); err != nil {
			return fmt.Errorf("inserting session: %w", err)
		}
		for range 2 { // its event and audit entry
			if _, err := br.Exec(); err != nil {
				return err
			}
		}
	}
	return br.Close()
}
