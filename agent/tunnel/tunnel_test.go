package tunnel_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/agent/backoff"
	"streamspace.dev/agent/enroll"
	"streamspace.dev/agent/internal/testpki"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/agent/tunnel"
	"streamspace.dev/libs/wire"
)

const (
	tenantID = "abcdefghijkl"
	agentID  = "agt_abcdefghijklmnopqrst"
)

// waitFor bounds every wait so a broken build fails instead of hanging; no test asserts
// how long anything took.
const waitFor = 15 * time.Second

// gateway is a minimal stand-in for services/agent-gateway built on quic-go and
// libs/wire: mTLS with the test CA, Hello/HelloAck on the control stream, and pushes on
// streams it opens.
type gateway struct {
	t    *testing.T
	ca   *testpki.CA
	addr string

	mu    sync.Mutex
	ln    *quic.Listener
	tr    *quic.Transport
	conns []*gwConn

	// refuse, when set, turns the agent away instead of HelloAck (guarded by mu once the
	// agent runs).
	refuse *refusal
	// hellos counts the Hellos received.
	hellos atomic.Int32
	// checksum is sent in HelloAck.
	checksum string
	// accept is the version HelloAck accepts; wire.Current when zero.
	accept wire.Version
	// verify, when set, checks the client certificate during the handshake.
	verify func(*x509.Certificate) error

	accepted chan *gwConn
}

// refusal is how the gateway turns an agent away after Hello: an Error (unless nil),
// then a close with code.
type refusal struct {
	err  *wire.Error
	code wire.CloseCode
}

type gwConn struct {
	qc    *quic.Conn
	hello *wire.Hello
	peer  *x509.Certificate
	msgs  chan wire.Message
	ctrlW *wire.Writer
}

func newGateway(t *testing.T, ca *testpki.CA) *gateway {
	g := &gateway{t: t, ca: ca, addr: "127.0.0.1:0", accepted: make(chan *gwConn, 16)}
	g.start()
	t.Cleanup(g.stop)
	return g
}

