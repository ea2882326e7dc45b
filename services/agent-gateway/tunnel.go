package gateway

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/seal"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
	"streamspace.dev/libs/wire/wireotel"
)

// qcode converts a close code of the protocol (libs/wire defines them once, for the
// agent and the gateway) to quic-go's type.
func qcode(c wire.CloseCode) quic.ApplicationErrorCode { return quic.ApplicationErrorCode(c) }

// scode is qcode for stream resets.
func scode(c wire.CloseCode) quic.StreamErrorCode { return quic.StreamErrorCode(c) }

// Protocol timing.
const (
	// helloTimeout bounds how long an authenticated connection may take to open its
	// control stream and say Hello.
	helloTimeout = 10 * time.Second
	// openTimeout bounds opening a gateway stream (the agent's stream credit may be
	// exhausted by a stuck agent).
	openTimeout = 10 * time.Second
	// ackWait is how long a desired-state stream waits for its acks before the retry
	// timers take over.
	ackWait = 30 * time.Second
	// flushDelay lets a final Goodbye or Error leave before CONNECTION_CLOSE, which
	// discards unsent stream data.
	flushDelay = 100 * time.Millisecond
	// maxPart bounds the assignments' bytes in one DesiredState part, well under the
	// 1 MiB frame limit every reader of version 1 accepts.
	maxPart = 512 << 10
	// verifyTimeout bounds the registry check of a client certificate, inside the TLS
	// handshake and again after Hello; it stays under the QUIC handshake timeout, so a
	// slow database yields "unavailable", not a handshake that times out.
	verifyTimeout = 3 * time.Second
	// unavailableRetry is the RetryAfter of an agent turned away because the gateway's
	// own dependencies (the database) fail: long enough not to hammer a recovering
	// database, short enough that agents are back soon after it is.
	unavailableRetry = 5 * time.Second
)

// Gateway is one replica's tunnel endpoint: the QUIC listener, the HTTPS enrollment
// listener, the tunnels it holds and the loops that keep them honest.
type Gateway struct {
	cfg      Config
	id       string
	store    Store
	ca       *CA
	enroller Enroller
	log      *slog.Logger
	tracer   trace.Tracer
	hub      *hub
	metrics  *metrics
	verified verdicts
	beats    beats
	// admit holds a token per connection between its Hello and its HelloAck.
	admit chan struct{}
	// handshakes holds a token per connection from its first packet until its HelloAck
	// or its failure; see admitHandshake.
	handshakes chan struct{}

	// draining is set when Close begins: tunnels ending from then on leave the release
	// of their owner rows to Close, which releases them all in one transaction per
	// tenant instead of one each.
	draining atomic.Bool
	drainMu  sync.Mutex
	drained  map[tenant.ID]map[AgentID]string

	udp   net.PacketConn
	tr    *quic.Transport
	ql    *quic.Listener
	tcp   net.Listener
	https *http.Server
	// peer is this replica's certificate for other replicas; peerLn and peerSrv serve
	// the streams they forward here (peer.go).
	peer    *peerIdentity
	peerLn  *peerListener
	peerSrv *http.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// GatewayOptions are the dependencies of a Gateway.
type GatewayOptions struct {
	Store    Store
	Enroller Enroller
	// ConnConfig is where the LISTEN connection dials (the pool's configuration).
	ConnConfig *pgx.ConnConfig
	Logger     *slog.Logger
	// TracerProvider defaults to the global one.
	TracerProvider trace.TracerProvider
	// Registry, if set, receives the tunnel's metrics.
	Registry prometheus.Registerer
}

// StartGateway loads (or creates) the CA, binds the agents' address on UDP and TCP and
// starts serving. Close stops it.
func StartGateway(ctx context.Context, cfg Config, o GatewayOptions) (*Gateway, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kek, _ := seal.ParseKey(cfg.KEK)
	ca, err := LoadCA(ctx, o.Store, kek)
	if err != nil {
		return nil, err
	}
	if cfg.GatewayID == "" {
		host, _ := os.Hostname()
		cfg.GatewayID = fmt.Sprintf("%s-%s", host, randomToken(4))
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	tp := o.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	g := &Gateway{cfg: cfg, id: cfg.GatewayID, store: o.Store, ca: ca, enroller: o.Enroller,
		log: o.Logger.With("gateway_id", cfg.GatewayID), tracer: tp.Tracer("streamspace.dev/services/agent-gateway")}
	g.hub = newHub(g.log, o.ConnConfig)
	g.admit = make(chan struct{}, cfg.ConnectConcurrency)
	g.handshakes = make(chan struct{}, cfg.HandshakeConcurrency)
	g.metrics = newMetrics(o.Registry)

	var serverCert tls.Certificate
	if cfg.TLSCertFile != "" {
		if serverCert, err = tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile); err != nil {
			return nil, fmt.Errorf("loading --agent-tls-cert: %w", err)
		}
	} else if serverCert, err = ca.IssueServer(cfg.ServerNames, 365*24*time.Hour); err != nil {
		return nil, err
	}
	g.peer = &peerIdentity{ca: ca, id: g.id, ttl: replicaCertTTL}
	if err := g.peer.renew(); err != nil {
		return nil, err
	}
	// The peer listener is bound first: on one host, its address is the advertised one.
	pln, err := net.Listen("tcp", cfg.PeerListen)
	if err != nil {
		return nil, fmt.Errorf("listening on --peer-listen %s: %w", cfg.PeerListen, err)
	}
	if cfg.AdvertiseURL == "" {
		cfg.AdvertiseURL = loopbackURL(pln.Addr().String())
		g.cfg.AdvertiseURL = cfg.AdvertiseURL
	}
	g.peerLn = newPeerListener(pln, g.peer.serverTLS(), g.log, g.metrics.peerRefused)
	g.peerSrv = g.peerServer()
	// The replica's row exists before any owner row names it.
	if err := o.Store.RegisterReplica(ctx, g.id, cfg.AdvertiseURL); err != nil {
		g.peerLn.Close()
		return nil, fmt.Errorf("registering replica %s: %w", g.id, err)
	}
	if err := g.listen(serverCert); err != nil {
		g.peerLn.Close()
		_ = o.Store.RemoveReplica(ctx, g.id)
		return nil, err
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	g.wg.Go(func() { g.peer.run(g.ctx, g.log) })
	g.wg.Go(func() { g.hub.ln.run(g.ctx) })
	g.wg.Go(g.acceptLoop)
	g.wg.Go(g.ownerLoop)
	g.wg.Go(g.heartbeatLoop)
	g.wg.Go(g.sweepLoop)
	g.wg.Go(func() {
		if err := g.https.Serve(g.tcp); err != nil && !errors.Is(err, http.ErrServerClosed) {
			g.log.Error("enrollment listener failed", "err", err)
		}
	})
	g.log.Info("agent gateway listening", "quic", g.ql.Addr().String(), "https", g.tcp.Addr().String(),
		"peer", g.peerLn.Addr().String(), "advertise_url", cfg.AdvertiseURL)
	return g, nil
}

// listen binds UDP and TCP on the same port, so agents need one address for both.
func (g *Gateway) listen(cert tls.Certificate) error {
	udp, tcp, err := bindPair(g.cfg.Listen)
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   wire.SupportedALPNs(),
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    g.ca.Pool(),
		// The chain is verified by crypto/tls; this adds what only the registry knows:
		// the agent still exists, in the tenant its certificate names, and that tenant is
		// active. A deleted agent's certificate fails here, on every replica, at once.
		VerifyConnection: g.verifyAgent,
	}
	// The transport outlives the listener: closing the listener at the start of a drain
	// stops new connections while the held ones are told goodbye.
	tr := &quic.Transport{Conn: udp, ConnContext: g.admitHandshake}
	ql, err := tr.Listen(tlsConf, &quic.Config{
		KeepAlivePeriod:       g.cfg.KeepAlive,
		MaxIdleTimeout:        g.cfg.IdleTimeout,
		HandshakeIdleTimeout:  5 * time.Second,
		MaxIncomingStreams:    8, // the control stream and a certificate renewal or two
		MaxIncomingUniStreams: -1,
	})
	if err != nil {
		udp.Close()
		tcp.Close()
		return err
	}
	g.udp, g.tr, g.ql = udp, tr, ql
	g.tcp = tls.NewListener(tcp, &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		NextProtos: []string{"h2", "http/1.1"}})
	g.https = &http.Server{Handler: g.enrollHandler(), ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)}
	return nil
}

