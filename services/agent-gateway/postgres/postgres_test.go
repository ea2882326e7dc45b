package postgres_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/tenants/tenantstest"
)

func ctxOf(id tenant.ID) context.Context {
	return authtest.Context(context.Background(), auth.Principal{Kind: auth.KindUser, Tenant: id, Subject: "u", Role: auth.RoleAdmin})
}

// Another tenant sees nothing of an agent, its assignments or its statuses, and cannot
// change or delete them, even knowing their ids.
func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	b, _ := env.Tenant(t, "bravo")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ca, cb := ctxOf(a.ID), ctxOf(b.ID)
	id := gateway.NewAgentID()
	if err := s.CreateAgent(ca, gateway.Agent{ID: id, Name: "edge", Tags: []string{"x"}}, "tok"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Assign(ca, gateway.AssignmentInput{SessionID: "s1", AgentID: id, Desired: wire.DesiredRunning}, ""); err != nil {
		t.Fatal(err)
	}
	o := gateway.Owner{Gateway: "gw", Conn: "c1"}
	if err := s.Claim(context.Background(), id, o); err != nil {
		t.Fatal(err)
	}
	if refused, err := s.ReportStatus(ca, id, o, []wire.SessionStatus{{SessionID: "s1", Phase: wire.PhaseRunning, ObservedAt: time.Now()}}); err != nil || len(refused) != 0 {
		t.Fatalf("report: %v %v", refused, err)
	}

	if list, err := s.Agents(cb); err != nil || len(list) != 0 {
		t.Fatalf("B lists %v %v", list, err)
	}
	for name, err := range map[string]error{
		"agent":      func() error { _, err := s.Agent(cb, id); return err }(),
		"update":     func() error { n := "x"; _, err := s.UpdateAgent(cb, id, gateway.AgentPatch{Name: &n}); return err }(),
		"delete":     s.DeleteAgent(cb, id),
		"assignment": func() error { _, err := s.Assignment(cb, "s1"); return err }(),
		"status":     func() error { _, err := s.SessionStatus(cb, "s1"); return err }(),
		"ack":        s.Ack(cb, id, "s1", 1, nil),
		"assign": func() error {
			_, err := s.Assign(cb, gateway.AssignmentInput{SessionID: "s9", AgentID: id, Desired: wire.DesiredRunning}, "")
			return err
		}(),
	} {
		if !apperr.IsCode(err, apperr.NotFound) {
			t.Errorf("%s from tenant B: %v, want not_found", name, err)
		}
	}
	// B's "agent" report for A's agent finds nothing of B's to touch.
	if _, err := s.ReportStatus(cb, id, o, []wire.SessionStatus{{SessionID: "s1", Phase: wire.PhaseFailed}}); err == nil {
		if st, _ := s.SessionStatus(ca, "s1"); st.Phase != wire.PhaseRunning {
			t.Fatalf("B overwrote A's status: %+v", st)
		}
	}
	if tid, err := s.DirectoryTenant(context.Background(), id); err != nil || tid != a.ID {
		t.Fatalf("directory %s %v", tid, err)
	}
	// No tenant in the context: nothing at all.
	if _, err := s.Agents(context.Background()); err == nil {
		t.Fatal("a context without a tenant listed agents")
	}
}