func (g *gateway) start() {
	g.t.Helper()
	srvCert := g.ca.Server(g.t)
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{srvCert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    g.ca.Pool,
		NextProtos:   wire.SupportedALPNs(),
		VerifyPeerCertificate: func(_ [][]byte, chains [][]*x509.Certificate) error {
			if g.verify != nil {
				return g.verify(chains[0][0])
			}
			return nil
		},
	}
	// An explicit Transport, closed on stop, releases the port at once so the restarted
	// gateway can bind the same one, as a restarted gateway behind a fixed address would.
	udpAddr, err := net.ResolveUDPAddr("udp", g.addr)
	if err != nil {
		g.t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", udpAddr)
	if err != nil {
		g.t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(tlsConf, &quic.Config{KeepAlivePeriod: time.Second, MaxIdleTimeout: 10 * time.Second})
	if err != nil {
		g.t.Fatal(err)
	}
	g.mu.Lock()
	g.ln, g.tr = ln, tr
	g.addr = ln.Addr().String() // restarts reuse the port, as a restarted gateway would
	g.mu.Unlock()
	go g.acceptLoop(ln)
}

func (g *gateway) stop() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, c := range g.conns {
		_ = c.qc.CloseWithError(quic.ApplicationErrorCode(wire.CloseGoingAway), "gateway stopping")
	}
	g.conns = nil
	if g.ln != nil {
		_ = g.ln.Close()
		_ = g.tr.Close()
		_ = g.tr.Conn.Close()
		g.ln, g.tr = nil, nil
	}
}

func (g *gateway) restart() { g.stop(); g.start() }

func (g *gateway) acceptLoop(ln *quic.Listener) {
	for {
		qc, err := ln.Accept(context.Background())
		if err != nil {
			return
		}
		go g.serve(qc)
	}
}

func (g *gateway) serve(qc *quic.Conn) {
	ctx := qc.Context()
	st, err := qc.AcceptStream(ctx)
	if err != nil {
		return
	}
	rd := wire.NewReader(st, 0)
	if p, err := rd.ReadPreamble(); err != nil || p.Stream != wire.StreamControl {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(wire.CloseProtocol), "bad control preamble")
		return
	}
	msg, err := rd.Read()
	hello, ok := msg.(*wire.Hello)
	if err != nil || !ok {
		_ = qc.CloseWithError(quic.ApplicationErrorCode(wire.CloseProtocol), "no hello")
		return
	}
	g.hellos.Add(1)
	w := wire.NewWriter(st)
	_ = w.WritePreamble(wire.StreamControl)
	g.mu.Lock()
	refuse := g.refuse
	g.mu.Unlock()
	if refuse != nil {
		if refuse.err != nil {
			_ = w.Write(refuse.err)
			time.Sleep(100 * time.Millisecond) // let the error arrive before the close
		}
		_ = qc.CloseWithError(quic.ApplicationErrorCode(refuse.code), "refused")
		return
	}
	accepted := g.accept
	if accepted == (wire.Version{}) {
		accepted = wire.Current
	}
	if err := w.Write(&wire.HelloAck{GatewayID: "gw-test", Accepted: accepted, HeartbeatInterval: 50 * time.Millisecond, DesiredChecksum: g.checksum}); err != nil {
		return
	}
	c := &gwConn{qc: qc, hello: hello, peer: qc.ConnectionState().TLS.PeerCertificates[0], msgs: make(chan wire.Message, 1024), ctrlW: w}
	g.mu.Lock()
	g.conns = append(g.conns, c)
	g.mu.Unlock()
	go func() {
		for {
			st, err := qc.AcceptStream(ctx)
			if err != nil {
				return
			}
			go g.serveCert(st)
		}
	}()
	g.accepted <- c
	for {
		m, err := rd.Read()
		if err != nil {
			close(c.msgs)
			return
		}
		c.msgs <- m
	}
}

// serveCert answers a renewal with a certificate for the same names.
func (g *gateway) serveCert(st *quic.Stream) {
	defer func() { _ = st.Close() }()
	rd := wire.NewReader(st, 0)
	if p, err := rd.ReadPreamble(); err != nil || p.Stream != wire.StreamCert {
		return
	}
	m, err := rd.Read()
	if err != nil {
		return
	}
	w := wire.NewWriter(st)
	_ = w.WritePreamble(wire.StreamCert)
	pemCert, err := g.ca.SignCSR(m.(*wire.CertRenewRequest).CSRPEM, tenantID, agentID, time.Now().Add(-time.Minute), 30*24*time.Hour)
	if err != nil {
		_ = w.Write(&wire.Error{Code: wire.CodeInvalid, Message: err.Error(), Permanent: true})
		return
	}
	_ = w.Write(&wire.CertRenewResponse{CertificatePEM: pemCert})
}

func (g *gateway) next(t *testing.T) *gwConn {
	t.Helper()
	select {
	case c := <-g.accepted:
		return c
	case <-time.After(waitFor):
		t.Fatal("agent never connected")
		return nil
	}
}

// push opens a desired-state stream, sends ds and returns the agent's answers.
func (c *gwConn) push(t *testing.T, parts ...*wire.DesiredState) []wire.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
		t.Fatal(err)
	}
	for _, ds := range parts {
		if err := w.Write(ds); err != nil {
			t.Fatal(err)
		}
	}
	_ = st.Close()
	rd := wire.NewReader(st, 0)
	if _, err := rd.ReadPreamble(); err != nil {
		t.Fatal(err)
	}
	var out []wire.Message
	for {
		m, err := rd.Read()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
}

// await returns the first control message satisfying match, skipping others.
func (c *gwConn) await(t *testing.T, what string, match func(wire.Message) bool) wire.Message {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case m, ok := <-c.msgs:
			if !ok {
				t.Fatalf("control stream closed while waiting for %s", what)
			}
			if match(m) {
				return m
			}
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
}

