package gateway_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

// Two replicas in one process share one database. Work for an agent reaches it whichever
// replica the change entered through, ownership follows the agent when it moves, and a
// deletion through one replica closes the tunnel held by the other.
func TestTwoReplicas(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, func(c *gateway.Config) { c.Resync = time.Minute })
	a, b := h.replicas[0], h.replicas[1]
	_, ctx := h.tenant("acme")
	e := h.enroll(a.gw, h.token(ctx, "roamer"))

	ag := h.connect(b.gw, e)
	ag.nextPush(5 * time.Second)
	for i, via := range []*replica{a, b} {
		s := gateway.SessionID(fmt.Sprintf("via-%d", i))
		if _, err := via.svc.Assign(ctx, gateway.AssignmentInput{SessionID: s, AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
			t.Fatal(err)
		}
		got := ag.nextPush(2 * time.Second).assignments()
		if len(got) != 1 || got[0].SessionID != s {
			t.Fatalf("change through replica %d: agent on replica 1 got %+v", i, got)
		}
		waitAcked(t, via.svc, ctx, s, 1)
	}
	if !b.gw.Connected(e.resp.AgentID) || a.gw.Connected(e.resp.AgentID) {
		t.Fatal("ownership is not where the tunnel is")
	}

	// The agent moves to replica 0 (as after replica 1 died): replica 1 lets go.
	ag2 := h.connect(a.gw, e)
	if code, ok := ag.closed(2 * time.Second); !ok || code != wire.CloseSuperseded {
		t.Fatalf("old tunnel on replica 1: closed=%v code=%v", ok, code)
	}
	if got := ag2.nextPush(5 * time.Second).assignments(); len(got) != 2 {
		t.Fatalf("full set on the new replica %+v", got)
	}
	if _, err := b.svc.Assign(ctx, gateway.AssignmentInput{SessionID: "via-1", AgentID: e.resp.AgentID, Desired: wire.DesiredStopped}); err != nil {
		t.Fatal(err)
	}
	if got := ag2.nextPush(2 * time.Second).assignments(); len(got) != 1 || got[0].Generation != 2 {
		t.Fatalf("change through replica 1 to the agent on replica 0: %+v", got)
	}
	eventually(t, 3*time.Second, func() error {
		ag, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil || ag.Gateway != "gw-0" || ag.State != gateway.StateOnline {
			return fmt.Errorf("registry %+v %v", ag, err)
		}
		return nil
	})

	// Deleting through replica 1 closes the tunnel on replica 0 within a second.
	start := time.Now()
	if err := b.svc.DeleteAgent(ctx, e.resp.AgentID); err != nil {
		t.Fatal(err)
	}
	if code, ok := ag2.closed(time.Second); !ok || code != wire.CloseRevoked {
		t.Fatalf("tunnel on the other replica: closed=%v code=%v", ok, code)
	}
	t.Logf("cross-replica revocation took %s", time.Since(start))
}

// A replica that misses its NOTIFY (here: there is none, the row is changed directly)
// still finds the work on its periodic sweep, which wakes only the tunnels of agents
// with pending work.
func TestLostNotificationIsCoveredBySweep(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = 300 * time.Millisecond })
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	ag := h.connect(h.gw(), e)
	ag.nextPush(5 * time.Second)
	idle := h.connect(h.gw(), h.enroll(h.gw(), h.token(ctx, "idle")))
	idle.nextPush(5 * time.Second)
	tid := mustTenant(t, ctx)
	if _, err := h.env.Pool.Exec(context.Background(), `INSERT INTO "t_`+string(tid)+`".session_assignments (session_id, agent_id, generation, desired)
		VALUES ('silent', $1, 1, 'running')`, string(e.resp.AgentID)); err != nil {
		t.Fatal(err)
	}
	if got := ag.nextPush(2 * time.Second).assignments(); len(got) != 1 || got[0].SessionID != "silent" {
		t.Fatalf("got %+v", got)
	}
	waitAcked(t, h.svc(), ctx, "silent", 1)
	// Several sweeps later, the agent without work has been sent nothing.
	time.Sleep(time.Second)
	select {
	case p := <-idle.pushes:
		t.Fatalf("the idle agent got a push: %+v", p.assignments())
	default:
	}
}