// bindPair binds UDP and then TCP on the same port. With port 0 the UDP port is picked
// by the kernel and may be taken on TCP; a few fresh picks fix that.
func bindPair(addr string) (net.PacketConn, net.Listener, error) {
	host, port, _ := net.SplitHostPort(addr)
	attempts := 1
	if port == "0" {
		attempts = 20
	}
	var err error
	for range attempts {
		var udp net.PacketConn
		if udp, err = net.ListenPacket("udp", addr); err != nil {
			return nil, nil, fmt.Errorf("listening on udp %s: %w", addr, err)
		}
		p := udp.LocalAddr().(*net.UDPAddr).Port
		var tcp net.Listener
		if tcp, err = net.Listen("tcp", net.JoinHostPort(host, fmt.Sprint(p))); err == nil {
			return udp, tcp, nil
		}
		udp.Close()
		err = fmt.Errorf("listening on tcp port %d: %w", p, err)
	}
	return nil, nil, err
}

// verifyAgent is the TLS handshake's registry check. It refuses the handshake only when
// the registry definitely says no (the agent is unknown or deleted, its tenant is not
// active, or the certificate names another tenant), because the agent cannot tell one
// refusal from another and eventually gives up on them. When the registry cannot be
// asked (a database failure or timeout) it lets the handshake finish unverified: the
// connection is checked again after Hello, where a failure that persists is reported as
// a retryable "unavailable" the agent can tell from a revocation.
func (g *Gateway) verifyAgent(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("no client certificate")
	}
	leaf := cs.PeerCertificates[0]
	id, err := IdentityOf(leaf)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), verifyTimeout)
	defer cancel()
	switch err := g.checkAgent(ctx, id); {
	case err == nil:
		g.verified.put(leaf)
		return nil
	case errors.Is(err, errNotEnrolled):
		g.log.Info("refused agent certificate", "agent_id", id.Agent, "tenant_id", id.Tenant, "err", err)
		return err
	default:
		g.log.Warn("cannot check an agent certificate against the registry; checking again after hello",
			"agent_id", id.Agent, "tenant_id", id.Tenant, "err", err)
		return nil
	}
}

// errNotEnrolled is checkAgent's definite "no".
var errNotEnrolled = errors.New("agent is not enrolled")

// checkAgent asks the registry whether id is a live agent of an active tenant, the one its
// certificate names. It fails with errNotEnrolled when the registry says no, and with
// the store's error when it cannot be asked.
func (g *Gateway) checkAgent(ctx context.Context, id Identity) error {
	tid, err := g.store.DirectoryTenant(ctx, id.Agent)
	if apperr.IsCode(err, apperr.NotFound) {
		return fmt.Errorf("agent %s: %w", id.Agent, errNotEnrolled)
	}
	if err != nil {
		return err
	}
	if tid != id.Tenant {
		g.log.Warn("agent certificate names the wrong tenant", "agent_id", id.Agent, "cert_tenant", id.Tenant)
		return fmt.Errorf("agent %s: %w", id.Agent, errNotEnrolled)
	}
	return nil
}

// verdicts carries verifyAgent's positive verdicts from the TLS handshake to serve, which
// only gets the connection afterwards: the leaf certificates, one parsed per handshake
// and compared by identity, whose agent the registry confirmed. A connection whose
// certificate is missing here is checked again, so a lost verdict costs a query, never
// a check. Verdicts of handshakes that failed after verification are swept after a
// minute.
type verdicts struct {
	mu    sync.Mutex
	ok    map[*x509.Certificate]time.Time
	swept time.Time
}

func (v *verdicts) put(leaf *x509.Certificate) {
	now := time.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.ok == nil {
		v.ok = map[*x509.Certificate]time.Time{}
	}
	if now.Sub(v.swept) > time.Minute {
		for c, at := range v.ok {
			if now.Sub(at) > time.Minute {
				delete(v.ok, c)
			}
		}
		v.swept = now
	}
	v.ok[leaf] = now
}

// take reports whether leaf was verified, and forgets it.
func (v *verdicts) take(leaf *x509.Certificate) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	_, ok := v.ok[leaf]
	delete(v.ok, leaf)
	return ok
}

// ID returns the replica's id.
func (g *Gateway) ID() string { return g.id }

// Addr returns the agents' address (UDP for QUIC, the same port on TCP for enrollment).
func (g *Gateway) Addr() string { return g.ql.Addr().String() }

// CA returns the agent CA.
func (g *Gateway) CA() *CA { return g.ca }