func statusOf(id wire.SessionID, phase wire.Phase) func(wire.Message) bool {
	return func(m wire.Message) bool {
		sr, ok := m.(*wire.StatusReport)
		return ok && slices.ContainsFunc(sr.Sessions, func(s wire.SessionStatus) bool { return s.SessionID == id && s.Phase == phase })
	}
}

type agentUnderTest struct {
	backend *memory.Backend
	// capacity is the Backend the tunnel sees: backend, with a switch on Capacity.
	capacity *capacitySwitch
	rec      *reconcile.Reconciler
	holder   *enroll.Holder
	tunnel   *tunnel.Tunnel
	done     chan error
	cancel   context.CancelFunc
}

func credential(t *testing.T, ca *testpki.CA, notBefore time.Time, ttl time.Duration) *enroll.Credential {
	t.Helper()
	certPEM, keyPEM := ca.AgentPair(t, tenantID, agentID, notBefore, ttl)
	dir := t.TempDir()
	_ = os.WriteFile(filepath.Join(dir, "tls.crt"), certPEM, 0o600)
	_ = os.WriteFile(filepath.Join(dir, "tls.key"), keyPEM, 0o600)
	c, err := enroll.LoadFiles(filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key"))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func startAgent(t *testing.T, g *gateway, cred *enroll.Credential) *agentUnderTest {
	t.Helper()
	b := memory.New(memory.Config{Allocatable: wire.Capacity{CPUAllocatableMillis: 4000, MaxSessions: 10}, PerSessionCPUMillis: 500})
	t.Cleanup(b.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.Default()
	}
	rec := reconcile.New(b, log)
	ctx, cancel := context.WithCancel(context.Background())
	if err := rec.Start(ctx); err != nil {
		t.Fatal(err)
	}
	a := &agentUnderTest{backend: b, capacity: &capacitySwitch{Backend: b}, rec: rec,
		holder: enroll.NewHolder(cred, enroll.Store{Dir: t.TempDir()}), done: make(chan error, 1), cancel: cancel}
	a.tunnel = tunnel.New(tunnel.Config{
		Addr:         g.addr,
		RootCAs:      g.ca.Pool,
		Credential:   a.holder,
		Reconciler:   rec,
		Backend:      a.capacity,
		AgentVersion: "test",
		Tags:         []string{"gpu", "zone=eu-west-1a"},
		KeepAlive:    time.Second,
		IdleTimeout:  5 * time.Second,
		Backoff:      backoff.Policy{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond},
		DrainTimeout: 5 * time.Second,
		RefusalGrace: time.Second,
		Log:          log,
	})
	go func() { a.done <- a.tunnel.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-a.done; rec.Wait() })
	return a
}

// capacitySwitch is the memory backend with a switch on Capacity: while down, Capacity
// fails, as a cluster whose metrics cannot be read does. It counts the calls, so a test
// knows which heartbeats were computed while down: on an agent's first connection,
// Hello makes call 1 and heartbeat seq makes call seq+1.
type capacitySwitch struct {
	*memory.Backend
	mu    sync.Mutex
	calls int
	down  bool
}

// Capacity implements agent.Backend.
func (s *capacitySwitch) Capacity(ctx context.Context) (wire.Capacity, error) {
	s.mu.Lock()
	s.calls++
	down := s.down
	s.mu.Unlock()
	if down {
		return wire.Capacity{}, errors.New("metrics unavailable")
	}
	return s.Backend.Capacity(ctx)
}

// set turns Capacity down or up and returns how many calls came before.
func (s *capacitySwitch) set(down bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.down = down
	return s.calls
}

// count returns how many calls came so far.
func (s *capacitySwitch) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls
}

