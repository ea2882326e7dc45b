package gateway_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

func TestDeleteAgentClosesTunnelAndRevokesCertificate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.OwnerHeartbeat = time.Minute }) // only NOTIFY or the local path
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "doomed"))
	ag := h.connect(h.gw(), e)
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "s", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	if err := h.svc().DeleteAgent(ctx, e.resp.AgentID); err != nil {
		t.Fatal(err)
	}
	code, ok := ag.closed(time.Second)
	if !ok {
		t.Fatal("tunnel still open a second after the agent was deleted")
	}
	if code != gateway.CloseRevoked {
		t.Fatalf("closed with %v, want CloseRevoked", code)
	}
	t.Logf("tunnel closed %s after the deletion", time.Since(start))
	if _, err := connect(t, h.gw(), e); err == nil {
		t.Fatal("a deleted agent's certificate still opens a tunnel")
	}
	if _, err := h.svc().Agent(ctx, e.resp.AgentID); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("agent after deletion: %v", err)
	}
	if _, err := h.svc().Assignment(ctx, "s"); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("assignment after deletion: %v", err)
	}
}

func TestSecondConnectionSupersedesFirst(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = time.Minute })
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "twin"))
	first := h.connect(h.gw(), e)
	first.nextPush(5 * time.Second)
	second := h.connect(h.gw(), e)
	second.nextPush(5 * time.Second)

	if code, ok := first.closed(time.Second); !ok || code != gateway.CloseSuperseded {
		t.Fatalf("first connection: closed=%v code=%v", ok, code)
	}
	// The Goodbye arrived before the close.
	var sawGoodbye bool
	for m := range first.ctrl {
		if g, ok := m.(*wire.Goodbye); ok && g.Reason == wire.GoodbyeSuperseded {
			sawGoodbye = true
		}
	}
	if !sawGoodbye {
		t.Error("no superseded goodbye on the first connection")
	}
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "s", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
		t.Fatal(err)
	}
	if got := second.nextPush(2 * time.Second).assignments(); len(got) != 1 {
		t.Fatalf("second connection got %+v", got)
	}
	waitAcked(t, h.svc(), ctx, "s", 1)
	// The connection that lost its claim is fenced: it cannot report for the agent.
	st, err := h.store.ReportStatus(sysCtx(e), e.resp.AgentID, gateway.Owner{Gateway: "gw-0", Conn: "stale"}, []wire.SessionStatus{{SessionID: "s", Phase: wire.PhaseRunning}})
	if err == nil || st != nil {
		t.Fatalf("stale owner reported status: %v %v", st, err)
	}
}