// The claim check reports exactly the agents whose claim was lost: superseded, released
// or deleted.
func TestOwnership(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	x, y, z := gateway.NewAgentID(), gateway.NewAgentID(), gateway.NewAgentID()
	for _, id := range []gateway.AgentID{x, y, z} {
		if err := s.CreateAgent(ctx, gateway.Agent{ID: id, Name: string(id)}, ""); err != nil {
			t.Fatal(err)
		}
		if err := s.Claim(context.Background(), id, gateway.Owner{Gateway: "gw-0", Conn: "old-" + string(id)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Claim(context.Background(), y, gateway.Owner{Gateway: "gw-1", Conn: "new"}); err != nil {
		t.Fatal(err)
	}
	held := map[gateway.AgentID]string{x: "old-" + string(x), y: "old-" + string(y), z: "old-" + string(z)}
	lost, err := s.LostClaims(context.Background(), held)
	if err != nil || len(lost) != 1 || lost[0] != y {
		t.Fatalf("lost %v %v, want [%s]", lost, err, y)
	}
	if err := s.DeleteAgent(ctx, z); err != nil {
		t.Fatal(err)
	}
	lost, err = s.LostClaims(context.Background(), held)
	slices.Sort(lost)
	if want := []gateway.AgentID{y, z}; err != nil || !slices.Equal(lost, slices.Sorted(slices.Values(want))) {
		t.Fatalf("after a deletion: lost %v %v, want %v", lost, err, want)
	}
	delete(held, z)
	// The superseded connection's writes are fenced off, one beat of a batch at a time.
	lost, err = s.RecordHeartbeats(ctx, []gateway.Beat{
		{Agent: x, Conn: "old-" + string(x), Capacity: &gateway.Capacity{Sessions: 3}},
		{Agent: y, Conn: "old-" + string(y), Capacity: &gateway.Capacity{Sessions: 4}}})
	if err != nil || len(lost) != 1 || lost[0] != y {
		t.Fatalf("batched heartbeats: lost %v %v, want [%s]", lost, err, y)
	}
	if a, err := s.Agent(ctx, x); err != nil || a.State != gateway.StateOnline || a.Capacity.Sessions != 3 || a.LastSeen == nil {
		t.Fatalf("after a batched heartbeat: %+v %v", a, err)
	}
	if a, err := s.Agent(ctx, y); err != nil || a.State != gateway.StateOffline || a.Capacity.Sessions != 0 {
		t.Fatalf("a stale beat was written: %+v %v", a, err)
	}
	if err := s.Release(ctx, y, gateway.Owner{Gateway: "gw-0", Conn: "old-" + string(y)}); err != gateway.ErrNotOwner {
		t.Fatalf("stale release: %v", err)
	}
	// A batch release is fenced per agent: y's stale connection releases nothing.
	if err := s.ReleaseMany(ctx, map[gateway.AgentID]string{x: "old-" + string(x), y: "old-" + string(y)}); err != nil {
		t.Fatal(err)
	}
	if lost, err := s.LostClaims(context.Background(), map[gateway.AgentID]string{y: "new"}); err != nil || len(lost) != 0 {
		t.Fatalf("a stale batch release took y from its owner: lost %v %v", lost, err)
	}
	if a, err := s.Agent(ctx, x); err != nil || a.State != gateway.StateOffline {
		t.Fatalf("after a batch release: %+v %v", a, err)
	}
	if lost, err := s.LostClaims(context.Background(), map[gateway.AgentID]string{x: "old-" + string(x)}); err != nil || len(lost) != 1 {
		t.Fatalf("after its release: lost %v %v, want [%s]", lost, err, x)
	}
	if err := s.Claim(context.Background(), gateway.NewAgentID(), gateway.Owner{Gateway: "gw", Conn: "c"}); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("claiming an unknown agent: %v", err)
	}
}

// Ownership shows the owner row to the agent's own tenant only: the replica the latest
// claim wrote, with that replica's advertised URL and the age of its stamp by the
// database's clock; not live once the replica's row is gone, nothing once released.
func TestOwnershipRow(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	b, _ := env.Tenant(t, "bravo")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	bg := context.Background()
	id := gateway.NewAgentID()
	if err := s.CreateAgent(ctx, gateway.Agent{ID: id, Name: "edge"}, ""); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Ownership(ctx, id); err != nil || o != (gateway.Ownership{}) {
		t.Fatalf("never claimed: %+v %v", o, err)
	}
	gw0, gw1 := "gw-own0-"+string(id), "gw-own1-"+string(id)
	if err := s.RegisterReplica(bg, gw0, "http://10.0.0.1:8080"); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterReplica(bg, gw1, "http://10.0.0.2:8080"); err != nil {
		t.Fatal(err)
	}
	if err := s.Claim(bg, id, gateway.Owner{Gateway: gw0, Conn: "c0"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Claim(bg, id, gateway.Owner{Gateway: gw1, Conn: "c1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Pool.Exec(bg, `UPDATE platform.gateway_replicas SET heartbeat = now() - interval '90 seconds' WHERE id = $1`, gw1); err != nil {
		t.Fatal(err)
	}
	o, err := s.Ownership(ctx, id)
	if err != nil || o.Gateway != gw1 || o.URL != "http://10.0.0.2:8080" || !o.Live || o.Age < 90*time.Second || o.Age > time.Hour {
		t.Fatalf("after two claims and 90 s without a stamp: %+v %v", o, err)
	}
	for name, c := range map[string]context.Context{"another tenant": ctxOf(b.ID), "no tenant": bg} {
		if o, err := s.Ownership(c, id); !apperr.IsCode(err, apperr.NotFound) {
			t.Errorf("%s: %+v %v, want not_found", name, o, err)
		}
	}
	// A stamp advances the heartbeat and keeps the address; registering again replaces it.
	if err := s.StampReplica(bg, gw1, "http://ignored:1"); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Ownership(ctx, id); err != nil || o.Gateway != gw1 || o.URL != "http://10.0.0.2:8080" || !o.Live || o.Age > time.Minute {
		t.Fatalf("stamped: %+v %v", o, err)
	}
	if err := s.RegisterReplica(bg, gw1, ""); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Ownership(ctx, id); err != nil || o.URL != "" || !o.Live {
		t.Fatalf("registered again without a URL: %+v %v", o, err)
	}
	// A replica that stopped cleanly has no row: its owner rows are not live.
	if err := s.RemoveReplica(bg, gw1); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Ownership(ctx, id); err != nil || o.Gateway != gw1 || o.Live {
		t.Fatalf("the replica's row removed: %+v %v", o, err)
	}
	if err := s.Release(ctx, id, gateway.Owner{Gateway: gw1, Conn: "c1"}); err != nil {
		t.Fatal(err)
	}
	if o, err := s.Ownership(ctx, id); err != nil || o.Gateway != "" || o.URL != "" || o.Live {
		t.Fatalf("released: %+v %v", o, err)
	}
}

// A replica's row is created by its first stamp and advanced by the next; removing it
// also removes rows of replicas silent for a day, and nothing else.
func TestReplicaRows(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	s := postgres.New(env.DB, postgres.Thresholds{})
	bg := context.Background()
	stamp := func(id string) time.Time {
		t.Helper()
		var at time.Time
		if err := env.Pool.QueryRow(bg, `SELECT heartbeat FROM platform.gateway_replicas WHERE id = $1`, id).Scan(&at); err != nil {
			t.Fatalf("replica %s: %v", id, err)
		}
		return at
	}
	for _, id := range []string{"gw-a", "gw-b", "gw-dead"} {
		if err := s.StampReplica(bg, id, ""); err != nil {
			t.Fatal(err)
		}
	}
	first := stamp("gw-a")
	// now() is the transaction's start: a later statement stamps a later time.
	if err := s.StampReplica(bg, "gw-a", ""); err != nil {
		t.Fatal(err)
	}
	if again := stamp("gw-a"); !again.After(first) {
		t.Fatalf("second stamp %v, first %v", again, first)
	}
	if _, err := env.Pool.Exec(bg, `UPDATE platform.gateway_replicas SET heartbeat = now() - interval '25 hours' WHERE id = 'gw-dead'`); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveReplica(bg, "gw-a"); err != nil {
		t.Fatal(err)
	}
	rows, _ := env.Pool.Query(bg, `SELECT id FROM platform.gateway_replicas ORDER BY id`)
	left, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || !slices.Equal(left, []string{"gw-b"}) {
		t.Fatalf("replicas left %v %v, want [gw-b]", left, err)
	}
}

// PendingAgents names exactly the listed agents of the context's tenant with
// unacknowledged work: not acknowledged ones, not unlisted ones, not another tenant's.
func TestPendingAgents(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	b, _ := env.Tenant(t, "beta")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ca, cb := ctxOf(a.ID), ctxOf(b.ID)
	busy, done, unlisted := gateway.NewAgentID(), gateway.NewAgentID(), gateway.NewAgentID()
	for _, id := range []gateway.AgentID{busy, done, unlisted} {
		if err := s.CreateAgent(ca, gateway.Agent{ID: id, Name: string(id)}, ""); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Assign(ca, gateway.AssignmentInput{SessionID: gateway.SessionID("s-" + id), AgentID: id, Desired: wire.DesiredRunning}, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Ack(ca, done, gateway.SessionID("s-"+done), 1, nil); err != nil {
		t.Fatal(err)
	}
	got, err := s.PendingAgents(ca, []gateway.AgentID{busy, done})
	if err != nil || len(got) != 1 || got[0] != busy {
		t.Fatalf("pending %v %v, want [%s]", got, err, busy)
	}
	if got, err := s.PendingAgents(cb, []gateway.AgentID{busy, done, unlisted}); err != nil || len(got) != 0 {
		t.Fatalf("another tenant's pending agents: %v %v", got, err)
	}
}

// A heartbeat without capacity (wire 1.2) is liveness only: it marks the agent online and
// seen now, and keeps the capacity stored before, for every beat of a batch that has
// none, beside beats that carry one.
func TestHeartbeatWithoutCapacityKeepsCapacity(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	a, _ := env.Tenant(t, "alpha")
	s := postgres.New(env.DB, postgres.Thresholds{})
	ctx := ctxOf(a.ID)
	x, y := gateway.NewAgentID(), gateway.NewAgentID()
	capX := gateway.Capacity{CPUAllocatableMillis: 4000, CPUUsedMillis: 500, MemoryAllocatableBytes: 8 << 30,
		MemoryUsedBytes: 1 << 30, Sessions: 1, MaxSessions: 10}
	for _, id := range []gateway.AgentID{x, y} {
		if err := s.CreateAgent(ctx, gateway.Agent{ID: id, Name: string(id)}, ""); err != nil {
			t.Fatal(err)
		}
		o := gateway.Owner{Gateway: "gw", Conn: "c-" + string(id)}
		if _, err := s.Connect(ctx, id, o, gateway.Hello{Capacity: capX}); err != nil {
			t.Fatal(err)
		}
	}
	// Both agents were last seen an hour ago and went offline; the beats must bring them
	// back whatever they carry.
	long := time.Now().Add(-time.Hour)
	if err := env.DB.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE agents SET last_seen = $1, state = 'offline'`, long)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	capY := gateway.Capacity{CPUAllocatableMillis: 2000, Sessions: 2}
	lost, err := s.RecordHeartbeats(ctx, []gateway.Beat{{Agent: x, Conn: "c-" + string(x)}, {Agent: y, Conn: "c-" + string(y), Capacity: &capY}})
	if err != nil || len(lost) != 0 {
		t.Fatalf("heartbeats: lost %v, %v", lost, err)
	}
	for id, want := range map[gateway.AgentID]gateway.Capacity{x: capX, y: capY} {
		ag, err := s.Agent(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if ag.Capacity != want || ag.State != gateway.StateOnline || ag.LastSeen == nil || !ag.LastSeen.After(long) {
			t.Fatalf("after its beat %s has capacity %+v, state %s, last seen %v; want %+v, online, seen after %v",
				id, ag.Capacity, ag.State, ag.LastSeen, want, long)
		}
	}
}