// heartbeat returns the next heartbeat on the control stream.
func (c *gwConn) heartbeat(t *testing.T) *wire.Heartbeat {
	t.Helper()
	return c.await(t, "heartbeat", func(m wire.Message) bool { _, ok := m.(*wire.Heartbeat); return ok }).(*wire.Heartbeat)
}

func as(id string, gen int64, d wire.Desired) wire.Assignment {
	return wire.Assignment{SessionID: wire.SessionID(id), TenantID: tenantID, Generation: gen, Desired: d, Spec: []byte(`{"image":"firefox"}`)}
}

func acksOf(t *testing.T, msgs []wire.Message) map[wire.SessionID]int64 {
	t.Helper()
	out := map[wire.SessionID]int64{}
	for _, m := range msgs {
		a, ok := m.(*wire.Ack)
		if !ok {
			t.Fatalf("agent answered %T %+v, want acks", m, m)
		}
		if a.Error != nil {
			t.Fatalf("ack for %s carries %v", a.SessionID, a.Error)
		}
		out[a.SessionID] = a.Generation
	}
	return out
}

func TestTunnelHelloHeartbeatPushAckStatusAndReconnect(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))

	// Hello names the agent from its certificate, with facts and capacity.
	c := g.next(t)
	// Its operator's tags travel as tags (1.1), not as capabilities, and a fresh agent
	// has applied the empty set.
	if c.hello.AgentID != agentID || c.hello.Protocol != wire.Current || c.hello.Capacity.CPUAllocatableMillis != 4000 ||
		c.hello.Cluster["platform"] != "memory" || !slices.Equal(c.hello.Tags, []string{"gpu", "zone=eu-west-1a"}) ||
		slices.Contains(c.hello.Capabilities, "zone=eu-west-1a") || c.hello.AppliedChecksum != wire.Checksum(nil) {
		t.Fatalf("hello = %+v", c.hello)
	}
	c.await(t, "full status report", func(m wire.Message) bool { sr, ok := m.(*wire.StatusReport); return ok && sr.Full })
	c.await(t, "heartbeat", func(m wire.Message) bool { hb, ok := m.(*wire.Heartbeat); return ok && hb.Seq >= 1 })

	// A push on a gateway-opened stream is applied and acknowledged per session.
	set := []wire.Assignment{as("s1", 1, wire.DesiredRunning)}
	got := acksOf(t, c.push(t, &wire.DesiredState{Full: true, Checksum: wire.Checksum(set), Assignments: set}))
	if got["s1"] != 1 || len(got) != 1 {
		t.Fatalf("acks = %v", got)
	}
	c.await(t, "s1 running", statusOf("s1", wire.PhaseRunning))
	c.await(t, "heartbeat counting s1", func(m wire.Message) bool {
		hb, ok := m.(*wire.Heartbeat)
		return ok && hb.Capacity != nil && hb.Capacity.Sessions == 1
	})

	// The gateway restarts; the agent comes back by itself, announces itself again and
	// reports its full status, and the re-sent full set (plus new work) is reconciled:
	// s1 is a duplicate and is not re-applied, s2 is created.
	g.restart()
	c = g.next(t)
	if c.hello.AgentID != agentID || c.hello.AppliedChecksum != wire.Checksum(set) {
		t.Fatalf("hello after reconnect = %+v, want applied checksum %s", c.hello, wire.Checksum(set))
	}
	c.await(t, "full status with s1 running", func(m wire.Message) bool {
		sr, ok := m.(*wire.StatusReport)
		return ok && sr.Full && statusOf("s1", wire.PhaseRunning)(m)
	})
	set = append(set, as("s2", 1, wire.DesiredRunning))
	got = acksOf(t, c.push(t, &wire.DesiredState{Full: true, More: true, Assignments: set[:1]},
		&wire.DesiredState{Full: true, Checksum: wire.Checksum(set), Assignments: set[1:]}))
	if got["s1"] != 1 || got["s2"] != 1 {
		t.Fatalf("acks after reconnect = %v", got)
	}
	if n := a.backend.ApplyCalls("s1"); n != 1 {
		t.Fatalf("s1 applied %d times; a re-delivered duplicate must be harmless", n)
	}
	c.await(t, "s2 running", statusOf("s2", wire.PhaseRunning))
}

