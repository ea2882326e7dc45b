package postgres_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// pendingOf returns the agent's pending work by session.
func pendingOf(t *testing.T, s *postgres.Store, ctx context.Context, id gateway.AgentID) map[gateway.SessionID]gateway.Assignment {
	t.Helper()
	p, err := s.Pending(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	out := map[gateway.SessionID]gateway.Assignment{}
	for _, a := range p {
		if _, dup := out[a.SessionID]; dup {
			t.Fatalf("pending names %s twice: %+v", a.SessionID, p)
		}
		out[a.SessionID] = a
	}
	return out
}

func newAgents(t *testing.T, s *postgres.Store, ctx context.Context, n int) []gateway.AgentID {
	t.Helper()
	ids := make([]gateway.AgentID, n)
	for i := range ids {
		ids[i] = gateway.NewAgentID()
		if err := s.CreateAgent(ctx, gateway.Agent{ID: ids[i], Name: fmt.Sprintf("a%d", i)}, "tok"); err != nil {
			t.Fatal(err)
		}
	}
	return ids
}

// listenTo opens a connection LISTENing on the agents' channels.
func listenTo(t *testing.T, env *tenantstest.Env, ids ...gateway.AgentID) *pgx.Conn {
	t.Helper()
	conn, err := pgx.ConnectConfig(context.Background(), env.Pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	for _, id := range ids {
		if _, err := conn.Exec(context.Background(), "LISTEN "+pgx.Identifier{gateway.AgentChannel(id)}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
	return conn
}

// drain returns the notifications that arrive within a short wait, by channel.
func drain(t *testing.T, conn *pgx.Conn) map[string]int {
	t.Helper()
	got := map[string]int{}
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		n, err := conn.WaitForNotification(ctx)
		cancel()
		if err != nil {
			return got
		}
		got[n.Channel]++
	}
}

// AssignMany writes a batch in one transaction: each input as Assign would, one result
// per input in order, an unknown agent or a conflict failing only its own input, and one
// announcement per agent whose work changed. Repeating the batch changes nothing.
func TestAssignMany(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	ag := newAgents(t, s, ctx, 3)
	if _, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "taken", AgentID: ag[2], Desired: wire.DesiredRunning}, ""); err != nil {
		t.Fatal(err)
	}
	conn := listenTo(t, env, ag...)
	var ins []gateway.AssignmentInput
	for i := range 10 {
		ins = append(ins, gateway.AssignmentInput{SessionID: gateway.SessionID(fmt.Sprintf("s%02d", i)), AgentID: ag[i%2],
			Desired: wire.DesiredRunning, Spec: json.RawMessage(fmt.Sprintf(`{"n":%d}`, i))})
	}
	ins = append(ins,
		gateway.AssignmentInput{SessionID: "ghost", AgentID: gateway.NewAgentID(), Desired: wire.DesiredRunning},
		gateway.AssignmentInput{SessionID: "taken", AgentID: ag[0], Desired: wire.DesiredRunning})
	res, err := s.AssignMany(ctx, ins, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != len(ins) {
		t.Fatalf("%d results for %d inputs", len(res), len(ins))
	}
	for i := range 10 {
		r := res[i]
		if r.Err != nil || r.Assignment.SessionID != ins[i].SessionID || r.Assignment.AgentID != ins[i].AgentID ||
			r.Assignment.Generation != 1 || !r.Assignment.Pending() {
			t.Fatalf("result %d: %+v", i, r)
		}
	}
	if !apperr.IsCode(res[10].Err, apperr.NotFound) {
		t.Fatalf("unknown agent: %v", res[10].Err)
	}
	if !apperr.IsCode(res[11].Err, apperr.Conflict) {
		t.Fatalf("session of another agent without move: %v", res[11].Err)
	}
	if got := drain(t, conn); got[gateway.AgentChannel(ag[0])] != 1 || got[gateway.AgentChannel(ag[1])] != 1 || got[gateway.AgentChannel(ag[2])] != 0 {
		t.Fatalf("notifications %v: want one for each of the two changed agents", got)
	}
	if p := pendingOf(t, s, ctx, ag[0]); len(p) != 5 {
		t.Fatalf("agent 0 has %d pending, want 5", len(p))
	}

	// The same batch again: nothing changes, nobody is told.
	again, err := s.AssignMany(ctx, ins[:10], "")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range again {
		if r.Err != nil || r.Assignment.Generation != 1 {
			t.Fatalf("repeat %d: %+v", i, r)
		}
	}
	if got := drain(t, conn); len(got) != 0 {
		t.Fatalf("an identical batch announced %v", got)
	}
	// A changed spec bumps only that session.
	ins[3].Spec = json.RawMessage(`{"n":33}`)
	res, err = s.AssignMany(ctx, ins[:10], "")
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		want := int64(1)
		if i == 3 {
			want = 2
		}
		if r.Err != nil || r.Assignment.Generation != want {
			t.Fatalf("after a change, %d: %+v", i, r)
		}
	}
}

// Moving a session retires it on the agent it leaves: that agent gets "deleted" pending,
// at a generation above what it applied, in its desired set too, and its acknowledgement
// settles the retirement; the new agent gets the session. Moving back supersedes the
// retirement. Unassign retires without a new agent and is idempotent.
func TestMoveAndUnassign(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	ag := newAgents(t, s, ctx, 2)
	old, nu := ag[0], ag[1]
	first, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "s1", AgentID: old, Desired: wire.DesiredRunning, Spec: json.RawMessage(`{"x":1}`)}, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, old, "s1", first.Generation, nil); err != nil {
		t.Fatal(err)
	}
	conn := listenTo(t, env, old, nu)
	moved, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "s1", AgentID: nu, Desired: wire.DesiredRunning, Spec: json.RawMessage(`{"x":1}`), Move: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	if moved.AgentID != nu || moved.Generation != first.Generation+1 || moved.AckedGeneration != 0 {
		t.Fatalf("moved: %+v", moved)
	}
	if got := drain(t, conn); got[gateway.AgentChannel(old)] != 1 || got[gateway.AgentChannel(nu)] != 1 {
		t.Fatalf("a move announced %v, want both agents once", got)
	}
	ret := pendingOf(t, s, ctx, old)["s1"]
	if ret.Desired != wire.DesiredDeleted || ret.Generation <= first.Generation {
		t.Fatalf("the old agent's pending work: %+v", ret)
	}
	if p := pendingOf(t, s, ctx, nu)["s1"]; p.Desired != wire.DesiredRunning || string(p.Spec) != `{"x": 1}` {
		t.Fatalf("the new agent's pending work: %+v", p)
	}
	set, err := s.DesiredSet(ctx, old)
	if err != nil || len(set) != 1 || set[0].Desired != wire.DesiredDeleted {
		t.Fatalf("old agent's desired set %+v %v", set, err)
	}
	// The old agent may still report on it (it has not applied the retirement): not refused.
	o := gateway.Owner{Gateway: "gw", Conn: "c-old"}
	if err := s.Claim(context.Background(), old, o); err != nil {
		t.Fatal(err)
	}
	if refused, err := s.ReportStatus(ctx, old, o, []wire.SessionStatus{{SessionID: "s1", Phase: wire.PhaseStopping, ObservedAt: time.Now()}}); err != nil || len(refused) != 0 {
		t.Fatalf("the old agent's report: refused %v, %v", refused, err)
	}
	if st, err := s.SessionStatus(ctx, "s1"); err == nil && st.AgentID == old && st.Phase == wire.PhaseStopping {
		t.Fatalf("the old agent's report was stored as the session's status: %+v", st)
	}
	// Without Move, the session's new agent keeps it.
	if _, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "s1", AgentID: old, Desired: wire.DesiredRunning}, ""); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("assign back without move: %v", err)
	}
	// The old agent acknowledges the retirement: nothing is left for it.
	if err := s.Ack(ctx, old, "s1", ret.Generation, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(ctx, old, "s1", ret.Generation, nil); err != nil {
		t.Fatalf("a duplicate acknowledgement: %v", err)
	}
	if p := pendingOf(t, s, ctx, old); len(p) != 0 {
		t.Fatalf("pending after the ack: %+v", p)
	}
	if set, _ := s.DesiredSet(ctx, old); len(set) != 0 {
		t.Fatalf("desired set after the ack: %+v", set)
	}

	// Back to the old agent: the retirement there is superseded, the new one retired.
	back, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "s1", AgentID: old, Desired: wire.DesiredRunning, Move: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	if back.Generation <= ret.Generation {
		t.Fatalf("moving back: generation %d, not above the retirement's %d", back.Generation, ret.Generation)
	}
	if p := pendingOf(t, s, ctx, old); len(p) != 1 || p["s1"].Desired != wire.DesiredRunning {
		t.Fatalf("old agent after moving back: %+v", p)
	}
	if p := pendingOf(t, s, ctx, nu); len(p) != 1 || p["s1"].Desired != wire.DesiredDeleted {
		t.Fatalf("new agent after moving back: %+v", p)
	}

	// Unassign: the agent is told to delete, the session has no assignment, and doing it
	// again changes nothing.
	drain(t, conn)
	if err := s.Unassign(ctx, "s1", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Assignment(ctx, "s1"); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("assignment after unassign: %v", err)
	}
	p := pendingOf(t, s, ctx, old)["s1"]
	if p.Desired != wire.DesiredDeleted || p.Generation <= back.Generation {
		t.Fatalf("old agent after unassign: %+v", p)
	}
	if got := drain(t, conn); got[gateway.AgentChannel(old)] != 1 {
		t.Fatalf("unassign announced %v", got)
	}
	if err := s.Unassign(ctx, "s1", ""); err != nil {
		t.Fatalf("unassigning again: %v", err)
	}
	if got := drain(t, conn); len(got) != 0 {
		t.Fatalf("a second unassign announced %v", got)
	}
	// Assigned again to the agent that applied the retirement: the generation is above it.
	again, err := s.Assign(ctx, gateway.AssignmentInput{SessionID: "s1", AgentID: old, Desired: wire.DesiredRunning}, "")
	if err != nil {
		t.Fatal(err)
	}
	if again.Generation <= p.Generation {
		t.Fatalf("reassigned at generation %d, not above the retirement's %d", again.Generation, p.Generation)
	}
	if pend := pendingOf(t, s, ctx, old); len(pend) != 1 || pend["s1"].Desired != wire.DesiredRunning {
		t.Fatalf("old agent after reassigning: %+v", pend)
	}
}

