package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/wire"
)

// StreamPath is the browser's way into a session: a WebSocket whose binary messages carry
// the session's stream bytes (VNC) both ways. It lives under its own prefix, beside the
// admin API, so an edge routes /api/v1/streams/ to the gateway as it routes
// /api/v1/agents/; /api/v1/sessions/ belongs to the sessions service. The caller must
// be allowed to see the session (its owner, or an admin or owner of its tenant) and hold
// the sessions:write scope, because a viewer can type into the session. The optional
// query parameter port names another port of the session (by name or number) than its
// stream endpoint.
const StreamPath = "/api/v1/streams/{session}"

// Subprotocols of the stream WebSocket. A browser cannot set an Authorization header on
// a WebSocket, so it offers its access token as one more subprotocol,
// BearerSubprotocolPrefix followed by the JWT (all of whose characters are legal in a
// subprotocol name), beside StreamSubprotocol, which the gateway selects; the token is
// never echoed back. Kubernetes' API server uses the same trick for its exec streams.
//
// Why not a query parameter or a single-use ticket: tokens in URLs end up in access
// logs, browser history and Referer headers; a header does not. The access token is
// already short-lived (minutes), so it needs no second, shorter credential, and a ticket
// would need a round trip and shared state between gateway replicas. API clients simply
// send "Authorization: Bearer", which wins when both are present.
const (
	StreamSubprotocol       = "streamspace.stream.v1"
	BearerSubprotocolPrefix = "streamspace.bearer."
)

// Stream timing and sizes.
const (
	// streamAckTimeout bounds the wait for the agent's answer; the agent itself gives up
	// dialing the session after 10 s and says so.
	streamAckTimeout = 15 * time.Second
	// streamBuffer is each direction's copy buffer: the only bytes a stream holds besides
	// QUIC's flow-control window and the sockets' buffers, so a slow reader pushes back
	// on its writer instead of growing memory.
	streamBuffer = 32 << 10
	// notHereRetry is the Retry-After of a stream that cannot be served by this replica
	// now (the agent is offline, or the replica holding its tunnel cannot be reached).
	notHereRetry = 2 * time.Second
)

// StreamTarget is what the stream endpoint needs to know about a session: where it runs
// and on which port its stream is.
type StreamTarget struct {
	// Agent is the agent the session is placed on; empty when it is not placed.
	Agent AgentID
	// Phase is the session's phase as the sessions service shows it ("Running"…).
	Phase string
	// Port is the in-cluster port of the session's stream endpoint, 0 when unknown.
	Port int
}

// Running reports whether the session can carry a stream.
func (t StreamTarget) Running() bool { return t.Phase == "Running" }

// SessionFinder answers, for the caller in ctx, where a session runs. It is the sessions
// service: in-process in the all-in-one binary, over HTTP with the caller's own token
// otherwise (NewHTTPSessions), so the rule of who may see a session lives in one place.
type SessionFinder interface {
	// StreamTarget returns the session as the caller in ctx may see it. NotFound for a
	// missing session and, exactly alike, for another user's (a member's view) or another
	// tenant's.
	StreamTarget(ctx context.Context, id SessionID) (StreamTarget, error)
}

// SessionFinderFunc adapts a function to SessionFinder.
type SessionFinderFunc func(ctx context.Context, id SessionID) (StreamTarget, error)

// StreamTarget implements SessionFinder.
func (f SessionFinderFunc) StreamTarget(ctx context.Context, id SessionID) (StreamTarget, error) {
	return f(ctx, id)
}

// streams serves StreamPath: it authenticates and authorises the caller, opens a session
// stream to the agent holding the session, and pipes bytes between the WebSocket and the
// QUIC stream, counting them for the traffic meter.
type streams struct {
	gw       *Gateway
	sessions SessionFinder
	meter    *meter
	verifier *auth.Verifier
	log      *slog.Logger
	m        streamMetrics
	// proxy forwards streams to the replica holding the agent's tunnel (forward.go).
	proxy *httputil.ReverseProxy
}

// streamMetrics are the stream endpoint's series: totals only, never per session, so
// their cardinality stays fixed.
type streamMetrics struct {
	streams *prometheus.CounterVec
	open    prometheus.Gauge
	opened  prometheus.Counter
	// forwarding counts the streams this replica passes to the owner replica right now.
	forwarding prometheus.Gauge
	bytes      *prometheus.CounterVec
}

