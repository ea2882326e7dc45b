// Package tunnel is the agent's side of the outbound-only QUIC tunnel (DESIGN.md §4,
// libs/wire/PROTOCOL.md): it dials the gateway with the agent's client certificate,
// opens the control stream (Hello, then heartbeats and status reports), serves the
// streams the gateway opens (desired state, session traffic), renews the certificate
// before it expires, and drains on shutdown. Supervisor keeps it connected.
package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backoff"
	"streamspace.dev/agent/enroll"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/libs/wire"
	"streamspace.dev/libs/wire/wireotel"
)

// Defaults. The keep-alive must stay well under the 30 s UDP conntrack timeout of the
// customer's stateful firewall (STACK.md): without traffic the entry expires and the
// gateway's next server-opened stream is dropped as new inbound traffic. It is a little
// longer than the heartbeat interval on purpose: quic-go pings only after a keep-alive
// period without receiving a packet, and the gateway's acknowledgement of every heartbeat
// resets that clock, so an agent whose heartbeats flow sends no pings at all (with both
// sides pinging every 5 s, 10,000 idle agents cost the gateway 38% of a core; see
// BenchmarkScaleIdleAgents). The pings only keep the state alive when heartbeats stall. The idle timeout
// is 30 s because quic-go caps the keep-alive period at half of it.
const (
	DefaultKeepAlive        = 12 * time.Second
	DefaultIdleTimeout      = 30 * time.Second
	DefaultHeartbeat        = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultHelloTimeout     = 10 * time.Second
	DefaultDrainTimeout     = 10 * time.Second
)

// qcode converts a close code of the protocol (libs/wire defines them once, for the
// agent and the gateway) to quic-go's type. The agent closes with CloseNormal after its
// Goodbye and CloseProtocol after an error; the gateway reads the control stream first.
func qcode(c wire.CloseCode) quic.ApplicationErrorCode { return quic.ApplicationErrorCode(c) }

// scode is qcode for stream resets.
func scode(c wire.CloseCode) quic.StreamErrorCode { return quic.StreamErrorCode(c) }

// Config is what a Tunnel needs.
type Config struct {
	// Addr is the gateway's QUIC address, host:port.
	Addr string
	// ServerName is the name expected in the gateway's certificate; Addr's host when empty.
	ServerName string
	// RootCAs verify the gateway's certificate; the system pool when nil.
	RootCAs *x509.CertPool
	// Credential presents the agent's certificate and renews it.
	Credential *enroll.Holder
	// Reconciler applies desired state and supplies status.
	Reconciler *reconcile.Reconciler
	// Backend supplies capacity and facts, and optionally session streams
	// (agent.SessionDialer).
	Backend agent.Backend
	// AgentVersion is the agent's release, for Hello.
	AgentVersion string
	// Tags are the operator's tags for this agent ("key=value" or plain), sent in Hello.
	Tags []string

	// KeepAlive is the QUIC keep-alive period; IdleTimeout the QUIC idle timeout.
	KeepAlive, IdleTimeout time.Duration
	// Heartbeat is used when HelloAck names no interval.
	Heartbeat time.Duration
	// HandshakeTimeout bounds the QUIC+TLS handshake; HelloTimeout the wait for HelloAck.
	HandshakeTimeout, HelloTimeout time.Duration
	// DrainTimeout bounds how long shutdown waits for in-flight applies.
	DrainTimeout time.Duration
	// Backoff is the reconnect policy; StableAfter and RefusalGrace see Supervisor.
	Backoff                   backoff.Policy
	StableAfter, RefusalGrace time.Duration
	// Rand draws the backoff's jitter; math/rand when nil.
	Rand backoff.Rand
	// Log is the logger; slog.Default() when nil.
	Log *slog.Logger
	// Connected, when set, is called with true once the gateway has accepted the agent
	// (HelloAck) and with false when that connection ends: the agent's /readyz follows it.
	Connected func(up bool)
}

// Tunnel connects the agent to the gateway.
type Tunnel struct {
	cfg    Config
	log    *slog.Logger
	tracer trace.Tracer
}

// New returns a Tunnel for cfg, filling in defaults.
func New(cfg Config) *Tunnel {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.KeepAlive, DefaultKeepAlive)
	def(&cfg.IdleTimeout, DefaultIdleTimeout)
	def(&cfg.Heartbeat, DefaultHeartbeat)
	def(&cfg.HandshakeTimeout, DefaultHandshakeTimeout)
	def(&cfg.HelloTimeout, DefaultHelloTimeout)
	def(&cfg.DrainTimeout, DefaultDrainTimeout)
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Tunnel{cfg: cfg, log: cfg.Log, tracer: otel.Tracer("streamspace.dev/agent/tunnel")}
}