// Another tenant can neither move a session onto its agent nor unassign or acknowledge a
// retirement it does not own.
func TestMoveAcrossTenants(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	ta, _ := env.Tenant(t, "alpha")
	tb, _ := env.Tenant(t, "bravo")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ca, cb := ctxOf(ta.ID), ctxOf(tb.ID)
	aa := newAgents(t, s, ca, 2)
	bb := newAgents(t, s, cb, 1)
	if _, err := s.Assign(ca, gateway.AssignmentInput{SessionID: "s1", AgentID: aa[0], Desired: wire.DesiredRunning}, ""); err != nil {
		t.Fatal(err)
	}
	// A to B's agent: no such agent in A.
	res, err := s.AssignMany(ca, []gateway.AssignmentInput{{SessionID: "s1", AgentID: bb[0], Desired: wire.DesiredRunning, Move: true}}, "")
	if err != nil || !apperr.IsCode(res[0].Err, apperr.NotFound) {
		t.Fatalf("move to another tenant's agent: %+v %v", res, err)
	}
	// B unassigns "s1": B has no such session, A's is untouched.
	if err := s.Unassign(cb, "s1", ""); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Assignment(ca, "s1"); err != nil || got.AgentID != aa[0] {
		t.Fatalf("A's assignment after B's unassign: %+v %v", got, err)
	}
	// Moved within A, B cannot acknowledge A's retirement.
	if _, err := s.Assign(ca, gateway.AssignmentInput{SessionID: "s1", AgentID: aa[1], Desired: wire.DesiredRunning, Move: true}, ""); err != nil {
		t.Fatal(err)
	}
	if err := s.Ack(cb, aa[0], "s1", 99, nil); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("B acknowledging A's retirement: %v", err)
	}
	if p := pendingOf(t, s, ca, aa[0]); p["s1"].Desired != wire.DesiredDeleted {
		t.Fatalf("A's retirement: %+v", p)
	}
}

