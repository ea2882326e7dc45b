package gateway_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/quic-go/quic-go"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

func TestDeleteAgentClosesTunnelAndRevokesCertificate(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.ClaimCheck = time.Minute }) // only NOTIFY or the local path
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
	if code != wire.CloseRevoked {
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

	if code, ok := first.closed(time.Second); !ok || code != wire.CloseSuperseded {
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
	if err := agA.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: &wire.Capacity{Sessions: 1, CPUUsedMillis: 500}}); err != nil {
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
			if code != wire.CloseProtocol {
				t.Fatalf("closed with %v, want CloseProtocol", code)
			}
		})
	}

	t.Run("unknown message type on control is skipped", func(t *testing.T) {
		a := rawControl(t, h, e, frame(`{"type":"from_the_future","body":{"x":1}}`), true)
		if err := a.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: &wire.Capacity{CPUUsedMillis: 42}}); err != nil {
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
	if code, ok := ag.closed(2 * time.Second); !ok || code != wire.CloseGoingAway {
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
	// Released in the drain's batch: the owner row names nobody.
	var owner *string
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT owner_conn FROM platform.agent_directory WHERE agent_id = $1`,
		string(e.resp.AgentID)).Scan(&owner); err != nil || owner != nil {
		t.Fatalf("owner row after shutdown: %v %v", owner, err)
	}
}

// flakyStore fails DirectoryTenant the way a database outage does (a timeout), which is
// not an answer about the agent.
type flakyStore struct {
	gateway.Store
	down     atomic.Bool  // every lookup fails
	failures atomic.Int32 // the next this many lookups fail
	lookups  atomic.Int32
}

func (s *flakyStore) DirectoryTenant(ctx context.Context, id gateway.AgentID) (tenant.ID, error) {
	s.lookups.Add(1)
	if s.down.Load() || s.failures.Add(-1) >= 0 {
		return "", fmt.Errorf("query platform.agent_directory: %w", context.DeadlineExceeded)
	}
	return s.Store.DirectoryTenant(ctx, id)
}

// helloOnce completes the TLS handshake (failing the test if the gateway refuses it),
// says Hello and returns the gateway's first answer and the connection.
func helloOnce(t *testing.T, addr string, e enrolled, edit func(*wire.Hello)) (wire.Message, *quic.Conn) {
	t.Helper()
	conn, err := dialQUIC(t, addr, e)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "") })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w, r := wire.NewWriter(st), wire.NewReader(st, 0)
	hello := &wire.Hello{AgentID: e.resp.AgentID, Protocol: wire.Current}
	if edit != nil {
		edit(hello)
	}
	if err := w.WritePreamble(wire.StreamControl); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(hello); err != nil {
		t.Fatal(err)
	}
	// Only a gateway that accepted the TLS handshake answers on the stream; a refusal
	// surfaces here as a transport error.
	if _, err := r.ReadPreamble(); err != nil {
		t.Fatalf("the gateway refused the handshake or the stream: %v", err)
	}
	m, err := r.Read()
	if err != nil {
		t.Fatalf("reading the answer to hello: %v", err)
	}
	return m, conn
}

// A database failure while checking a certificate is not a refusal: the gateway accepts
// the TLS handshake, checks again after Hello, and turns the agent away with a retryable
// "unavailable" (and close code) that the agent can tell from a revocation. Only the
// registry's definite "no" refuses.
func TestRegistryFailureIsRetryableNotARefusal(t *testing.T) {
	t.Parallel()
	// No owner loop during the test: its lookups would blur the counts below.
	h := newHarness(t, 0, func(c *gateway.Config) { c.ClaimCheck = time.Hour })
	_, ctx := h.tenant("acme")
	flaky := &flakyStore{Store: h.store}
	gw := h.addReplica(flaky).gw
	e := h.enroll(gw, h.token(ctx, "edge"))

	flaky.down.Store(true)
	for _, tc := range []struct {
		minor uint8
		code  wire.CloseCode
	}{{wire.Minor, wire.CloseUnavailable}, {0, wire.CloseGoingAway}} { // 1.0 agents get no new close code
		m, conn := helloOnce(t, gw.Addr(), e, func(h *wire.Hello) { h.Protocol.Minor = tc.minor })
		we, ok := m.(*wire.Error)
		if !ok || we.Code != wire.CodeUnavailable || we.Permanent || we.RetryAfter <= 0 {
			t.Fatalf("1.%d: answer to hello during the outage = %#v, want a retryable unavailable error", tc.minor, m)
		}
		if retry, after := wire.Retryable(we); !retry || after != we.RetryAfter {
			t.Fatalf("1.%d: Retryable = %v, %v", tc.minor, retry, after)
		}
		code, closed := closedWith(conn, 2*time.Second)
		if !closed || code != tc.code || code.Permanent() {
			t.Fatalf("1.%d: closed=%v with %v, want %v", tc.minor, closed, code, tc.code)
		}
	}
	if gw.Connected(e.resp.AgentID) {
		t.Fatal("an unverified agent holds a tunnel")
	}

	// The database fails during the TLS handshake only: the check after Hello passes.
	flaky.down.Store(false)
	flaky.failures.Store(1)
	before := flaky.lookups.Load()
	m, _ := helloOnce(t, gw.Addr(), e, nil)
	if _, ok := m.(*wire.HelloAck); !ok {
		t.Fatalf("answer after the database recovered = %#v, want hello_ack", m)
	}
	if n := flaky.lookups.Load() - before; n != 2 {
		t.Fatalf("%d registry lookups, want 2 (handshake, then after hello)", n)
	}
	// A verified handshake costs one lookup, not two.
	before = flaky.lookups.Load()
	if _, err := connect(t, gw, e); err != nil {
		t.Fatal(err)
	}
	if n := flaky.lookups.Load() - before; n != 1 {
		t.Fatalf("%d registry lookups for a verified handshake, want 1", n)
	}

	// The handshake could not check the agent, and by the time Hello arrives it has been
	// deleted: the second check is definite, and permanent.
	if err := h.replicas[0].svc.DeleteAgent(ctx, e.resp.AgentID); err != nil {
		t.Fatal(err)
	}
	flaky.failures.Store(1)
	m, conn := helloOnce(t, gw.Addr(), e, nil)
	if we, ok := m.(*wire.Error); !ok || we.Code != wire.CodeForbidden || !we.Permanent {
		t.Fatalf("answer for a deleted agent = %#v, want a permanent forbidden error", m)
	}
	if code, closed := closedWith(conn, 2*time.Second); !closed || code != wire.CloseForbidden || !code.Permanent() {
		t.Fatalf("deleted agent: closed=%v with %v, want CloseForbidden", closed, code)
	}
	// With the database up, a deleted agent is refused in the TLS handshake, as before.
	if _, err := connect(t, gw, e); err == nil {
		t.Fatal("a deleted agent's certificate opens a tunnel")
	} else if _, ok := errors.AsType[*wire.Error](err); ok {
		t.Fatalf("a deleted agent got past the TLS handshake: %v", err)
	}
}

// An agent whose applied set matches (Hello.applied_checksum) gets HelloAck with the same
// checksum and no full push: only its unacknowledged assignments, as a partial push.
func TestAppliedChecksumSkipsFullPush(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = time.Minute })
	tid, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	disconnect := func(ag *testAgent) {
		t.Helper()
		_ = ag.conn.CloseWithError(0, "bye")
		eventually(t, 5*time.Second, func() error {
			if h.gw().Connected(e.resp.AgentID) {
				return errors.New("still connected")
			}
			return nil
		})
	}
	applied := func(sum string) func(*wire.Hello) { return func(h *wire.Hello) { h.AppliedChecksum = sum } }

	// Nothing desired, nothing applied: no push at all.
	ag, err := connectHello(t, h.gw().Addr(), e, applied(wire.Checksum(nil)))
	if err != nil {
		t.Fatal(err)
	}
	if ag.ack.DesiredChecksum != wire.Checksum(nil) {
		t.Fatalf("hello_ack checksum %s", ag.ack.DesiredChecksum)
	}
	select {
	case p := <-ag.pushes:
		t.Fatalf("pushed %+v to an agent whose applied set is current", p.msgs)
	case <-time.After(700 * time.Millisecond):
	}
	disconnect(ag)

	// Work assigned while away; the agent applied it but the ack was lost.
	a, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "s", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("x")})
	if err != nil {
		t.Fatal(err)
	}
	sum := wire.Checksum([]wire.Assignment{{SessionID: "s", TenantID: tid, Generation: a.Generation, Desired: wire.DesiredRunning}})
	ag, err = connectHello(t, h.gw().Addr(), e, applied(sum))
	if err != nil {
		t.Fatal(err)
	}
	if ag.ack.DesiredChecksum != sum {
		t.Fatalf("hello_ack checksum %s, want %s", ag.ack.DesiredChecksum, sum)
	}
	p := ag.nextPush(5 * time.Second)
	if len(p.msgs) != 1 || p.msgs[0].Full || len(p.msgs[0].Assignments) != 1 || p.msgs[0].Assignments[0].SessionID != "s" {
		t.Fatalf("push to a current agent with an unacknowledged assignment: %+v", p.msgs)
	}
	waitAcked(t, h.svc(), ctx, "s", a.Generation)
	disconnect(ag)

	// A stale applied set (or none, as from a 1.0 agent) gets the full set.
	for _, stale := range []string{wire.Checksum(nil), ""} {
		ag, err = connectHello(t, h.gw().Addr(), e, applied(stale))
		if err != nil {
			t.Fatal(err)
		}
		if p := ag.nextPush(5 * time.Second); !p.msgs[len(p.msgs)-1].Full || p.msgs[len(p.msgs)-1].Checksum != sum {
			t.Fatalf("push to a stale agent (%q): %+v", stale, p.msgs)
		}
		disconnect(ag)
	}
}

// Hello.tags (1.1) and, as from 1.0 agents, capabilities are recorded as the agent's
// reported tags, normalised; tags an admin could not set are dropped.
func TestHelloTagsAreRecorded(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	if _, err := connectHello(t, h.gw().Addr(), e, func(h *wire.Hello) {
		h.Capabilities = []string{"gpu", "hibernate"}
		h.Tags = []string{"Zone=EU-1", "gpu", "not a tag", "", strings.Repeat("x", 64)}
	}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 3*time.Second, func() error {
		a, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil {
			return err
		}
		if got := fmt.Sprint(a.ReportedTags); got != "[gpu hibernate zone=eu-1]" {
			return fmt.Errorf("reported tags %s", got)
		}
		return nil
	})
}

// Beyond HandshakeConcurrency connections between their first packet and their HelloAck,
// a new connection is refused at once with CONNECTION_REFUSED (which the agent retries),
// and admitted again as soon as a place is free.
func TestHandshakeLimitRefusesAtOnce(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.HandshakeConcurrency = 1 })
	_, ctx := h.tenant("acme")
	slow, next := h.enroll(h.gw(), h.token(ctx, "slow")), h.enroll(h.gw(), h.token(ctx, "next"))
	// TLS done, no Hello yet: the only place is taken until Hello or the hello timeout.
	holder, err := dialQUIC(t, h.gw().Addr(), slow)
	if err != nil {
		t.Fatal(err)
	}
	_, err = connect(t, h.gw(), next)
	te, ok := errors.AsType[*quic.TransportError](err)
	if !ok || te.ErrorCode != quic.ConnectionRefused || !te.Remote {
		t.Fatalf("connecting beyond the limit: %v, want CONNECTION_REFUSED from the gateway", err)
	}
	_ = holder.CloseWithError(0, "done")
	eventually(t, 5*time.Second, func() error {
		ag, err := connect(t, h.gw(), next)
		if err == nil {
			_ = ag.conn.CloseWithError(0, "")
		}
		return err
	})
}

// A heartbeat without capacity (wire 1.2) is liveness only: the agent's last-seen time
// and state advance, and the capacity reported before stays, also when a beat with
// capacity and one without arrive within one flush interval (the replica keeps only the
// newest beat per agent until it writes them).
func TestHeartbeatWithoutCapacityIsLivenessOnly(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	a := h.connect(h.gw(), e)
	if a.ack.Accepted != wire.Current {
		t.Fatalf("accepted %s, want %s", a.ack.Accepted, wire.Current)
	}
	want := wire.Capacity{CPUAllocatableMillis: 4000, CPUUsedMillis: 700, MemoryAllocatableBytes: 8 << 30, Sessions: 2, MaxSessions: 5}
	for _, hb := range []*wire.Heartbeat{{Seq: 1, Capacity: &want}, {Seq: 2}} {
		if err := a.ctrlW.Write(hb); err != nil {
			t.Fatal(err)
		}
	}
	agent := func() gateway.Agent {
		ag, err := h.svc().Agent(ctx, e.resp.AgentID)
		if err != nil {
			t.Fatal(err)
		}
		return ag
	}
	eventually(t, 5*time.Second, func() error {
		if ag := agent(); ag.Capacity != want {
			return fmt.Errorf("capacity %+v, want %+v", ag.Capacity, want)
		}
		return nil
	})
	// Age the row, as if the agent had been silent for an hour: only a beat after this
	// can bring it back, and the next beats carry no capacity. Beat 2 is written by the
	// time one of them is, since a replica writes an agent's beats in order.
	long := time.Now().Add(-time.Hour)
	if err := h.env.DB.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `UPDATE agents SET last_seen = $2, state = 'offline' WHERE id = $1`, string(e.resp.AgentID), long)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if ag := agent(); ag.State != gateway.StateOffline {
		t.Fatalf("aged agent is %s", ag.State)
	}
	if err := a.ctrlW.Write(&wire.Heartbeat{Seq: 3}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, func() error {
		if ag := agent(); ag.State != gateway.StateOnline || ag.LastSeen == nil || !ag.LastSeen.After(long) {
			return fmt.Errorf("state %s, last seen %v after a heartbeat", ag.State, ag.LastSeen)
		}
		return nil
	})
	if ag := agent(); ag.Capacity != want {
		t.Fatalf("capacity %+v after heartbeats without capacity, want %+v kept", ag.Capacity, want)
	}
}

// Agents of protocol 1.0 and 1.1 are accepted at their own version, and the capacity
// their heartbeats always carry is stored as before.
func TestOlderAgentHeartbeatsCarryCapacity(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	_, ctx := h.tenant("acme")
	for _, minor := range []uint8{0, 1} {
		e := h.enroll(h.gw(), h.token(ctx, fmt.Sprintf("edge-1-%d", minor)))
		a, err := connectHello(t, h.gw().Addr(), e, func(h *wire.Hello) { h.Protocol.Minor = minor })
		if err != nil {
			t.Fatal(err)
		}
		if want := (wire.Version{Major: 1, Minor: minor}); a.ack.Accepted != want {
			t.Fatalf("a 1.%d agent is accepted at %s", minor, a.ack.Accepted)
		}
		want := wire.Capacity{CPUAllocatableMillis: 2000, CPUUsedMillis: 300, Sessions: int(minor) + 1}
		if err := a.ctrlW.Write(&wire.Heartbeat{Seq: 1, Capacity: &want}); err != nil {
			t.Fatal(err)
		}
		eventually(t, 5*time.Second, func() error {
			ag, err := h.svc().Agent(ctx, e.resp.AgentID)
			if err != nil || ag.Capacity != want {
				return fmt.Errorf("1.%d agent's capacity %+v (%v), want %+v", minor, ag.Capacity, err, want)
			}
			return nil
		})
	}
}