// Run keeps the tunnel up until ctx is done, then drains: it finishes in-flight applies,
// reports the last status changes, says Goodbye and closes. It returns nil after an
// orderly shutdown and a *PermanentError when the gateway refuses the agent for good.
func (t *Tunnel) Run(ctx context.Context) error {
	s := &Supervisor{
		Connect:      t.connect,
		Backoff:      backoff.New(t.cfg.Backoff, t.cfg.Rand),
		StableAfter:  t.cfg.StableAfter,
		RefusalGrace: t.cfg.RefusalGrace,
		Log:          t.log,
	}
	return s.Run(ctx)
}

func (t *Tunnel) tlsConfig() (*tls.Config, error) {
	name := t.cfg.ServerName
	if name == "" {
		host, _, err := net.SplitHostPort(t.cfg.Addr)
		if err != nil {
			return nil, fmt.Errorf("gateway address %q: %w", t.cfg.Addr, err)
		}
		name = host
	}
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		ServerName:           name,
		RootCAs:              t.cfg.RootCAs,
		NextProtos:           wire.SupportedALPNs(),
		GetClientCertificate: t.cfg.Credential.GetClientCertificate,
	}, nil
}

func (t *Tunnel) quicConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout: t.cfg.HandshakeTimeout,
		MaxIdleTimeout:       t.cfg.IdleTimeout,
		KeepAlivePeriod:      t.cfg.KeepAlive,
	}
}