// Connected reports whether this replica holds a tunnel of agent id.
func (g *Gateway) Connected(id AgentID) bool { return g.hub.get(id) != nil }

// Revoke closes agent id's tunnel if this replica holds it; DeleteAgent calls it.
func (g *Gateway) Revoke(id AgentID) {
	if c := g.hub.get(id); c != nil {
		c.close(closeRevoked)
	}
}

// Close drains the replica: agents are told to reconnect elsewhere, ownership is
// released, and the listeners close.
func (g *Gateway) Close(ctx context.Context) error {
	g.draining.Store(true)
	g.ql.Close()
	// No new forwards either: the replicas that would forward one get a refused dial and
	// answer their caller a retryable 503, by which time its agent has moved.
	g.peerLn.Close()
	// Requests in flight (enrollments; forwarded streams before their upgrade) finish.
	// Upgraded streams, local or forwarded here, are not waited for: they end below, as
	// their agents are told to go.
	var peerErr error
	var shut sync.WaitGroup
	shut.Go(func() { peerErr = g.peerSrv.Shutdown(ctx) })
	shutdownErr := g.https.Shutdown(ctx)
	shut.Wait()
	shutdownErr = errors.Join(shutdownErr, peerErr)
	var wg sync.WaitGroup
	for _, c := range g.hub.all() {
		wg.Go(func() { c.close(closeGoingAway); <-c.done })
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	// Closing the socket also ends handshakes still in flight, which hold no claim yet.
	g.cancel()
	g.tr.Close()
	g.udp.Close()
	g.wg.Wait()
	// Every tunnel has ended; those that ended during the drain are released together.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for tid, owned := range g.drained {
		if err := g.store.ReleaseMany(auth.AsSystem(rctx, tid, "gateway:"+g.id), owned); err != nil {
			g.log.Warn("releasing owner rows", "tenant_id", tid, "count", len(owned), "err", err)
		}
	}
	// Owner rows still naming the replica (a release that failed) now have no live owner.
	if err := g.store.RemoveReplica(rctx, g.id); err != nil {
		g.log.Warn("removing the replica row", "err", err)
	}
	return shutdownErr
}

// errBusy refuses a connection beyond the handshake limit.
var errBusy = errors.New("too many handshakes in progress")

// admitHandshake is the QUIC transport's ConnContext: it runs at a connection's first
// packet, before any cryptography, and lets at most HandshakeConcurrency connections be
// between that packet and their HelloAck. A connection beyond the limit is refused at
// once with CONNECTION_REFUSED, which the agent retries with its jittered backoff. A
// storm of reconnecting agents is so served a bounded number at a time, each
// handshake getting the CPU to finish well within the agent's handshake timeout;
// unbounded, every handshake of a storm on a busy machine shares the CPU until most
// time out and all of that work is lost.
func (g *Gateway) admitHandshake(ctx context.Context, _ *quic.ClientInfo) (context.Context, error) {
	select {
	case g.handshakes <- struct{}{}:
	default:
		g.metrics.busy.Inc()
		return nil, errBusy
	}
	t := &handshakeToken{g: g}
	// A connection that fails before serve takes over returns its token when it closes.
	context.AfterFunc(ctx, t.release)
	return context.WithValue(ctx, handshakeTokenKey{}, t), nil
}

// handshakeToken is one connection's place among the handshakes in progress.
type handshakeToken struct {
	g    *Gateway
	once sync.Once
}

type handshakeTokenKey struct{}

func (t *handshakeToken) release() { t.once.Do(func() { <-t.g.handshakes }) }

// handshakeDone returns the token of qc's handshake, if it holds one.
func handshakeDone(qc *quic.Conn) {
	if t, ok := qc.Context().Value(handshakeTokenKey{}).(*handshakeToken); ok {
		t.release()
	}
}

// releaseLater leaves the release of c's owner row to Close when the replica is
// draining, and reports whether it did. Should two connections of one agent end during
// the drain, the one recorded last is released; if that is the superseded one, the
// fence leaves the row alone, and the row names a replica whose row Close removes: no
// live owner, and the agent ages offline by its last heartbeat.
func (g *Gateway) releaseLater(c *agentConn) bool {
	if !g.draining.Load() {
		return false
	}
	g.drainMu.Lock()
	defer g.drainMu.Unlock()
	if g.drained == nil {
		g.drained = map[tenant.ID]map[AgentID]string{}
	}
	if g.drained[c.id.Tenant] == nil {
		g.drained[c.id.Tenant] = map[AgentID]string{}
	}
	g.drained[c.id.Tenant][c.id.Agent] = c.connID
	return true
}

func (g *Gateway) acceptLoop() {
	for {
		qc, err := g.ql.Accept(g.ctx)
		if err != nil {
			return
		}
		g.wg.Go(func() { g.serve(qc) })
	}
}

// ownerLoop keeps this replica's claims honest. Every OwnerHeartbeat it stamps the
// replica's row, the liveness of all its owner rows at once (one row written, however
// many agents it holds). Every ClaimCheck, and at once when the LISTEN connection was
// re-established, it checks, reading only, that its tunnels' claims still hold, and
// closes those lost without this replica hearing the NOTIFY: a superseding connection,
// or a deletion. Between checks the batched heartbeat writes, fenced per beat, catch a
// lost claim within a heartbeat interval too.
func (g *Gateway) ownerLoop() {
	stamp := time.NewTicker(g.cfg.OwnerHeartbeat)
	defer stamp.Stop()
	check := time.NewTicker(g.cfg.ClaimCheck)
	defer check.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-stamp.C:
			if err := g.store.StampReplica(g.ctx, g.id, g.cfg.AdvertiseURL); err != nil && g.ctx.Err() == nil {
				g.log.Warn("stamping the replica row", "err", err)
			}
		case <-check.C:
			g.checkClaims()
		case <-g.hub.recheck:
			g.checkClaims()
		}
	}
}

func (g *Gateway) checkClaims() {
	owned := g.hub.owned()
	lost, err := g.store.LostClaims(g.ctx, owned)
	if err != nil {
		if g.ctx.Err() == nil {
			g.log.Warn("checking owner rows", "err", err)
		}
		return
	}
	for _, id := range lost {
		c := g.hub.get(id)
		if c == nil || c.connID != owned[id] {
			continue
		}
		reason := closeSuperseded
		if _, err := g.store.DirectoryTenant(g.ctx, id); apperr.IsCode(err, apperr.NotFound) {
			reason = closeRevoked
		}
		c.close(reason)
	}
}