func TestTunnelChecksumMatchSkipsPushAndRemovesOrphans(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	g.checksum = wire.Checksum(nil) // the gateway wants nothing on this agent
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	a.backend.Seed(wire.SessionStatus{SessionID: "orphan", Phase: wire.PhaseRunning})
	g.next(t)
	// The orphan may be seeded after the first connection's reconcile ran; a reconnect
	// reconciles again, which is exactly the property under test.
	g.restart()
	c := g.next(t)
	c.await(t, "orphan reported deleted or absent", func(m wire.Message) bool {
		sr, ok := m.(*wire.StatusReport)
		if !ok {
			return false
		}
		if sr.Full {
			return !slices.ContainsFunc(sr.Sessions, func(s wire.SessionStatus) bool { return s.SessionID == "orphan" })
		}
		return statusOf("orphan", wire.PhaseDeleted)(m)
	})
	if !slices.Contains(a.backend.Removed(), "orphan") {
		t.Fatalf("removed = %v", a.backend.Removed())
	}
}

func TestTunnelBadChecksumIsRefusedOnTheStream(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	c := g.next(t)
	msgs := c.push(t, &wire.DesiredState{Full: true, Checksum: "sha256:00", Assignments: []wire.Assignment{as("s1", 1, wire.DesiredRunning)}})
	if len(msgs) != 1 {
		t.Fatalf("answers = %+v", msgs)
	}
	if e, ok := msgs[0].(*wire.Error); !ok || e.Permanent {
		t.Fatalf("answer = %+v, want a retryable error", msgs[0])
	}
	if a.backend.ApplyCalls("s1") != 0 {
		t.Fatal("applied a set that failed its checksum")
	}
}

func TestTunnelPermanentRefusalStopsRetrying(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	g.refuse = &refusal{&wire.Error{Code: wire.CodeForbidden, Message: "agent deleted", Permanent: true}, wire.CloseRevoked}
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		var perm *tunnel.PermanentError
		if !errors.As(err, &perm) || !errors.Is(err, &wire.Error{Code: wire.CodeForbidden}) {
			t.Fatalf("Run = %v, want a permanent forbidden error", err)
		}
	case <-time.After(waitFor):
		t.Fatal("agent kept retrying after a permanent refusal")
	}
}

func TestTunnelRefusedCertificateIsPermanent(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	g.verify = func(*x509.Certificate) error { return errors.New("revoked") }
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	select {
	case err := <-a.done:
		a.done <- err
		var perm *tunnel.PermanentError
		if !errors.As(err, &perm) {
			t.Fatalf("Run = %v, want a permanent error", err)
		}
	case <-time.After(waitFor):
		t.Fatal("agent kept retrying with a refused certificate")
	}
}

func TestTunnelDrainsWithGoodbyeOnShutdown(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	c := g.next(t)
	c.await(t, "full status report", func(m wire.Message) bool { _, ok := m.(*wire.StatusReport); return ok })
	a.cancel()
	gb := c.await(t, "goodbye", func(m wire.Message) bool { _, ok := m.(*wire.Goodbye); return ok }).(*wire.Goodbye)
	if gb.Reason != wire.GoodbyeShutdown {
		t.Fatalf("goodbye = %+v", gb)
	}
	select {
	case err := <-a.done:
		a.done <- err
		if err != nil {
			t.Fatalf("Run after shutdown = %v", err)
		}
	case <-time.After(waitFor):
		t.Fatal("Run did not return after shutdown")
	}
}

func TestTunnelGoodbyeFromGatewayReconnects(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	c := g.next(t)
	if err := c.ctrlW.Write(&wire.Goodbye{Reason: wire.GoodbyeDrain, ReconnectElsewhere: true}); err != nil {
		t.Fatal(err)
	}
	g.next(t)
}