func newStreamMetrics(reg prometheus.Registerer) streamMetrics {
	return streamMetrics{
		streams: reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agent_gateway_session_streams_total",
			Help: "Session stream requests, by result: ok, upgrade_failed, forwarded (to the replica holding the tunnel, which answered), forward_failed, or the error code that refused them."}, []string{"result"})),
		open: reuse(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "agent_gateway_session_streams",
			Help: "Session streams open on this replica."})),
		forwarding: reuse(reg, prometheus.NewGauge(prometheus.GaugeOpts{Name: "agent_gateway_session_streams_forwarding",
			Help: "Session streams this replica passes to the replica holding the agent's tunnel."})),
		opened: reuse(reg, prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_session_streams_opened_total",
			Help: "Session streams opened on agents' tunnels, whatever the agent answered."})),
		bytes: reuse(reg, prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agent_gateway_session_stream_bytes_total",
			Help: "Session stream bytes recorded, by direction: in (from browsers) and out (to browsers)."}, []string{"direction"})),
	}
}

// ServeHTTP answers one stream request on the public listener. Every refusal happens
// before the WebSocket upgrade, as a problem+json response: a browser sees a failed
// handshake, an API client the typed error. A HopHeader here is anyone's and ignored.
func (s *streams) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.authenticate(w, r) }

// forwardedByKey carries, on a request that arrived on the peer listener, the id of the
// replica that forwarded it, as its certificate names it.
type forwardedByKey struct{}

// serveForwarded answers a stream request another replica forwarded here, on the peer
// listener, whose handshake proved the client a replica. It is authorized like any
// other, with the caller's credential it carries, and never forwarded again.
func (s *streams) serveForwarded(w http.ResponseWriter, r *http.Request) {
	var by string
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		by, _ = ReplicaOf(r.TLS.PeerCertificates[0])
	}
	if by == "" {
		// The listener lets no other client through; should a change break that, fail closed.
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.NotFound, "no route for %s %s", r.Method, r.URL.Path))
		return
	}
	s.authenticate(w, r.WithContext(context.WithValue(r.Context(), forwardedByKey{}, by)))
}

// authenticate moves a bearer subprotocol into the Authorization header and serves the
// request as the token's principal.
func (s *streams) authenticate(w http.ResponseWriter, r *http.Request) {
	if r.Header.Get("Authorization") == "" {
		if tok := bearerSubprotocol(r.Header); tok != "" {
			r = r.Clone(r.Context())
			r.Header.Set("Authorization", "Bearer "+tok)
		}
	}
	auth.Middleware(s.verifier)(http.HandlerFunc(s.serve)).ServeHTTP(w, r)
}

// bearerSubprotocol returns the token offered as a subprotocol, "" without one.
func bearerSubprotocol(h http.Header) string {
	for _, v := range h.Values("Sec-WebSocket-Protocol") {
		for p := range strings.SplitSeq(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(p), BearerSubprotocolPrefix); ok {
				return tok
			}
		}
	}
	return ""
}

func (s *streams) serve(w http.ResponseWriter, r *http.Request) {
	ctx := withToken(r.Context(), r.Header.Get("Authorization"))
	id := SessionID(r.PathValue("session"))
	forwarded := r.Context().Value(forwardedByKey{}) != nil
	st, c, o, err := s.open(ctx, id, r.URL.Query().Get("port"), forwarded)
	if err == nil && o != nil {
		s.forward(w, r, *o)
		return
	}
	if err != nil {
		s.m.streams.WithLabelValues(string(apperr.CodeOf(err))).Inc()
		if apperr.CodeOf(err) == apperr.Internal {
			s.log.ErrorContext(ctx, "opening a session stream", "session_id", id, "err", err)
		}
		apperr.WriteHTTP(w, r.URL.Path, err)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		Subprotocols: []string{StreamSubprotocol, "binary"},
		// The credential is never ambient (no cookie): a page from another origin cannot
		// obtain it, so checking Origin would add nothing but break portals served from
		// another host than the gateway.
		InsecureSkipVerify: true,
		CompressionMode:    websocket.CompressionDisabled,
	})
	if err != nil {
		st.CancelRead(scode(wire.CloseNormal))
		st.CancelWrite(scode(wire.CloseNormal))
		s.m.streams.WithLabelValues("upgrade_failed").Inc()
		return
	}
	s.m.streams.WithLabelValues("ok").Inc()
	s.m.open.Inc()
	defer s.m.open.Dec()
	p, _ := auth.FromContext(ctx)
	rec := s.meter.open(p.Tenant, id)
	defer s.meter.release(rec)
	s.pipe(ctx, ws, st, c, rec)
}