// heartbeatLoop writes the tunnels' heartbeats every HeartbeatFlush, one statement per
// tenant, and closes tunnels whose beat was refused because their claim was lost.
func (g *Gateway) heartbeatLoop() { g.every(g.cfg.HeartbeatFlush, g.flushBeats) }

// every runs fn every d until the gateway closes.
func (g *Gateway) every(d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

func (g *Gateway) flushBeats() {
	byTenant := map[tenant.ID][]beat{}
	for _, b := range g.beats.take() {
		byTenant[b.c.id.Tenant] = append(byTenant[b.c.id.Tenant], b)
	}
	for tid, bs := range byTenant {
		rows := make([]Beat, len(bs))
		byAgent := make(map[AgentID]*agentConn, len(bs))
		for i, b := range bs {
			rows[i] = Beat{Agent: b.c.id.Agent, Conn: b.c.connID, Capacity: b.capacity}
			byAgent[b.c.id.Agent] = b.c
		}
		lost, err := g.store.RecordHeartbeats(g.sys(tid), rows)
		if err != nil {
			if g.ctx.Err() == nil {
				g.log.Warn("recording heartbeats", "tenant_id", tid, "count", len(rows), "err", err)
				g.beats.restore(bs)
			}
			continue
		}
		g.metrics.heartbeatBatches.Inc()
		for _, id := range lost {
			if c := byAgent[id]; g.hub.get(id) == c {
				c.close(closeSuperseded)
			}
		}
	}
}

// sweepLoop is delivery's safety net for lost notifications: every Resync it asks, in one
// query per tenant, which of this replica's agents have unacknowledged work, and wakes
// only those tunnels. Between sweeps it answers the hub's requests for particular
// agents (their LISTEN just took effect) or for all of them (the LISTEN connection was
// re-established).
func (g *Gateway) sweepLoop() {
	t := time.NewTicker(g.cfg.Resync)
	defer t.Stop()
	for {
		tick := false
		select {
		case <-g.ctx.Done():
			return
		case <-t.C:
			tick = true
		case <-g.hub.sweeps.kick:
		}
		asked, all := g.hub.sweeps.take()
		var conns []*agentConn
		if tick || all {
			conns = g.hub.all()
		} else {
			for id := range asked {
				if c := g.hub.get(id); c != nil {
					conns = append(conns, c)
				}
			}
		}
		g.sweep(conns)
	}
}

// sweep wakes those of conns whose agent has pending work.
func (g *Gateway) sweep(conns []*agentConn) {
	byTenant := map[tenant.ID][]AgentID{}
	for _, c := range conns {
		byTenant[c.id.Tenant] = append(byTenant[c.id.Tenant], c.id.Agent)
	}
	for tid, ids := range byTenant {
		pending, err := g.store.PendingAgents(g.sys(tid), ids)
		if err != nil {
			if g.ctx.Err() == nil {
				g.log.Warn("sweeping for pending work", "tenant_id", tid, "err", err)
			}
			continue
		}
		for _, id := range pending {
			if c := g.hub.get(id); c != nil {
				c.poke()
			}
		}
	}
	g.metrics.sweeps.Inc()
}

// sys returns ctx acting for tenant tid as this replica, for the writes it makes on
// behalf of many agents at once.
func (g *Gateway) sys(tid tenant.ID) context.Context {
	return auth.AsSystem(g.ctx, tid, "gateway:"+g.id)
}

// backoff is the retry delay of the attempts-th unacknowledged push: doubling from
// RetryMin to RetryMax, with ±20% jitter so that many agents do not retry in step.
func (g *Gateway) backoff(attempts int) time.Duration {
	d := g.cfg.RetryMin
	for i := 1; i < attempts && d < g.cfg.RetryMax; i++ {
		d *= 2
	}
	d = min(d, g.cfg.RetryMax)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

func randomToken(n int) string {
	b := make([]byte, n)
	_, _ = crand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// closeReason says why the gateway closes a tunnel.
type closeReason int

const (
	closeDone closeReason = iota
	closeSuperseded
	closeRevoked
	closeGoingAway
	closeProtocol
	closeForbidden
	closeUnavailable
)

// agentConn is one agent's tunnel on this replica.
type agentConn struct {
	g      *Gateway
	qc     *quic.Conn
	id     Identity
	connID string
	owner  Owner
	log    *slog.Logger
	// accepted is the negotiated version, once Hello has been read; it bounds the close
	// codes the gateway may use (wire.CloseCode.For).
	accepted wire.Version

	ctrl *wire.Writer // set once the control stream is open
	done chan struct{}

	closeOnce sync.Once

	mu       sync.Mutex
	inflight map[SessionID]*flight
	// A tunnel's pushes run on a goroutine that exists only while there is something to
	// push, so an idle tunnel costs no goroutine (nor timer) for them. Under mu: pushing
	// says that goroutine runs (or, before the first push, is yet to start), again that
	// it was poked meanwhile and runs once more, stopped that the tunnel ended; retry
	// pokes it when the earliest unacknowledged push falls due.
	pushing, again, stopped bool
	retry                   *time.Timer
	pushes                  sync.WaitGroup
}

// flight is one pushed generation awaiting its ack.
type flight struct {
	gen      int64
	attempts int
	nextAt   time.Time
	// acked: the agent acknowledged gen. The flight is kept until a read of pending work
	// no longer lists it, so that a read taken just before the ack was stored does not
	// push gen again.
	acked bool
}

// sys returns ctx acting for the agent's tenant, as its certificate established.
func (c *agentConn) sys(ctx context.Context) context.Context {
	return auth.AsSystem(ctx, c.id.Tenant, "agent:"+string(c.id.Agent))
}

// poke asks for a push of pending work: NOTIFY, the sweep or a retry falling due.
func (c *agentConn) poke() {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.stopped:
	case c.pushing:
		c.again = true
	default:
		c.pushing = true
		c.pushes.Add(1)
		go c.runPushes(nil)
	}
}

// close ends the tunnel once, telling the agent why where the protocol has a message for
// it. It does not wait: the final message gets flushDelay to leave first.
func (c *agentConn) close(r closeReason) {
	c.closeOnce.Do(func() {
		var msg wire.Message
		code, desc := wire.CloseNormal, "closed"
		switch r {
		case closeSuperseded:
			msg = &wire.Goodbye{Reason: wire.GoodbyeSuperseded, Message: "a newer connection of this agent took over"}
			code, desc = wire.CloseSuperseded, "superseded"
		case closeRevoked:
			msg = &wire.Error{Code: wire.CodeForbidden, Message: "the agent was deleted; its certificate is revoked", Permanent: true}
			code, desc = wire.CloseRevoked, "revoked"
		case closeGoingAway:
			msg = &wire.Goodbye{Reason: wire.GoodbyeDrain, Message: "gateway " + c.g.id + " is stopping", ReconnectElsewhere: true}
			code, desc = wire.CloseGoingAway, "going away"
		case closeProtocol:
			code, desc = wire.CloseProtocol, "protocol error"
		case closeForbidden:
			code, desc = wire.CloseForbidden, "forbidden"
		case closeUnavailable:
			code, desc = wire.CloseUnavailable, "unavailable"
		}
		code = code.For(c.accepted)
		c.log.Info("closing tunnel", "reason", desc)
		if msg != nil && c.ctrl != nil {
			_ = c.ctrl.Write(msg)
			go func() {
				time.Sleep(flushDelay)
				_ = c.qc.CloseWithError(qcode(code), desc)
			}()
			return
		}
		_ = c.qc.CloseWithError(qcode(code), desc)
	})
}

// fail reports a protocol or policy failure on w (when there is a stream to report it on)
// and closes the tunnel.
func (c *agentConn) fail(w *wire.Writer, err error, r closeReason) {
	c.log.Info("agent tunnel failed", "err", err)
	if r == closeProtocol {
		c.g.metrics.protocolFails.Inc()
	}
	if w != nil {
		_ = w.Write(wire.ErrorOf(err))
		time.Sleep(flushDelay)
	}
	c.close(r)
}

func (g *Gateway) serve(qc *quic.Conn) {
	leaf := qc.ConnectionState().TLS.PeerCertificates[0]
	id, err := IdentityOf(leaf)
	if err != nil { // verifyAgent has already checked it
		_ = qc.CloseWithError(qcode(wire.CloseForbidden), "bad certificate")
		return
	}
	c := &agentConn{g: g, qc: qc, id: id, connID: randomToken(12),
		done: make(chan struct{}), inflight: map[SessionID]*flight{},
		pushing: true} // pokes before the first push wait for it: the full set goes first
	c.owner = Owner{Gateway: g.id, Conn: c.connID}
	c.log = g.log.With("tenant_id", id.Tenant, "agent_id", id.Agent, "conn", c.connID, "remote", qc.RemoteAddr().String())
	defer close(c.done)
	ctx := qc.Context()

	held, err := c.handshake(ctx, g.verified.take(leaf))
	handshakeDone(qc)
	if err != nil {
		return
	}
	defer func() {
		c.close(closeDone)
		g.hub.remove(c)
		g.beats.forget(c)
		if g.releaseLater(c) {
			return
		}
		if err := g.store.Release(c.sys(context.WithoutCancel(ctx)), id.Agent, c.owner); err != nil && !errors.Is(err, ErrNotOwner) {
			c.log.Warn("releasing the owner row", "err", err)
		}
	}()
	g.metrics.tunnels.Inc()
	defer g.metrics.tunnels.Dec()
	var wg sync.WaitGroup
	c.pushes.Add(1)
	go c.runPushes(func() { c.pushFirst(ctx, held.set, held.current) })
	wg.Go(func() { c.acceptStreams(ctx) })
	c.readControl(ctx, held.r)
	c.close(closeDone)
	c.mu.Lock()
	c.stopped = true
	if c.retry != nil {
		c.retry.Stop()
	}
	c.mu.Unlock()
	c.pushes.Wait()
	wg.Wait()
}

type handshakeResult struct {
	r   *wire.Reader
	set []Assignment
	// current: the agent's applied set already matches set (Hello.AppliedChecksum), so
	// the full push is skipped.
	current bool
}

// handshake opens the control stream, checks Hello, claims the agent and answers
// HelloAck. verified says whether the TLS handshake could confirm the agent in the
// registry; if not, it is checked here. It is the "agent.connect" span.
func (c *agentConn) handshake(ctx context.Context, verified bool) (handshakeResult, error) {
	ctx, span := c.g.tracer.Start(ctx, "agent.connect", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("streamspace.tenant_id", string(c.id.Tenant)),
			attribute.String("streamspace.agent_id", string(c.id.Agent)), attribute.String("streamspace.gateway_id", c.g.id)))
	defer span.End()
	res, err := c.handshakeSteps(ctx, verified)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "handshake failed")
	}
	return res, err
}