func TestStatusIntakeAndCrossTenantRefusal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	tidA, ctxA := h.tenant("alpha")
	tidB, ctxB := h.tenant("bravo")
	a := h.enroll(h.gw(), h.token(ctxA, "a"))
	b := h.enroll(h.gw(), h.token(ctxB, "b"))
	for _, x := range []struct {
		ctx context.Context
		e   enrolled
		s   gateway.SessionID
	}{{ctxA, a, "shared-name"}, {ctxB, b, "b-only"}, {ctxB, b, "shared-name"}} {
		if _, err := h.svc().Assign(x.ctx, gateway.AssignmentInput{SessionID: x.s, AgentID: x.e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
			t.Fatal(err)
		}
	}
	listen, err := pgx.Connect(context.Background(), h.env.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer listen.Close(context.Background())
	if _, err := listen.Exec(context.Background(), "LISTEN "+pgx.Identifier{gateway.StatusChannel}.Sanitize()); err != nil {
		t.Fatal(err)
	}

	agA := h.connect(h.gw(), a)
	observed := time.Now().UTC().Truncate(time.Millisecond)
	if err := agA.ctrlW.Write(&wire.StatusReport{Full: true, Sessions: []wire.SessionStatus{
		{SessionID: "shared-name", Phase: wire.PhaseRunning, ObservedGeneration: 1, Endpoint: &wire.Endpoint{Host: "10.0.0.7", Port: 5901, Protocol: "vnc"}, ObservedAt: observed, LastTransition: observed},
		{SessionID: "b-only", Phase: wire.PhaseFailed, Reason: "Evil", ObservedGeneration: 1, ObservedAt: observed},
	}}); err != nil {
		t.Fatal(err)
	}
	// A's own session is stored and announced.
	nctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := listen.WaitForNotification(nctx)
	if err != nil || n.Payload != string(tidA)+":shared-name" {
		t.Fatalf("notification %+v %v", n, err)
	}
	st, err := h.svc().SessionStatus(ctxA, "shared-name")
	if err != nil || st.Phase != wire.PhaseRunning || st.Endpoint == nil || st.Endpoint.Port != 5901 || !st.ObservedAt.Equal(observed) || st.AgentID != a.resp.AgentID {
		t.Fatalf("A's status %+v %v", st, err)
	}
	// B's sessions — one with the same id as A's — are untouched.
	for _, s := range []gateway.SessionID{"b-only", "shared-name"} {
		if _, err := h.svc().SessionStatus(ctxB, s); !apperr.IsCode(err, apperr.NotFound) {
			t.Fatalf("B's %s got a status from A's certificate: %v", s, err)
		}
	}
	if _, err := h.svc().SessionStatus(ctxA, "b-only"); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("A stored a status for a session it does not have: %v", err)
	}
	_ = tidB
	// An older observation never overwrites a newer one.
	if err := agA.ctrlW.Write(&wire.StatusReport{Sessions: []wire.SessionStatus{{SessionID: "shared-name", Phase: wire.PhasePending, ObservedAt: observed.Add(-time.Minute)}}}); err != nil {
		t.Fatal(err)
	}
	if err := agA.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: wire.Capacity{Sessions: 1, CPUUsedMillis: 500}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, func() error {
		ag, err := h.svc().Agent(ctxA, a.resp.AgentID)
		if err != nil || ag.Capacity.CPUUsedMillis != 500 {
			return fmt.Errorf("capacity %+v %v", ag.Capacity, err)
		}
		return nil
	})
	if st, _ := h.svc().SessionStatus(ctxA, "shared-name"); st.Phase != wire.PhaseRunning {
		t.Fatalf("older observation won: %+v", st)
	}
	list, err := h.svc().AgentSessionStatus(ctxA, a.resp.AgentID)
	if err != nil || len(list) != 1 {
		t.Fatalf("agent's statuses %+v %v", list, err)
	}
}

// rawControl opens a control stream on an authenticated connection and writes raw bytes.
func rawControl(t *testing.T, h *harness, e enrolled, payload []byte, hello bool) *testAgent {
	t.Helper()
	conn, err := dialQUIC(t, h.gw().Addr(), e)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "") })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	a := &testAgent{t: t, conn: conn, ctrl: make(chan wire.Message, 16), pushes: make(chan push, 16)}
	a.ctrlW, a.ctrlR = wire.NewWriter(st), wire.NewReader(st, 0)
	if hello {
		_ = a.ctrlW.WritePreamble(wire.StreamControl)
		_ = a.ctrlW.Write(&wire.Hello{AgentID: e.resp.AgentID, Protocol: wire.Current})
		if _, err := a.ctrlR.ReadPreamble(); err != nil {
			t.Fatal(err)
		}
		if m, err := a.ctrlR.Read(); err != nil {
			t.Fatal(err)
		} else if _, ok := m.(*wire.HelloAck); !ok {
			t.Fatalf("got %T", m)
		}
		go a.readControl()
	}
	if _, err := st.Write(payload); err != nil {
		t.Fatal(err)
	}
	return a
}

func frame(body string) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(body)))
	return append(b, body...)
}