// open checks everything a stream needs and opens it on the agent's tunnel, waiting for
// the agent to reach the session. port, if not empty, names the session's port to reach
// (a name or a number); the default is the session's stream endpoint. When another live
// replica holds the agent's tunnel, open returns no stream but that replica, unless the
// request was forwarded already (hopped): a forward is never forwarded again.
func (s *streams) open(ctx context.Context, id SessionID, port string, hopped bool) (*quic.Stream, *agentConn, *owner, error) {
	p, err := auth.RequireScope(ctx, auth.ScopeSessionsWrite)
	if err != nil {
		return nil, nil, nil, err
	}
	if p.Tenant == "" {
		// An operator has no tenant, so no session is theirs to see.
		return nil, nil, nil, apperr.New(apperr.NotFound, "session not found")
	}
	if s.sessions == nil {
		return nil, nil, nil, apperr.New(apperr.Unavailable, "this gateway is not connected to the sessions service")
	}
	t, err := s.sessions.StreamTarget(ctx, id)
	if err != nil {
		return nil, nil, nil, err
	}
	switch {
	case t.Agent == "":
		return nil, nil, nil, apperr.New(apperr.Conflict, "the session is %s and not placed on an agent", t.Phase)
	case !t.Running():
		return nil, nil, nil, apperr.New(apperr.Conflict, "the session is %s, not Running", t.Phase)
	}
	hdr := &wire.SessionStreamHeader{SessionID: id, Port: t.Port}
	if port != "" {
		if n, err := strconv.Atoi(port); err == nil {
			hdr.Port = n
		} else {
			hdr.PortName, hdr.Port = port, 0
		}
		if hdr.Port < 0 || hdr.Port > 65535 || len(port) > 63 {
			return nil, nil, nil, apperr.Validation("invalid port", apperr.Field("port", "a port name or a number from 1 to 65535"))
		}
	}
	if hdr.Port == 0 && hdr.PortName == "" {
		return nil, nil, nil, apperr.New(apperr.Conflict, "the session has no stream endpoint yet")
	}
	c := s.gw.hub.get(t.Agent)
	if c == nil || c.id.Tenant != p.Tenant {
		owner, err := s.owner(ctx, t.Agent, hopped)
		return nil, nil, owner, err
	}
	s.m.opened.Inc()
	st, err := c.openSessionStream(ctx, hdr)
	if err != nil {
		return nil, nil, nil, err
	}
	return st, c, nil, nil
}

// owner returns where to forward a stream for agent id, whose tunnel this replica does
// not hold: the replica that does and its advertised URL, if that replica's row is fresh.
// Every other case is a retryable unavailable, as is a request that was forwarded here
// already.
func (s *streams) owner(ctx context.Context, id AgentID, hopped bool) (*owner, error) {
	notConnected := &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the session's agent is not connected"}
	if hopped {
		// The replica that forwarded this request saw this one as the owner; the tunnel
		// has moved or closed since. Its client retries from the start.
		notConnected.Message = "the session's agent is no longer connected to the gateway replica it was forwarded to"
		return nil, notConnected
	}
	o, err := s.gw.store.Ownership(ctx, id)
	switch {
	case err != nil:
		if !apperr.IsCode(err, apperr.NotFound) {
			s.log.WarnContext(ctx, "reading the owner row of a session's agent", "agent_id", id, "err", err)
		}
		notConnected.Cause = err
		return nil, notConnected
	case o.Gateway == "" || o.Gateway == s.gw.id:
		// No owner, or this replica's own row, left behind by a tunnel that just closed.
		return nil, notConnected
	case !o.Live || o.Age > s.gw.ownerStaleAfter():
		// The owning replica stopped cleanly (no row), or stopped stamping its row: it is
		// dead or cut off from the database, and its tunnels with it.
		return nil, notConnected
	case o.URL == "":
		return nil, &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry,
			Message: "the session's agent is connected to another gateway replica, which advertises no address to forward to; retry, or connect through that replica"}
	}
	u, err := url.Parse(o.URL)
	if err == nil && u.Scheme != "https" {
		// A row written before replicas forwarded over mutual TLS: its address is an HTTP
		// API, to which a credential never goes.
		err = fmt.Errorf("advertised URL %q is not https", o.URL)
	}
	if err != nil {
		return nil, &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Cause: err,
			Message: "the session's agent is connected to another gateway replica, which advertises no valid address"}
	}
	return &owner{ID: o.Gateway, URL: u}, nil
}