func (c *agentConn) handshakeSteps(ctx context.Context, verified bool) (handshakeResult, error) {
	actx, cancel := context.WithTimeout(ctx, helloTimeout)
	defer cancel()
	st, err := c.qc.AcceptStream(actx)
	if err != nil {
		c.close(closeProtocol)
		return handshakeResult{}, fmt.Errorf("no control stream: %w", err)
	}
	_ = st.SetReadDeadline(time.Now().Add(helloTimeout))
	r := wire.NewReader(st, 0)
	w := wire.NewWriter(st)
	pre, err := r.ReadPreamble()
	if err == nil && pre.Stream != wire.StreamControl {
		err = &wire.ProtocolError{Kind: wire.KindUnexpectedType, Detail: fmt.Sprintf("first stream is %s, want control", pre.Stream)}
	}
	if err != nil {
		st.CancelRead(scode(wire.CloseProtocol))
		c.fail(nil, err, closeProtocol)
		return handshakeResult{}, err
	}
	if err := w.WritePreamble(wire.StreamControl); err != nil {
		c.close(closeProtocol)
		return handshakeResult{}, err
	}
	env, err := r.ReadEnvelope()
	if err != nil {
		c.fail(w, err, closeProtocol)
		return handshakeResult{}, err
	}
	hello, ok := env.Message.(*wire.Hello)
	if !ok {
		err := &wire.ProtocolError{Kind: wire.KindUnexpectedType, Type: env.Message.Type(), Detail: "first message must be hello"}
		c.fail(w, err, closeProtocol)
		return handshakeResult{}, err
	}
	_ = st.SetReadDeadline(time.Time{})
	if hello.AgentID != c.id.Agent {
		err := &wire.Error{Code: wire.CodeForbidden, Message: "hello names another agent than the certificate", Permanent: true}
		c.log.Warn("hello names another agent", "hello_agent_id", hello.AgentID)
		c.fail(w, err, closeForbidden)
		return handshakeResult{}, err
	}
	accepted, err := wire.Negotiate(hello.Protocol)
	if err != nil {
		c.fail(w, err, closeForbidden)
		return handshakeResult{}, err
	}
	c.accepted = accepted
	if !verified {
		// The registry could not be asked during the TLS handshake; nothing of the agent's
		// is touched until it has been.
		vctx, cancel := context.WithTimeout(ctx, verifyTimeout)
		err := c.g.checkAgent(vctx, c.id)
		cancel()
		if errors.Is(err, errNotEnrolled) {
			c.fail(w, &wire.Error{Code: wire.CodeForbidden, Message: "the agent is not enrolled", Permanent: true}, closeForbidden)
			return handshakeResult{}, err
		}
		if err != nil {
			c.log.Warn("cannot check the agent against the registry", "err", err)
			c.fail(w, unavailable("the agent registry is unreachable; try again later"), closeUnavailable)
			return handshakeResult{}, err
		}
	}
	tags, dropped := reportedTags(hello)
	if len(dropped) > 0 {
		c.log.Warn("ignoring agent-reported tags an admin could not set", "tags", dropped)
	}
	set, err := c.connect(ctx, Hello{Version: hello.AgentVersion, ReportedTags: tags, Facts: hello.Cluster, Capacity: hello.Capacity})
	if err != nil {
		c.log.Warn("claiming the agent and loading its state", "err", err)
		if apperr.IsCode(err, apperr.NotFound) {
			c.fail(w, &wire.Error{Code: wire.CodeForbidden, Message: "the agent was deleted", Permanent: true}, closeRevoked)
		} else {
			c.fail(w, unavailable("cannot register the tunnel; try again later"), closeUnavailable)
		}
		return handshakeResult{}, err
	}
	c.ctrl = w
	// Work announced between reading the set and the LISTEN taking effect is found by the
	// sweep the hub asks for once it does.
	c.g.hub.add(c)
	sum := wire.Checksum(toWire(c.id, set))
	// The agent's applied set matches: HelloAck says so with the same checksum, and the
	// full push is skipped (the agent then reconciles locally against what it applied).
	current := hello.AppliedChecksum == sum
	ack := &wire.HelloAck{GatewayID: wire.GatewayID(c.g.id), Accepted: accepted,
		HeartbeatInterval: c.g.cfg.HeartbeatInterval, DesiredChecksum: sum}
	if err := wireotel.Write(ctx, w, ack); err != nil {
		c.g.hub.remove(c)
		c.close(closeDone)
		return handshakeResult{}, err
	}
	c.log.Info("agent connected", "agent_version", hello.AgentVersion, "protocol", accepted.String(), "desired", len(set),
		"current", current, "verified_late", !verified)
	return handshakeResult{r: r, set: set, current: current}, nil
}