// connect runs one connection; see Supervisor.Connect.
func (t *Tunnel) connect(ctx context.Context, up func()) error {
	tlsConf, err := t.tlsConfig()
	if err != nil {
		return &wire.Error{Code: wire.CodeInvalid, Message: err.Error(), Permanent: true}
	}
	ctx, span := t.tracer.Start(ctx, "tunnel.connect", trace.WithAttributes(attribute.String("gateway.addr", t.cfg.Addr)))
	defer span.End()

	dialCtx, cancel := context.WithTimeout(ctx, t.cfg.HandshakeTimeout)
	qc, err := quic.DialAddr(dialCtx, t.cfg.Addr, tlsConf, t.quicConfig())
	cancel()
	if err != nil {
		err = classify(err)
		span.SetStatus(codes.Error, err.Error())
		return fmt.Errorf("dialing %s: %w", t.cfg.Addr, err)
	}
	c := &conn{t: t, qc: qc, log: t.log.With("gateway_addr", t.cfg.Addr)}
	if report := t.cfg.Connected; report != nil {
		wasUp := false
		inner := up
		up = func() { inner(); wasUp = true; report(true) }
		defer func() {
			if wasUp {
				report(false)
			}
		}()
	}
	// In TLS 1.3 the server checks the client certificate after the client has finished
	// its handshake, so a refusal can surface on the first stream rather than in Dial.
	err = classify(c.run(ctx, up))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// classify gives transport failures the retry policy they deserve. No common ALPN means
// one side needs an upgrade: permanent. TLS alerts about our certificate become a
// RefusedError, which the supervisor turns permanent only if it persists. The gateway's
// close codes (wire.CloseCode) back up the Error message it sends first, in case the
// close overtook it: a permanent one (revoked, forbidden) stops the agent, "unavailable"
// is the gateway's own trouble and retried. Everything else is presumed transient, as
// wire.Retryable does, including close codes newer than this build.
func classify(err error) error {
	if err == nil {
		return nil
	}
	if ae, ok := errors.AsType[*quic.ApplicationError](err); ok && ae.Remote {
		code := wire.CloseCode(ae.ErrorCode)
		switch {
		case code.Permanent():
			return errors.Join(&wire.Error{Code: wire.CodeForbidden, Permanent: true,
				Message: fmt.Sprintf("the gateway closed the tunnel for good (%s: %s)", code, ae.ErrorMessage)}, err)
		case code == wire.CloseUnavailable:
			return errors.Join(&wire.Error{Code: wire.CodeUnavailable,
				Message: "the gateway cannot serve the agent right now (" + ae.ErrorMessage + ")"}, err)
		}
		return err
	}
	te, ok := errors.AsType[*quic.TransportError](err)
	if !ok || !te.Remote || te.ErrorCode < 0x100 || te.ErrorCode > 0x1ff {
		return err
	}
	switch alert := uint8(te.ErrorCode - 0x100); alert {
	case 120: // no_application_protocol
		return errors.Join(&wire.Error{Code: wire.CodeUnsupportedVersion, Permanent: true,
			Message: "the gateway speaks none of our protocol versions (" + fmt.Sprint(wire.SupportedALPNs()) + "); upgrade the agent"}, err)
	case 42, 44, 45, 48, 49, 116: // bad_certificate, certificate_revoked, certificate_expired, unknown_ca, access_denied, certificate_required
		return &RefusedError{Err: err}
	}
	return err
}

// conn is one established QUIC connection.
type conn struct {
	t   *Tunnel
	qc  *quic.Conn
	log *slog.Logger

	ctrl *wire.Writer
	// helloCapacity is the capacity Hello reported, nil when the backend could not tell
	// it: heartbeats of 1.2 report capacity only when it changed since.
	helloCapacity *wire.Capacity

	// streams tracks every stream handler, so run returns only after all have ended;
	// applies only the desired-state ones, which shutdown lets finish.
	streams sync.WaitGroup
	applies inflight
	// applyCtx outlives a shutdown request but not the drain deadline: an apply that
	// started should finish and be acknowledged, not be cut off by SIGTERM.
	applyCtx    context.Context
	cancelApply context.CancelFunc
}

func (c *conn) run(ctx context.Context, up func()) (err error) {
	c.applyCtx, c.cancelApply = context.WithCancel(context.WithoutCancel(ctx))
	defer c.cancelApply()
	closed := false
	closeWith := func(code wire.CloseCode, msg string) {
		if !closed {
			closed = true
			_ = c.qc.CloseWithError(qcode(code), msg)
		}
	}
	defer func() {
		if err != nil {
			closeWith(wire.CloseProtocol, "agent closing after an error")
		} else {
			closeWith(wire.CloseNormal, "agent shutting down")
		}
	}()

	ack, rd, err := c.hello(ctx)
	if err != nil {
		return err
	}
	up()
	c.log = c.log.With("gateway", ack.GatewayID)
	c.log.InfoContext(ctx, "tunnel up", "protocol", ack.Accepted, "heartbeat", ack.HeartbeatInterval)
	interval := ack.HeartbeatInterval
	if interval <= 0 {
		interval = c.t.cfg.Heartbeat
	}

	loopCtx, stopLoops := context.WithCancel(ctx)
	defer stopLoops()
	errc := make(chan error, 5)
	var loops sync.WaitGroup
	start := func(f func(context.Context) error) {
		loops.Go(func() { errc <- f(loopCtx) })
	}
	readerDone := make(chan struct{})
	loops.Go(func() { defer close(readerDone); errc <- c.readControl(rd) })
	start(func(ctx context.Context) error { return c.heartbeats(ctx, interval, ack.Accepted) })
	start(func(ctx context.Context) error { return c.statuses(ctx, ack.DesiredChecksum) })
	start(c.acceptStreams)
	start(c.renewals)

	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	stopLoops()
	if err == nil && ctx.Err() != nil {
		c.drain(readerDone)
		closeWith(wire.CloseNormal, "agent shutting down")
	} else {
		closeWith(wire.CloseProtocol, "agent closing after an error")
		c.cancelApply()
	}
	loops.Wait()
	c.streams.Wait()
	return err
}

// hello opens the control stream, sends Hello and waits for HelloAck. The gateway
// answers a refusal with an Error message, whose retry policy then decides.
func (c *conn) hello(ctx context.Context) (*wire.HelloAck, *wire.Reader, error) {
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("opening control stream: %w", err)
	}
	c.ctrl = wire.NewWriter(st)
	if err := c.ctrl.WritePreamble(wire.StreamControl); err != nil {
		return nil, nil, err
	}
	cred := c.t.cfg.Credential.Current()
	// AppliedChecksum lets the gateway skip the full push when nothing changed while we
	// were away; statuses then reconciles locally instead.
	hello := &wire.Hello{AgentID: cred.Agent, AgentVersion: c.t.cfg.AgentVersion, Protocol: wire.Current,
		Tags: c.t.cfg.Tags, AppliedChecksum: c.t.cfg.Reconciler.Checksum()}
	if info, err := c.t.cfg.Backend.Info(ctx); err == nil {
		hello.Capabilities, hello.Cluster = info.Capabilities, info.Cluster
	} else {
		c.log.WarnContext(ctx, "backend facts unavailable for hello", "err", err)
	}
	if capa, err := c.t.cfg.Backend.Capacity(ctx); err == nil {
		hello.Capacity, c.helloCapacity = capa, &capa
	} else {
		c.log.WarnContext(ctx, "backend capacity unavailable for hello", "err", err)
	}
	if err := wireotel.Write(ctx, c.ctrl, hello); err != nil {
		return nil, nil, err
	}
	_ = st.SetReadDeadline(time.Now().Add(c.t.cfg.HelloTimeout))
	rd := wire.NewReader(st, 0)
	if _, err := rd.ReadPreamble(); err != nil {
		return nil, nil, fmt.Errorf("waiting for hello_ack: %w", err)
	}
	for {
		msg, err := rd.Read()
		if err != nil {
			return nil, nil, fmt.Errorf("waiting for hello_ack: %w", err)
		}
		switch m := msg.(type) {
		case *wire.HelloAck:
			_ = st.SetReadDeadline(time.Time{})
			if _, err := wire.Negotiate(m.Accepted); err != nil {
				return nil, nil, err
			}
			return m, rd, nil
		case *wire.Error:
			return nil, nil, fmt.Errorf("gateway refused hello: %w", m)
		case *wire.Goodbye:
			return nil, nil, &GoodbyeError{*m}
		default:
			c.log.WarnContext(ctx, "ignoring message before hello_ack", "type", msg.Type())
		}
	}
}