// openSessionStream opens a session stream on the tunnel, sends hdr and waits for the
// agent's answer. The agent's refusal becomes an apperr error the browser can act on.
func (c *agentConn) openSessionStream(ctx context.Context, hdr *wire.SessionStreamHeader) (*quic.Stream, error) {
	octx, cancel := context.WithTimeout(ctx, openTimeout)
	st, err := c.qc.OpenStreamSync(octx)
	cancel()
	if err != nil {
		return nil, &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the agent's tunnel cannot take another stream now", Cause: err}
	}
	fail := func(err error) (*quic.Stream, error) {
		st.CancelRead(scode(wire.CloseNormal))
		st.CancelWrite(scode(wire.CloseNormal))
		return nil, err
	}
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamSession); err != nil {
		return fail(&apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the agent's tunnel failed", Cause: err})
	}
	if err := w.Write(hdr); err != nil {
		return fail(&apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the agent's tunnel failed", Cause: err})
	}
	_ = st.SetReadDeadline(time.Now().Add(streamAckTimeout))
	// The reader never reads ahead, so whatever follows the answer stays in st for the
	// pipe. The limit is small: the only frame expected is a short Ack or Error.
	r := wire.NewReader(st, 64<<10)
	pre, err := r.ReadPreamble()
	if err == nil && pre.Stream != wire.StreamSession {
		err = &wire.ProtocolError{Kind: wire.KindUnexpectedType, Detail: fmt.Sprintf("answered on a %s stream", pre.Stream)}
	}
	var msg wire.Message
	if err == nil {
		msg, err = r.Read()
	}
	if err != nil {
		c.log.Warn("agent answered a session stream with garbage", "session_id", hdr.SessionID, "err", err)
		return fail(&apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the agent did not answer the stream properly", Cause: err})
	}
	_ = st.SetReadDeadline(time.Time{})
	var refusal *wire.Error
	switch m := msg.(type) {
	case *wire.Ack:
		refusal = m.Error
	case *wire.Error:
		refusal = m
	default:
		return fail(&apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Message: "the agent did not answer the stream properly",
			Cause: fmt.Errorf("unexpected %s", msg.Type())})
	}
	if refusal != nil {
		c.log.Info("agent refused a session stream", "session_id", hdr.SessionID, "code", refusal.Code, "message", refusal.Message)
		return fail(refusedStream(refusal))
	}
	return st, nil
}

// refusedStream maps the agent's refusal to what the browser gets. The agent's message
// stays in the gateway's log: it describes the customer's cluster (addresses, pods).
func refusedStream(e *wire.Error) error {
	switch e.Code {
	case wire.CodeNotFound:
		return apperr.Wrap(e, apperr.NotFound, "the agent has no such session or port")
	case wire.CodeInvalid:
		return apperr.Wrap(e, apperr.Invalid, "the agent refused the stream request as invalid")
	}
	out := apperr.Wrap(e, apperr.Unavailable, "the agent cannot reach the session (%s)", e.Code)
	if !e.Permanent {
		out.RetryAfter = max(e.RetryAfter, time.Second)
	}
	return out
}

// pipe copies bytes both ways until either side ends, then ends the other. A side that
// closes cleanly has its last bytes delivered before the other is closed.
func (s *streams) pipe(ctx context.Context, ws *websocket.Conn, st *quic.Stream, c *agentConn, rec *traffic) {
	// The stream lives no longer than the tunnel or the gateway.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.qc.Context(), cancel)
	defer stop()
	stopGW := context.AfterFunc(s.gw.ctx, cancel)
	defer stopGW()

	nc := websocket.NetConn(ctx, ws, websocket.MessageBinary)
	var once sync.Once
	teardown := func() {
		once.Do(func() {
			st.CancelRead(scode(wire.CloseNormal))
			_ = st.Close()
			_ = ws.Close(websocket.StatusNormalClosure, "")
			cancel()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// Browser to session.
		_, err := io.CopyBuffer(counter{w: st, n: &rec.in}, nc, make([]byte, streamBuffer))
		if err != nil && !isClosed(err) {
			st.CancelWrite(scode(wire.CloseNormal))
		}
		teardown()
	})
	// Session to browser.
	_, _ = io.CopyBuffer(counter{w: nc, n: &rec.out}, st, make([]byte, streamBuffer))
	teardown()
	wg.Wait()
	_ = nc.Close()
}

// isClosed reports whether err is the ordinary end of a WebSocket.
func isClosed(err error) bool {
	s := websocket.CloseStatus(err)
	return errors.Is(err, io.EOF) || s == websocket.StatusNormalClosure || s == websocket.StatusGoingAway
}