// connect claims the agent, records its Hello and reads its desired set, in one
// transaction (one round trip for its statements), once admitted: at most
// ConnectConcurrency connections do so at a time and the rest of a storm waits here, for
// as long as the connection lives, rather than in the database pool's queue.
func (c *agentConn) connect(ctx context.Context, h Hello) ([]Assignment, error) {
	select {
	case c.g.admit <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.g.admit }()
	return c.g.store.Connect(c.sys(ctx), c.id.Agent, c.owner, h)
}

// unavailable is what an agent turned away for the gateway's own failure is told: retry
// later; nothing is wrong with the agent.
func unavailable(msg string) *wire.Error {
	return &wire.Error{Code: wire.CodeUnavailable, Message: msg, RetryAfter: unavailableRetry}
}

// reportedTags returns what the gateway records as the agent's own tags: Hello.Tags
// (since 1.1) and, as before, its capabilities, which is also where a 1.0 agent put its
// operator's tags. Tags are normalised like an admin's (lowercase, trimmed); those an
// admin could not set, duplicates and any beyond the admin's limit are dropped, and
// the dropped ones returned for the log.
func reportedTags(h *wire.Hello) (tags, dropped []string) {
	seen := map[string]bool{}
	for _, t := range slices.Concat(h.Capabilities, h.Tags) {
		n := strings.ToLower(strings.TrimSpace(t))
		switch {
		case seen[n]:
		case len(n) > maxTagLength || !tagPattern.MatchString(n) || len(tags) == maxTags:
			dropped = append(dropped, t)
		default:
			seen[n] = true
			tags = append(tags, n)
		}
	}
	return tags, dropped
}

func toWire(id Identity, set []Assignment) []wire.Assignment {
	out := make([]wire.Assignment, len(set))
	for i, a := range set {
		out[i] = wire.Assignment{SessionID: a.SessionID, TenantID: id.Tenant, Generation: a.Generation, Desired: a.Desired, Spec: a.Spec}
	}
	return out
}

// readControl serves the control stream until it ends.
func (c *agentConn) readControl(ctx context.Context, r *wire.Reader) {
	for {
		env, err := r.ReadEnvelope()
		if err != nil {
			var pe *wire.ProtocolError
			if errors.As(err, &pe) {
				c.fail(c.ctrl, err, closeProtocol)
			} else if !errors.Is(err, io.EOF) && ctx.Err() == nil {
				c.log.Info("control stream ended", "err", err)
			}
			return
		}
		mctx := wireotel.Extract(ctx, env)
		switch m := env.Message.(type) {
		case *wire.Heartbeat:
			// Written with every other tunnel's by heartbeatLoop, which also closes this
			// one should its claim turn out lost. A beat without capacity (1.2) is
			// liveness only: the agent's stored capacity stays.
			c.g.beats.record(c, m.Capacity)
		case *wire.StatusReport:
			if errors.Is(c.handleStatus(mctx, m), ErrNotOwner) {
				c.close(closeSuperseded)
				return
			}
		case *wire.Ack:
			c.handleAck(mctx, m)
		case *wire.Error:
			c.log.Warn("agent reported an error", "code", m.Code, "message", m.Message, "permanent", m.Permanent)
		case *wire.Goodbye:
			c.log.Info("agent said goodbye", "reason", m.Reason, "message", m.Message)
			return
		default:
			c.fail(c.ctrl, &wire.ProtocolError{Kind: wire.KindUnexpectedType, Type: m.Type(), Detail: "not expected from an agent after hello"}, closeProtocol)
			return
		}
	}
}