// A claim lost without a notification (here the rows are changed directly, as if the
// NOTIFY had been dropped) is found by the replica's claim check: a superseded tunnel is
// closed as superseded, a deleted agent's as revoked, and a tunnel whose claim holds
// stays. The replica's liveness is its one row in platform.gateway_replicas, gone when it
// stops.
func TestLostClaimIsFoundWithoutNotification(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.ClaimCheck = 300 * time.Millisecond })
	_, ctx := h.tenant("acme")
	var ags []*testAgent
	var ids []gateway.AgentID
	for _, name := range []string{"superseded", "deleted", "kept"} {
		e := h.enroll(h.gw(), h.token(ctx, name))
		ag := h.connect(h.gw(), e)
		ag.nextPush(5 * time.Second)
		ags, ids = append(ags, ag), append(ids, e.resp.AgentID)
	}
	bg := context.Background()
	if _, err := h.env.Pool.Exec(bg, `UPDATE platform.agent_directory SET owner_conn = 'elsewhere' WHERE agent_id = $1`, string(ids[0])); err != nil {
		t.Fatal(err)
	}
	if _, err := h.env.Pool.Exec(bg, `DELETE FROM platform.agent_directory WHERE agent_id = $1`, string(ids[1])); err != nil {
		t.Fatal(err)
	}
	if code, ok := ags[0].closed(5 * time.Second); !ok || code != wire.CloseSuperseded {
		t.Fatalf("superseded without a notification: closed=%v code=%v", ok, code)
	}
	if code, ok := ags[1].closed(5 * time.Second); !ok || code != wire.CloseRevoked {
		t.Fatalf("deleted without a notification: closed=%v code=%v", ok, code)
	}
	// Several more checks pass; the tunnel whose claim holds stays.
	time.Sleep(time.Second)
	if ags[2].conn.Context().Err() != nil || !h.gw().Connected(ids[2]) {
		t.Fatal("a tunnel whose claim holds was closed")
	}

	replicas := func() int {
		var n int
		if err := h.env.Pool.QueryRow(bg, `SELECT count(*) FROM platform.gateway_replicas
			WHERE id = $1 AND heartbeat > now() - interval '1 minute'`, h.gw().ID()).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := replicas(); n != 1 {
		t.Fatalf("%d live rows for the running replica, want 1", n)
	}
	cctx, cancel := context.WithTimeout(bg, 5*time.Second)
	defer cancel()
	if err := h.gw().Close(cctx); err != nil {
		t.Fatal(err)
	}
	if n := replicas(); n != 0 {
		t.Fatalf("the stopped replica's row is still there")
	}
}

func spanNames(rec *tracetest.SpanRecorder) map[string][]sdktrace.ReadOnlySpan {
	out := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		out[s.Name()] = append(out[s.Name()], s)
	}
	return out
}

// The trace of the API call that wrote an assignment continues into the delivery and
// reaches the agent inside the message.
func TestTraceContextCrossesTheTunnel(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, func(c *gateway.Config) { c.Resync = time.Minute })
	_, ctx := h.tenant("acme")
	e := h.enroll(h.replicas[0].gw, h.token(ctx, "traced"))
	ag := h.connect(h.replicas[1].gw, e)
	ag.nextPush(5 * time.Second)

	caller := sdktrace.NewTracerProvider()
	tctx, span := caller.Tracer("test").Start(ctx, "POST /api/v1/sessions")
	if _, err := h.replicas[0].svc.Assign(tctx, gateway.AssignmentInput{SessionID: "s", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
		t.Fatal(err)
	}
	span.End()
	p := ag.nextPush(2 * time.Second)
	want := span.SpanContext().TraceID().String()
	if len(p.traceParent) < 36 || p.traceParent[3:35] != want {
		t.Fatalf("traceparent %q, want trace %s", p.traceParent, want)
	}
	if err := ag.ctrlW.Write(&wire.StatusReport{Sessions: []wire.SessionStatus{{SessionID: "s", Phase: wire.PhaseRunning, ObservedGeneration: 1}}}); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, h.svc(), ctx, "s", 1)
	eventually(t, 3*time.Second, func() error {
		names := spanNames(h.replicas[1].spans)
		for _, n := range []string{"agent.connect", "agent.deliver", "agent.ack", "agent.status"} {
			if len(names[n]) == 0 {
				return fmt.Errorf("no %s span on the owning replica", n)
			}
		}
		var joined bool
		for _, d := range names["agent.deliver"] {
			joined = joined || d.SpanContext().TraceID() == trace.TraceID(span.SpanContext().TraceID())
		}
		if !joined {
			return fmt.Errorf("no delivery span in the caller's trace")
		}
		if len(spanNames(h.replicas[0].spans)["agent.enroll"]) == 0 {
			return fmt.Errorf("no agent.enroll span on the enrolling replica")
		}
		return nil
	})
}

// Silence ages an agent: degraded after DegradedAfter, offline after OfflineAfter, even
// while the tunnel stays open (a stuck agent).
func TestAgentStateAges(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) {
		c.HeartbeatInterval, c.DegradedAfter, c.OfflineAfter = 200*time.Millisecond, 500*time.Millisecond, 1200*time.Millisecond
	})
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "sleepy"))
	ag := h.connect(h.gw(), e)
	for _, want := range []gateway.State{gateway.StateOnline, gateway.StateDegraded, gateway.StateOffline} {
		eventually(t, 3*time.Second, func() error {
			a, err := h.svc().Agent(ctx, e.resp.AgentID)
			if err != nil || a.State != want {
				return fmt.Errorf("state %s, want %s (%v)", a.State, want, err)
			}
			return nil
		})
	}
	// A heartbeat brings it back, with the capacity it reports, once the replica has
	// written its batch.
	if err := ag.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: &wire.Capacity{Sessions: 7, MaxSessions: 9}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, func() error {
		a, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil || a.State != gateway.StateOnline || a.Capacity.Sessions != 7 || a.Capacity.MaxSessions != 9 {
			return fmt.Errorf("state %s, capacity %+v after a heartbeat (%v)", a.State, a.Capacity, err)
		}
		return nil
	})
	// Leaving marks it offline at once.
	_ = ag.conn.CloseWithError(0, "bye")
	eventually(t, 3*time.Second, func() error {
		a, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil || a.State != gateway.StateOffline {
			return fmt.Errorf("state %s after leaving (%v)", a.State, err)
		}
		return nil
	})
}