func TestTunnelRenewsCertificateBeforeExpiry(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	// Two thirds of this certificate's life are over: renewal is due at once.
	old := credential(t, ca, time.Now().Add(-50*time.Minute), time.Hour)
	a := startAgent(t, g, old)
	c := g.next(t)
	if !c.peer.Equal(old.Leaf()) {
		t.Fatal("first connection did not present the original certificate")
	}
	deadline := time.After(waitFor)
	for a.holder.Current() == old {
		select {
		case <-deadline:
			t.Fatal("certificate never renewed")
		case <-time.After(10 * time.Millisecond):
		}
	}
	renewed := a.holder.Current()
	if renewed.Agent != agentID || !renewed.Leaf().NotAfter.After(old.Leaf().NotAfter) {
		t.Fatalf("renewed = %s until %v", renewed.Agent, renewed.Leaf().NotAfter)
	}
	// The next connection presents the renewed certificate.
	g.restart()
	c = g.next(t)
	if !c.peer.Equal(renewed.Leaf()) {
		t.Fatal("reconnect did not present the renewed certificate")
	}
}

// A gateway that cannot reach its database says "unavailable" (an Error, then close code
// CloseUnavailable, or only the close code when it overtakes the Error): the agent keeps
// retrying, well past its RefusalGrace, and connects once the gateway recovers.
func TestTunnelGatewayUnavailableIsRetried(t *testing.T) {
	t.Parallel()
	for _, withError := range []bool{true, false} {
		ca := testpki.New(t)
		g := newGateway(t, ca)
		r := &refusal{code: wire.CloseUnavailable}
		if withError {
			r.err = &wire.Error{Code: wire.CodeUnavailable, Message: "registry unreachable", RetryAfter: 10 * time.Millisecond}
		}
		g.refuse = r
		a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
		deadline := time.After(waitFor)
		for g.hellos.Load() < 4 {
			select {
			case err := <-a.done:
				t.Fatalf("error=%v: Run returned %v while the gateway was unavailable", withError, err)
			case <-deadline:
				t.Fatalf("error=%v: only %d hellos", withError, g.hellos.Load())
			case <-time.After(10 * time.Millisecond):
			}
		}
		// Longer than the RefusalGrace (1 s): unavailability is never a refusal.
		select {
		case err := <-a.done:
			t.Fatalf("error=%v: Run returned %v while the gateway was unavailable", withError, err)
		case <-time.After(1500 * time.Millisecond):
		}
		g.mu.Lock()
		g.refuse = nil
		g.mu.Unlock()
		g.next(t)
	}
}

// The permanent close codes stop the agent even when the close overtakes the Error.
func TestTunnelRevokedCloseCodeIsPermanent(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	g.refuse = &refusal{code: wire.CloseRevoked}
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	select {
	case err := <-a.done:
		a.done <- err
		var perm *tunnel.PermanentError
		if !errors.As(err, &perm) || !errors.Is(err, &wire.Error{Code: wire.CodeForbidden}) {
			t.Fatalf("Run = %v, want a permanent forbidden error", err)
		}
	case <-time.After(waitFor):
		t.Fatal("agent kept retrying after CloseRevoked")
	}
}

// beatAfter returns the first heartbeat computed after the backend's call number n, on
// the agent's first connection (see capacitySwitch).
func (c *gwConn) beatAfter(t *testing.T, n int) *wire.Heartbeat {
	t.Helper()
	for {
		if hb := c.heartbeat(t); int(hb.Seq)+1 > n {
			return hb
		}
	}
}

func capString(c *wire.Capacity) string {
	if c == nil {
		return "none"
	}
	return fmt.Sprintf("%+v", *c)
}