// handleStatus stores a status report. Statuses of sessions that are not this agent's in
// this tenant are refused and logged: a certificate speaks only for its own work.
func (c *agentConn) handleStatus(ctx context.Context, m *wire.StatusReport) error {
	ctx, span := c.g.tracer.Start(ctx, "agent.status", trace.WithAttributes(
		attribute.String("streamspace.agent_id", string(c.id.Agent)), attribute.Int("streamspace.sessions", len(m.Sessions)),
		attribute.Bool("streamspace.full", m.Full)))
	defer span.End()
	refused, err := c.g.store.ReportStatus(c.sys(ctx), c.id.Agent, c.owner, m.Sessions)
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "storing status")
		if !errors.Is(err, ErrNotOwner) {
			c.log.Warn("storing status", "err", err)
		}
		return err
	}
	if len(refused) > 0 {
		c.g.metrics.refused.Add(float64(len(refused)))
		span.SetAttributes(attribute.Int("streamspace.refused", len(refused)))
		c.log.Warn("refused status for sessions not assigned to this agent in its tenant", "sessions", refused)
	}
	return nil
}

// handleAck records an acknowledgement from the desired-state or the control stream.
func (c *agentConn) handleAck(ctx context.Context, a *wire.Ack) {
	ctx, span := c.g.tracer.Start(ctx, "agent.ack", trace.WithAttributes(
		attribute.String("streamspace.agent_id", string(c.id.Agent)), attribute.String("streamspace.session_id", string(a.SessionID)),
		attribute.Int64("streamspace.generation", a.Generation)))
	defer span.End()
	if a.Error != nil {
		span.SetAttributes(attribute.String("streamspace.ack_error", string(a.Error.Code)), attribute.Bool("streamspace.permanent", a.Error.Permanent))
	}
	// The flight is settled as soon as the ack arrives, not when it is stored: the retry
	// covers pushes and acks lost on the way, not a slow database write. Should storing
	// fail, the flight is due again.
	done := a.Error == nil || a.Error.Permanent
	var settled *flight
	if done {
		c.mu.Lock()
		if f := c.inflight[a.SessionID]; f != nil && !f.acked && a.Generation >= f.gen {
			f.acked, settled = true, f
		}
		c.mu.Unlock()
	}
	if err := c.g.store.Ack(c.sys(ctx), c.id.Agent, a.SessionID, a.Generation, a.Error); err != nil {
		span.RecordError(err)
		if apperr.IsCode(err, apperr.NotFound) {
			c.g.metrics.acks.WithLabelValues("refused").Inc()
			c.log.Warn("refused ack for a session not assigned to this agent", "session_id", a.SessionID)
		} else {
			c.log.Warn("recording ack", "err", err)
		}
		if settled != nil {
			c.mu.Lock()
			settled.acked = false
			c.mu.Unlock()
			c.poke()
		}
		return
	}
	switch {
	case a.Error == nil:
		c.g.metrics.acks.WithLabelValues("applied").Inc()
	case a.Error.Permanent:
		c.g.metrics.acks.WithLabelValues("permanent").Inc()
	default:
		c.g.metrics.acks.WithLabelValues("retryable").Inc()
	}
	if done {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if f := c.inflight[a.SessionID]; f != nil {
		f.nextAt = time.Now().Add(max(c.g.backoff(f.attempts), a.Error.RetryAfter))
	}
}

// acceptStreams serves streams the agent opens after the control stream: certificate
// renewals. Anything else is a protocol error on that stream.
func (c *agentConn) acceptStreams(ctx context.Context) {
	for {
		st, err := c.qc.AcceptStream(ctx)
		if err != nil {
			return
		}
		go c.serveAgentStream(ctx, st)
	}
}

func (c *agentConn) serveAgentStream(ctx context.Context, st *quic.Stream) {
	defer st.Close()
	_ = st.SetDeadline(time.Now().Add(helloTimeout))
	r := wire.NewReader(st, 64<<10)
	pre, err := r.ReadPreamble()
	if err != nil || pre.Stream != wire.StreamCert {
		c.log.Info("refused an agent-opened stream", "stream", pre.Stream, "err", err)
		st.CancelRead(scode(wire.CloseProtocol))
		st.CancelWrite(scode(wire.CloseProtocol))
		return
	}
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamCert); err != nil {
		return
	}
	env, err := r.ReadEnvelope()
	if err != nil {
		_ = w.Write(wire.ErrorOf(err))
		return
	}
	req, ok := env.Message.(*wire.CertRenewRequest)
	if !ok {
		_ = w.Write(wire.ErrorOf(&wire.ProtocolError{Kind: wire.KindUnexpectedType, Type: env.Message.Type()}))
		return
	}
	mctx := wireotel.Extract(ctx, env)
	resp, err := c.g.renew(c.sys(mctx), c.id, req.CSRPEM)
	if err != nil {
		_ = wireotel.Write(mctx, w, wire.ErrorOf(err))
		return
	}
	_ = wireotel.Write(mctx, w, &wire.CertRenewResponse{CertificatePEM: resp})
}

// pushFirst delivers the full set once or, when the agent's applied set is already
// current, only its unacknowledged part. After it, runPushes pushes pending work whenever
// poked (NOTIFY, the replica's sweep) and when a retry falls due. An idle tunnel has no
// timer: the sweep wakes it if a notification was lost.
func (c *agentConn) pushFirst(ctx context.Context, set []Assignment, current bool) {
	if current {
		c.pushUnacked(ctx, set)
	} else {
		c.pushFull(ctx, set)
	}
}

// runPushes runs first (if any) and then pushPending once, and again for as long as the
// tunnel was poked meanwhile; then it arms the retry timer if anything awaits an ack, and
// ends.
func (c *agentConn) runPushes(first func()) {
	defer c.pushes.Done()
	ctx := c.qc.Context()
	if first != nil {
		first()
	} else {
		c.pushPending(ctx)
	}
	for {
		c.mu.Lock()
		if !c.again || c.stopped || ctx.Err() != nil {
			c.pushing, c.again = false, false
			c.armRetry()
			c.mu.Unlock()
			return
		}
		c.again = false
		c.mu.Unlock()
		c.pushPending(ctx)
	}
}

// armRetry sets the retry timer to the earliest unacknowledged push, or stops it when
// nothing awaits an ack. c.mu is held.
func (c *agentConn) armRetry() {
	wait, ok := c.nextRetry()
	switch {
	case !ok || c.stopped:
		if c.retry != nil {
			c.retry.Stop()
		}
	case c.retry == nil:
		c.retry = time.AfterFunc(wait, c.poke)
	default:
		c.retry.Reset(wait)
	}
}

// nextRetry is the time until the earliest retry; false when nothing awaits an ack. c.mu
// is held.
func (c *agentConn) nextRetry() (time.Duration, bool) {
	wait, waiting := time.Duration(1<<63-1), false
	now := time.Now()
	for _, f := range c.inflight {
		if !f.acked {
			wait, waiting = min(wait, f.nextAt.Sub(now)), true
		}
	}
	return max(wait, 10*time.Millisecond), waiting
}