// readControl reads what the gateway sends on the control stream after HelloAck: an
// Error or a Goodbye ends the connection, with that reason.
func (c *conn) readControl(rd *wire.Reader) error {
	for {
		msg, err := rd.Read()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return errors.New("gateway closed the control stream")
			}
			return fmt.Errorf("reading control stream: %w", err)
		}
		switch m := msg.(type) {
		case *wire.Error:
			return fmt.Errorf("gateway reported: %w", m)
		case *wire.Goodbye:
			return &GoodbyeError{*m}
		case *wire.Ack:
			// Nothing the agent sends on control expects an answer yet; tolerate one.
		default:
			c.log.Debug("ignoring control message", "type", msg.Type())
		}
	}
}

// heartbeats sends a heartbeat every interval. Which beats carry capacity depends on the
// accepted version (wire.CapacityReporter): under 1.2 only those whose capacity changed,
// and every wire.CapacityRefresh-th, so that the gateway decodes a few bytes for most.
func (c *conn) heartbeats(ctx context.Context, every time.Duration, accepted wire.Version) error {
	tick := time.NewTicker(every)
	defer tick.Stop()
	report := wire.NewCapacityReporter(accepted, c.helloCapacity)
	var seq uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		seq++
		var now *wire.Capacity
		if capa, err := c.t.cfg.Backend.Capacity(ctx); err == nil {
			now = &capa
		} else {
			// The beat still proves liveness; the registry keeps the last capacity it was
			// told rather than zeros.
			c.log.WarnContext(ctx, "backend capacity unavailable", "err", err)
		}
		hb := &wire.Heartbeat{Seq: seq, Capacity: report.Next(now)}
		if err := c.ctrl.Write(hb); err != nil {
			return fmt.Errorf("sending heartbeat: %w", err)
		}
	}
}

// statuses reconciles against the gateway's checksum, sends the full status report,
// then every change as it happens.
func (c *conn) statuses(ctx context.Context, desired string) error {
	r := c.t.cfg.Reconciler
	if desired != "" && desired == r.Checksum() {
		// The gateway will not push the full set, so repair locally what may have
		// changed while we were away.
		if err := r.ReconcileApplied(ctx); err != nil {
			c.log.WarnContext(ctx, "local reconcile incomplete", "err", err)
		}
	} else {
		c.log.InfoContext(ctx, "desired set differs from the applied one; awaiting the full set", "gateway", desired, "agent", r.Checksum())
	}
	full, err := r.FullStatus(ctx)
	if err != nil {
		// Without a full report the gateway keeps its last knowledge; deltas still flow.
		c.log.WarnContext(ctx, "full status unavailable", "err", err)
	} else if err := wireotel.Write(ctx, c.ctrl, &wire.StatusReport{Full: true, Sessions: orEmpty(full)}); err != nil {
		return fmt.Errorf("sending full status: %w", err)
	}
	for {
		if err := c.flushStatus(ctx); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.Changed():
		}
	}
}