// Under 1.2 a heartbeat carries capacity only when it changed since the last one the
// connection reported (Hello's included) and on every wire.CapacityRefresh-th beat; a
// capacity the backend cannot tell is omitted, never sent as zeros.
func TestTunnelHeartbeatCapacityOnChangeAndRefresh(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	c := g.next(t)
	hello := c.hello.Capacity
	if hello.CPUAllocatableMillis != 4000 {
		t.Fatalf("hello capacity %+v", hello)
	}
	// An idle agent's capacity does not change: only the refresh beats carry it.
	for seq := uint64(1); seq <= 2*wire.CapacityRefresh; seq++ {
		hb := c.heartbeat(t)
		if hb.Seq != seq {
			t.Fatalf("heartbeat seq %d, want %d", hb.Seq, seq)
		}
		refresh := seq%wire.CapacityRefresh == 0
		if refresh && (hb.Capacity == nil || *hb.Capacity != hello) || !refresh && hb.Capacity != nil {
			t.Fatalf("heartbeat %d carries %s; want Hello's capacity on every %dth beat only", seq, capString(hb.Capacity), wire.CapacityRefresh)
		}
	}

	// A change goes out with the next beat, and the beat after it is liveness only.
	set := []wire.Assignment{as("s1", 1, wire.DesiredRunning)}
	if got := acksOf(t, c.push(t, &wire.DesiredState{Full: true, Checksum: wire.Checksum(set), Assignments: set})); got["s1"] != 1 {
		t.Fatalf("acks = %v", got)
	}
	hb := c.beatAfter(t, a.capacity.count())
	if hb.Capacity == nil || hb.Capacity.Sessions != 1 {
		t.Fatalf("first heartbeat after s1 was applied carries %s, want 1 session", capString(hb.Capacity))
	}
	if hb := c.heartbeat(t); hb.Capacity != nil {
		t.Fatalf("heartbeat after the change carries %s again", capString(hb.Capacity))
	}

	// While the backend cannot tell its capacity no beat carries one, though refreshes
	// fall due; the first beat after it recovers does.
	down := a.capacity.set(true)
	for n := 0; n < 2*wire.CapacityRefresh; n++ {
		if hb := c.beatAfter(t, down); hb.Capacity != nil {
			t.Fatalf("heartbeat %d carries %s while the backend cannot tell its capacity", hb.Seq, capString(hb.Capacity))
		}
	}
	hb = c.beatAfter(t, a.capacity.set(false))
	if hb.Capacity == nil || hb.Capacity.Sessions != 1 {
		t.Fatalf("first heartbeat after the backend recovered carries %s", capString(hb.Capacity))
	}
}

// A 1.1 gateway reads a missing capacity as zeros: every heartbeat carries one, and
// while the backend cannot tell it, the last one reported.
func TestTunnelHeartbeatCapacityToOlderGateway(t *testing.T) {
	t.Parallel()
	ca := testpki.New(t)
	g := newGateway(t, ca)
	g.accept = wire.Version{Major: 1, Minor: 1}
	a := startAgent(t, g, credential(t, ca, time.Now().Add(-time.Hour), 24*time.Hour))
	c := g.next(t)
	hello := c.hello.Capacity
	if c.hello.Protocol != wire.Current || hello.CPUAllocatableMillis != 4000 {
		t.Fatalf("hello %+v", c.hello)
	}
	for range 2 * wire.CapacityRefresh {
		if hb := c.heartbeat(t); hb.Capacity == nil || *hb.Capacity != hello {
			t.Fatalf("heartbeat %d to a 1.1 gateway carries %s, want %+v", hb.Seq, capString(hb.Capacity), hello)
		}
	}
	down := a.capacity.set(true)
	for range wire.CapacityRefresh {
		if hb := c.beatAfter(t, down); hb.Capacity == nil || *hb.Capacity != hello {
			t.Fatalf("heartbeat %d to a 1.1 gateway while the backend cannot tell carries %s, want the last reported %+v",
				hb.Seq, capString(hb.Capacity), hello)
		}
	}
}