// Concurrent batches moving the same sessions to different agents serialise: every
// session ends on exactly one agent, and every agent it left has a retirement.
func TestAssignManyConcurrentMoves(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	ag := newAgents(t, s, ctx, 4)
	const n, rounds = 50, 4
	for round := range rounds {
		// Fresh sessions each round, so that batches also race to insert them.
		sid := func(i int) gateway.SessionID { return gateway.SessionID(fmt.Sprintf("r%d-s%02d", round, i)) }
		var wg sync.WaitGroup
		errs := make(chan error, len(ag))
		for _, id := range ag {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ins := make([]gateway.AssignmentInput, n)
				for i := range ins {
					ins[i] = gateway.AssignmentInput{SessionID: sid(i), AgentID: id, Desired: wire.DesiredRunning, Move: true}
				}
				res, err := s.AssignMany(ctx, ins, "")
				if err == nil {
					for _, r := range res {
						if r.Err != nil {
							err = r.Err
						}
					}
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		pending := map[gateway.AgentID]map[gateway.SessionID]gateway.Assignment{}
		for _, id := range ag {
			pending[id] = pendingOf(t, s, ctx, id)
		}
		for i := range n {
			cur, err := s.Assignment(ctx, sid(i))
			if err != nil {
				t.Fatal(err)
			}
			for _, id := range ag {
				p, ok := pending[id][sid(i)]
				switch {
				case id == cur.AgentID && p.Desired != wire.DesiredRunning:
					t.Fatalf("%s: its agent's pending work is %+v", sid(i), p)
				case id != cur.AgentID && ok && p.Desired != wire.DesiredDeleted:
					t.Fatalf("%s is on %s, and pending on %s as %+v", sid(i), cur.AgentID, id, p)
				}
			}
		}
	}
}

// What placement sees of an agent is announced on AgentsChannel when it changes (Hello,
// capacity, draining, release), with the tenant as payload, and a heartbeat that changes
// nothing is not.
func TestAgentChangesAnnounced(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	id := newAgents(t, s, ctx, 1)[0]
	o := gateway.Owner{Gateway: "gw", Conn: "c1"}
	if err := s.Claim(context.Background(), id, o); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.ConnectConfig(context.Background(), env.Pool.Config().ConnConfig.Copy())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(context.Background(), "LISTEN "+pgx.Identifier{gateway.AgentsChannel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	announced := func() int {
		n := 0
		for {
			wctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			note, err := conn.WaitForNotification(wctx)
			cancel()
			if err != nil {
				return n
			}
			if note.Payload != string(a.ID) {
				t.Fatalf("payload %q, want the tenant %q", note.Payload, a.ID)
			}
			n++
		}
	}
	c := gateway.Capacity{CPUAllocatableMillis: 4000, MemoryAllocatableBytes: 8 << 30, MaxSessions: 10}
	beat := func(o gateway.Owner) error {
		lost, err := s.RecordHeartbeats(ctx, []gateway.Beat{{Agent: id, Conn: o.Conn, Capacity: &c}})
		if err == nil && len(lost) > 0 {
			return gateway.ErrNotOwner
		}
		return err
	}
	steps := []struct {
		name string
		do   func() error
		want bool
	}{
		{"hello", func() error { return s.RecordHello(ctx, id, o, gateway.Hello{Capacity: c}) }, true},
		{"same beat", func() error { return beat(o) }, false},
		{"usage only", func() error { c.CPUUsedMillis = 100; c.Sessions = 1; return beat(o) }, false},
		{"capacity", func() error { c.CPUAllocatableMillis = 8000; return beat(o) }, true},
		{"drain", func() error {
			yes := true
			_, err := s.UpdateAgent(ctx, id, gateway.AgentPatch{Draining: &yes})
			return err
		}, true},
		{"rename", func() error { n := "x"; _, err := s.UpdateAgent(ctx, id, gateway.AgentPatch{Name: &n}); return err }, false},
		{"release", func() error { return s.Release(ctx, id, o) }, true},
		{"connect", func() error { _, err := s.Connect(ctx, id, o, gateway.Hello{Capacity: c}); return err }, true},
		{"beat after connect", func() error { return beat(o) }, false},
		// A beat without capacity (wire 1.2) changes nothing placement reads.
		{"liveness only", func() error {
			_, err := s.RecordHeartbeats(ctx, []gateway.Beat{{Agent: id, Conn: o.Conn}})
			return err
		}, false},
	}
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := announced(); (got > 0) != st.want {
			t.Fatalf("%s: %d announcements, want any: %v", st.name, got, st.want)
		}
	}
	// A fenced-out connection's beat changes nothing and announces nothing.
	if err := beat(gateway.Owner{Gateway: "gw", Conn: "stale"}); err != gateway.ErrNotOwner {
		t.Fatalf("stale beat: %v", err)
	}
	if got := announced(); got != 0 {
		t.Fatalf("a stale beat made %d announcements", got)
	}
}