func (c *conn) flushStatus(ctx context.Context) error {
	changes := c.t.cfg.Reconciler.TakeChanges()
	if len(changes) == 0 {
		return nil
	}
	if err := wireotel.Write(ctx, c.ctrl, &wire.StatusReport{Sessions: changes}); err != nil {
		// Lost with this connection; the full report after the reconnect covers them.
		return fmt.Errorf("sending status: %w", err)
	}
	return nil
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// drain is shutdown after SIGTERM: the accept loop has stopped, so no new work arrives.
// 1. Let in-flight applies finish and be acknowledged, up to the drain deadline.
// 2. Report the last status changes.
// 3. Say Goodbye, so the gateway tells a shutdown from a failure.
// 4. Give the gateway a moment to read it and close first, then the caller closes.
func (c *conn) drain(readerDone <-chan struct{}) {
	deadline := time.NewTimer(c.t.cfg.DrainTimeout)
	defer deadline.Stop()
	c.log.Info("draining: waiting for in-flight applies", "timeout", c.t.cfg.DrainTimeout)
	select {
	case <-c.applies.idle():
	case <-deadline.C:
		c.log.Warn("drain deadline passed; cancelling applies")
		c.cancelApply()
	}
	ctx := context.Background()
	if err := c.flushStatus(ctx); err != nil {
		c.log.Warn("final status report failed", "err", err)
	}
	if err := c.ctrl.Write(&wire.Goodbye{Reason: wire.GoodbyeShutdown, Message: "agent shutting down"}); err != nil {
		c.log.Warn("goodbye failed", "err", err)
		return
	}
	linger := time.NewTimer(time.Second)
	defer linger.Stop()
	select {
	case <-c.qc.Context().Done():
	case <-readerDone:
	case <-linger.C:
	}
	c.log.Info("drained; closing tunnel")
}

// acceptStreams serves the streams the gateway opens until ctx is done.
func (c *conn) acceptStreams(ctx context.Context) error {
	for {
		st, err := c.qc.AcceptStream(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("accepting streams: %w", err)
		}
		c.streams.Go(func() { c.serveStream(st) })
	}
}

func (c *conn) serveStream(st *quic.Stream) {
	rd := wire.NewReader(st, 0)
	// A stream that never sends its preamble must not pin a goroutine.
	_ = st.SetReadDeadline(time.Now().Add(c.t.cfg.HelloTimeout))
	pre, err := rd.ReadPreamble()
	_ = st.SetReadDeadline(time.Time{})
	if err != nil {
		c.log.Warn("rejecting stream with a bad preamble", "err", err)
		st.CancelRead(scode(wire.CloseProtocol))
		st.CancelWrite(scode(wire.CloseProtocol))
		return
	}
	switch pre.Stream {
	case wire.StreamDesiredState:
		c.applies.add()
		defer c.applies.done()
		c.serveDesired(st, rd)
	case wire.StreamSession:
		c.serveSession(st, rd)
	default:
		w := wire.NewWriter(st)
		if w.WritePreamble(pre.Stream) == nil {
			_ = w.Write(&wire.Error{Code: wire.CodeProtocol, Message: fmt.Sprintf("the gateway may not open %s streams", pre.Stream)})
		}
		st.CancelRead(scode(wire.CloseProtocol))
		_ = st.Close()
	}
}

// serveDesired reads pushes until the gateway closes its side, applying each complete
// push (a partial one, or every part of a full set) and answering with one Ack per
// session, then closes ours.
func (c *conn) serveDesired(st *quic.Stream, rd *wire.Reader) {
	defer func() { _ = st.Close() }()
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
		return
	}
	var parts []wire.Assignment
	inParts := false
	for {
		env, err := rd.ReadEnvelope()
		if errors.Is(err, io.EOF) {
			if inParts {
				c.log.Warn("desired-state stream ended inside a full set; ignoring its parts")
			}
			return
		}
		if err != nil {
			c.log.Warn("bad desired-state stream", "err", err)
			_ = w.Write(wire.ErrorOf(err))
			st.CancelRead(scode(wire.CloseProtocol))
			return
		}
		ds := env.Message.(*wire.DesiredState) // the Reader admits nothing else on this stream
		if inParts && !ds.Full {
			_ = w.Write(&wire.Error{Code: wire.CodeProtocol, Message: "partial push inside the parts of a full set"})
			st.CancelRead(scode(wire.CloseProtocol))
			return
		}
		parts = append(parts, ds.Assignments...)
		if ds.More {
			inParts = true
			continue
		}
		push := &wire.DesiredState{Full: ds.Full, Checksum: ds.Checksum, Assignments: parts}
		parts, inParts = nil, false
		if err := c.apply(env, push, w); err != nil {
			c.log.Warn("answering desired state failed", "err", err)
			return
		}
	}
}