// pushFull sends the agent's whole desired set, which it reconciles against what it runs.
func (c *agentConn) pushFull(ctx context.Context, set []Assignment) {
	now := time.Now()
	c.mu.Lock()
	for _, a := range set {
		if a.Pending() {
			c.inflight[a.SessionID] = &flight{gen: a.Generation, attempts: 1, nextAt: now.Add(c.g.backoff(1))}
		}
	}
	c.mu.Unlock()
	c.push(ctx, true, set)
}

// pushUnacked follows a skipped full push: the agent has applied every assignment of
// set at its generation, but acknowledgements may have been lost with the previous
// connection. Those are re-sent as one partial push, which the agent acknowledges
// without touching its backend.
func (c *agentConn) pushUnacked(ctx context.Context, set []Assignment) {
	var send []Assignment
	now := time.Now()
	c.mu.Lock()
	for _, a := range set {
		if a.Pending() {
			c.inflight[a.SessionID] = &flight{gen: a.Generation, attempts: 1, nextAt: now.Add(c.g.backoff(1))}
			send = append(send, a)
		}
	}
	c.mu.Unlock()
	if len(send) > 0 {
		c.push(ctx, false, send)
	}
}

// pushPending re-reads the agent's unacknowledged work and pushes what is new or due.
func (c *agentConn) pushPending(ctx context.Context) {
	pending, err := c.g.store.Pending(c.sys(ctx), c.id.Agent)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("reading pending work", "err", err)
		}
		return
	}
	now := time.Now()
	var send []Assignment
	c.mu.Lock()
	live := make(map[SessionID]bool, len(pending))
	for _, a := range pending {
		live[a.SessionID] = true
		f := c.inflight[a.SessionID]
		if f != nil && f.gen == a.Generation && (f.acked || now.Before(f.nextAt)) {
			continue
		}
		if f == nil || f.gen != a.Generation {
			f = &flight{gen: a.Generation}
			c.inflight[a.SessionID] = f
		}
		f.attempts++
		f.nextAt = now.Add(c.g.backoff(f.attempts))
		send = append(send, a)
	}
	for s := range c.inflight {
		if !live[s] { // acknowledged through another connection, or deleted
			delete(c.inflight, s)
		}
	}
	c.mu.Unlock()
	if len(send) > 0 {
		c.push(ctx, false, send)
	}
}

var traceContext propagation.TraceContext

// push opens a desired-state stream, writes the set (in parts when full and large),
// closes its side, and reads the acks on a goroutine. It is the "agent.deliver" span: a
// single assignment's delivery continues the trace of the write that made it; a batch
// links to each.
func (c *agentConn) push(ctx context.Context, full bool, set []Assignment) {
	parent := ctx
	var links []trace.Link
	if !full && len(set) == 1 && set[0].TraceParent != "" {
		parent = traceContext.Extract(ctx, propagation.MapCarrier{"traceparent": set[0].TraceParent})
	} else {
		for _, a := range set {
			if a.TraceParent == "" {
				continue
			}
			sc := trace.SpanContextFromContext(traceContext.Extract(context.Background(), propagation.MapCarrier{"traceparent": a.TraceParent}))
			if sc.IsValid() {
				links = append(links, trace.Link{SpanContext: sc})
			}
		}
	}
	pctx, span := c.g.tracer.Start(parent, "agent.deliver", trace.WithSpanKind(trace.SpanKindProducer), trace.WithLinks(links...),
		trace.WithAttributes(attribute.String("streamspace.agent_id", string(c.id.Agent)), attribute.Bool("streamspace.full", full),
			attribute.Int("streamspace.assignments", len(set))))
	defer span.End()
	err := c.pushStream(pctx, full, set)
	kind, result := map[bool]string{true: "full", false: "partial"}[full], "ok"
	if err != nil {
		result = "error"
	}
	c.g.metrics.pushes.WithLabelValues(kind, result).Inc()
	if err != nil && ctx.Err() == nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, "delivery failed")
		c.log.Warn("pushing desired state", "full", full, "count", len(set), "err", err)
	}
}

func (c *agentConn) pushStream(ctx context.Context, full bool, set []Assignment) error {
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	st, err := c.qc.OpenStreamSync(octx)
	cancel()
	if err != nil {
		return fmt.Errorf("opening a desired-state stream: %w", err)
	}
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
		st.CancelWrite(scode(wire.CloseNormal))
		return err
	}
	ws := toWire(c.id, set)
	var msgs []*wire.DesiredState
	if full {
		sum := wire.Checksum(ws)
		start, size := 0, 0
		for i, a := range ws {
			size += len(a.Spec) + 256
			if size > maxPart && i > start {
				msgs = append(msgs, &wire.DesiredState{Full: true, More: true, Assignments: ws[start:i]})
				start, size = i, len(a.Spec)+256
			}
		}
		msgs = append(msgs, &wire.DesiredState{Full: true, Checksum: sum, Assignments: ws[start:]})
	} else {
		msgs = []*wire.DesiredState{{Assignments: ws}}
	}
	for _, m := range msgs {
		if m.Assignments == nil {
			m.Assignments = []wire.Assignment{}
		}
		if err := wireotel.Write(ctx, w, m); err != nil {
			st.CancelWrite(scode(wire.CloseNormal))
			return err
		}
	}
	// One push per stream: closing our side tells the agent the push is complete.
	if err := st.Close(); err != nil {
		return err
	}
	go c.readAcks(context.WithoutCancel(ctx), st)
	return nil
}

// readAcks reads the agent's preamble and acks on a desired-state stream until the agent
// closes it or ackWait passes; the retry timers cover whatever does not arrive.
func (c *agentConn) readAcks(ctx context.Context, st *quic.Stream) {
	defer st.CancelRead(scode(wire.CloseNormal))
	_ = st.SetReadDeadline(time.Now().Add(ackWait))
	r := wire.NewReader(st, 0)
	pre, err := r.ReadPreamble()
	if err != nil || pre.Stream != wire.StreamDesiredState {
		return
	}
	for {
		env, err := r.ReadEnvelope()
		if err != nil {
			return
		}
		mctx := wireotel.Extract(trace.ContextWithSpanContext(c.qc.Context(), trace.SpanContextFromContext(ctx)), env)
		switch m := env.Message.(type) {
		case *wire.Ack:
			c.handleAck(mctx, m)
		case *wire.Error:
			c.log.Warn("agent refused desired state", "code", m.Code, "message", m.Message, "permanent", m.Permanent)
		}
	}
}