func TestBadInputOverQUIC(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "fuzzy"))

	cases := []struct {
		name    string
		hello   bool
		payload []byte
	}{
		{"garbage instead of a preamble", false, []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n")},
		{"wrong first stream type", false, []byte(wire.Signature + "\x01\x00\x02")},
		{"unsupported major", false, []byte(wire.Signature + "\x09\x00\x01")},
		{"garbage frame", true, frame("{not json")},
		{"oversized frame", true, binary.BigEndian.AppendUint32(nil, 64<<20)},
		{"empty frame", true, binary.BigEndian.AppendUint32(nil, 0)},
		{"known type on the wrong stream", true, frame(`{"type":"desired_state","body":{"full":true,"assignments":[]}}`)},
		{"gateway message from an agent", true, frame(`{"type":"hello_ack","body":{"accepted":{"major":1,"minor":0}}}`)},
		{"second hello", true, frame(`{"type":"hello","body":{"agent_id":"x","protocol":{"major":1,"minor":0}}}`)},
		{"malformed body", true, frame(`{"type":"heartbeat","body":[]}`)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := rawControl(t, h, e, c.payload, c.hello)
			code, ok := a.closed(5 * time.Second)
			if !ok {
				t.Fatal("connection still open")
			}
			if code != gateway.CloseProtocol {
				t.Fatalf("closed with %v, want CloseProtocol", code)
			}
		})
	}

	t.Run("unknown message type on control is skipped", func(t *testing.T) {
		a := rawControl(t, h, e, frame(`{"type":"from_the_future","body":{"x":1}}`), true)
		if err := a.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: wire.Capacity{CPUUsedMillis: 42}}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 3*time.Second, func() error {
			ag, err := h.svc().Agent(ctx, e.resp.AgentID)
			if err != nil || ag.Capacity.CPUUsedMillis != 42 {
				return fmt.Errorf("heartbeat after unknown type not recorded: %+v %v", ag.Capacity, err)
			}
			return nil
		})
		if _, closed := a.closed(200 * time.Millisecond); closed {
			t.Fatal("connection closed over an unknown control message")
		}
	})

	t.Run("hello for another agent", func(t *testing.T) {
		other := h.enroll(h.gw(), h.token(ctx, "other"))
		conn, err := dialQUIC(t, h.gw().Addr(), e)
		if err != nil {
			t.Fatal(err)
		}
		st, err := conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		w, r := wire.NewWriter(st), wire.NewReader(st, 0)
		_ = w.WritePreamble(wire.StreamControl)
		_ = w.Write(&wire.Hello{AgentID: other.resp.AgentID, Protocol: wire.Current})
		_, _ = r.ReadPreamble()
		m, err := r.Read()
		if we, ok := m.(*wire.Error); err != nil || !ok || we.Code != wire.CodeForbidden || !we.Permanent {
			t.Fatalf("got %#v %v", m, err)
		}
	})

	t.Run("agent-opened desired-state stream is refused", func(t *testing.T) {
		a := h.connect(h.gw(), e)
		st, err := a.conn.OpenStreamSync(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = st.Write([]byte(wire.Signature + "\x01\x00\x02"))
		buf := make([]byte, 1)
		if _, err := st.Read(buf); err == nil {
			t.Fatal("the gateway answered on an agent-opened desired-state stream")
		}
	})

	t.Run("certificate from another CA", func(t *testing.T) {
		other := newHarness(t, 1)
		_, octx := other.tenant("evil")
		foreign := other.enroll(other.gw(), other.token(octx, "foreign"))
		foreign.pool = e.pool // trust our gateway, present their certificate
		// In TLS 1.3 the client finishes before the server checks its certificate, so
		// the refusal shows as a failed Hello.
		if _, err := connect(t, h.gw(), foreign); err == nil {
			t.Fatal("a certificate of another CA was accepted")
		}
	})
}

// Stopping a replica tells its agents to reconnect elsewhere and releases them.
func TestShutdownSaysGoodbye(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	ag := h.connect(h.gw(), e)
	ag.nextPush(5 * time.Second)
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := h.gw().Close(cctx); err != nil {
		t.Fatal(err)
	}
	if code, ok := ag.closed(2 * time.Second); !ok || code != gateway.CloseGoingAway {
		t.Fatalf("closed=%v code=%v", ok, code)
	}
	var bye *wire.Goodbye
	for m := range ag.ctrl {
		if g, ok := m.(*wire.Goodbye); ok {
			bye = g
		}
	}
	if bye == nil || bye.Reason != wire.GoodbyeDrain || !bye.ReconnectElsewhere {
		t.Fatalf("goodbye %+v", bye)
	}
	a, err := h.svc().Agent(ctx, e.resp.AgentID)
	if err != nil || a.State != gateway.StateOffline {
		t.Fatalf("after shutdown: %+v %v", a, err)
	}
}