func (c *conn) apply(env wire.Envelope, push *wire.DesiredState, w *wire.Writer) error {
	ctx := wireotel.Extract(c.applyCtx, env)
	ctx, span := c.t.tracer.Start(ctx, "tunnel.apply", trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(attribute.Bool("desired.full", push.Full), attribute.Int("desired.assignments", len(push.Assignments))))
	defer span.End()
	acks, err := c.t.cfg.Reconciler.Push(ctx, push)
	if errors.Is(err, reconcile.ErrChecksum) {
		span.SetStatus(codes.Error, err.Error())
		return wireotel.Write(ctx, w, wire.ErrorOf(err))
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		c.log.WarnContext(ctx, "reconcile incomplete", "err", err)
	}
	for i := range acks {
		if err := wireotel.Write(ctx, w, &acks[i]); err != nil {
			return err
		}
	}
	c.log.DebugContext(ctx, "applied desired state", "full", push.Full, "assignments", len(push.Assignments))
	return nil
}

// renewals renews the certificate over the tunnel once RenewAt has passed, retrying with
// backoff while this connection lasts. A renewal failure never drops the tunnel: the old
// certificate stays valid for a third of its lifetime.
func (c *conn) renewals(ctx context.Context) error {
	bo := backoff.New(backoff.Policy{Initial: 5 * time.Second, Max: 10 * time.Minute}, c.t.cfg.Rand)
	for {
		wait := time.Until(c.t.cfg.Credential.Current().RenewAt())
		if wait > 0 {
			if err := sleepCtx(ctx, wait); err != nil {
				return nil
			}
		}
		cred, err := c.t.cfg.Credential.Renew(ctx, c.signCSR)
		if err == nil {
			c.log.InfoContext(ctx, "certificate renewed", "not_after", cred.Leaf().NotAfter, "renew_at", cred.RenewAt())
			bo.Reset()
			continue
		}
		if ctx.Err() != nil {
			return nil
		}
		retry, after := wire.Retryable(err)
		d := bo.After(after)
		c.log.WarnContext(ctx, "certificate renewal failed", "err", err, "retry", retry, "delay", d,
			"not_after", c.t.cfg.Credential.Current().Leaf().NotAfter)
		if !retry {
			// The gateway will not renew on this connection; try again on the next one
			// rather than hammering it.
			return nil
		}
		if err := sleepCtx(ctx, d); err != nil {
			return nil
		}
	}
}

// signCSR is an enroll.Signer over a cert stream.
func (c *conn) signCSR(ctx context.Context, csrPEM string) (string, error) {
	ctx, span := c.t.tracer.Start(ctx, "tunnel.renew_certificate")
	defer span.End()
	st, err := c.qc.OpenStreamSync(ctx)
	if err != nil {
		return "", err
	}
	defer st.CancelRead(scode(wire.CloseNormal))
	stop := context.AfterFunc(ctx, func() { st.CancelRead(scode(wire.CloseNormal)) })
	defer stop()
	w := wire.NewWriter(st)
	if err := w.WritePreamble(wire.StreamCert); err != nil {
		return "", err
	}
	if err := wireotel.Write(ctx, w, &wire.CertRenewRequest{CSRPEM: csrPEM}); err != nil {
		return "", err
	}
	_ = st.Close()
	rd := wire.NewReader(st, 0)
	if _, err := rd.ReadPreamble(); err != nil {
		return "", err
	}
	msg, err := rd.Read()
	if err != nil {
		return "", err
	}
	switch m := msg.(type) {
	case *wire.CertRenewResponse:
		return m.CertificatePEM, nil
	case *wire.Error:
		return "", m
	}
	return "", &wire.ProtocolError{Kind: wire.KindUnexpectedType, Type: msg.Type()}
}

// inflight counts running handlers and says when none are left. Unlike a WaitGroup it
// allows new handlers to start while someone waits, which a stream accepted just before
// shutdown does.
type inflight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{} // closed while n == 0; replaced when n leaves 0
}

func (f *inflight) add() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 || f.zero == nil {
		f.zero = make(chan struct{})
	}
	f.n++
}

func (f *inflight) done() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n--; f.n == 0 {
		close(f.zero)
	}
}

// idle returns a channel closed once no handler runs.
func (f *inflight) idle() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		c := make(chan struct{})
		close(c)
		return c
	}
	return f.zero
}
