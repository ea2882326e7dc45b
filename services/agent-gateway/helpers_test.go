package gateway_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/poll"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/postgres"
	"streamspace.dev/services/identity"
	idpostgres "streamspace.dev/services/identity/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// testKEK is 32 zero bytes: fine for tests, whose databases are thrown away.
const testKEK = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

// adminSubject is a UUID, because identity records who created an enrollment token.
const adminSubject = "00000000-0000-4000-8000-000000000001"

// testLogger discards logs unless GATEWAY_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("GATEWAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// harness is a real database, identity for enrollment tokens, and one or more gateway
// replicas listening on loopback.
type harness struct {
	t        testing.TB
	env      *tenantstest.Env
	identity identity.Service
	store    *postgres.Store
	replicas []*replica
	cfg      gateway.Config
	enroller gateway.Enroller
}

// replica is one gateway with its own service and span recorder.
type replica struct {
	gw    *gateway.Gateway
	svc   gateway.Service
	spans *tracetest.SpanRecorder
}

// fastConfig shrinks every interval so tests run in seconds.
func fastConfig() gateway.Config {
	return gateway.Config{KEK: testKEK, Listen: "127.0.0.1:0", HeartbeatInterval: 500 * time.Millisecond,
		DegradedAfter: 2 * time.Second, OfflineAfter: 4 * time.Second, Resync: 10 * time.Second,
		OwnerHeartbeat: 500 * time.Millisecond, ClaimCheck: time.Second, RetryMin: 200 * time.Millisecond, RetryMax: time.Second,
		KeepAlive: time.Second, IdleTimeout: 10 * time.Second}
}

func newHarness(t testing.TB, replicas int, mutate ...func(*gateway.Config)) *harness {
	t.Helper()
	env := tenantstest.New(t)
	deps := server.Deps{DB: env.DB, Logger: testLogger(), Registry: prometheus.NewRegistry(),
		Config: server.Config{Issuer: "https://identity.test", Audience: auth.DefaultAudience}}
	idm, err := identity.New(deps, identity.Config{KEK: testKEK}, idpostgres.New(env.DB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = idm.Close(context.Background()) })
	cfg := fastConfig()
	for _, m := range mutate {
		m(&cfg)
	}
	h := &harness{t: t, env: env, identity: idm.Service(),
		store: postgres.New(env.DB, postgres.Thresholds{DegradedAfter: cfg.DegradedAfter, OfflineAfter: cfg.OfflineAfter})}
	h.cfg = cfg
	h.enroller = gateway.EnrollerFunc(func(ctx context.Context, raw string) (gateway.Enrollment, error) {
		e, err := h.identity.ConsumeEnrollmentToken(ctx, raw)
		return gateway.Enrollment{Tenant: e.Tenant, TokenID: string(e.TokenID), Name: e.Name, Tags: e.Tags}, err
	})
	for range replicas {
		h.addReplica(h.store)
	}
	return h
}

// addReplica starts one more gateway replica on store (h.store, or a wrapper of it that
// injects failures).
func (h *harness) addReplica(store gateway.Store) *replica {
	h.t.Helper()
	c := h.cfg
	i := len(h.replicas)
	c.GatewayID = fmt.Sprintf("gw-%d", i)
	rec := tracetest.NewSpanRecorder()
	gw, err := gateway.StartGateway(context.Background(), c, gateway.GatewayOptions{Store: store, Enroller: h.enroller,
		ConnConfig: h.env.DB.Pool().Config().ConnConfig, Logger: testLogger().With("replica", i),
		TracerProvider: sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))})
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = gw.Close(ctx)
	})
	r := &replica{gw: gw, svc: gateway.NewService(store, gw.Revoke), spans: rec}
	h.replicas = append(h.replicas, r)
	return r
}

func (h *harness) gw() *gateway.Gateway { return h.replicas[0].gw }
func (h *harness) svc() gateway.Service { return h.replicas[0].svc }

// tenant creates a tenant and returns its id and a context of one of its admins.
func (h *harness) tenant(slug string) (tenant.ID, context.Context) {
	h.t.Helper()
	tn, _ := h.env.Tenant(h.t, slug)
	return tn.ID, adminCtx(tn.ID)
}

func adminCtx(id tenant.ID) context.Context {
	return authtest.Context(context.Background(), auth.Principal{Kind: auth.KindUser, Tenant: id, Subject: adminSubject, Role: auth.RoleAdmin})
}

// token creates an enrollment token in the admin's tenant.
func (h *harness) token(ctx context.Context, name string, tags ...string) string {
	h.t.Helper()
	tok, err := h.identity.CreateEnrollmentToken(ctx, identity.NewEnrollmentToken{Name: name, Tags: tags})
	if err != nil {
		h.t.Fatal(err)
	}
	return tok.Token
}

// csr makes a key and a CSR; names, if given, are what a hostile agent might ask for.
func csr(t testing.TB, uris ...string) (*ecdsa.PrivateKey, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.CertificateRequest{Subject: pkix.Name{CommonName: "agent"}}
	for _, u := range uris {
		pu, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, pu)
		tmpl.Subject.CommonName = u
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// enrolled is an agent's identity after enrollment.
type enrolled struct {
	resp gateway.EnrollResponse
	cert tls.Certificate
	leaf *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

// postEnroll calls the HTTPS enrollment endpoint of gw, trusting its CA.
func postEnroll(t testing.TB, gw *gateway.Gateway, req gateway.EnrollRequest) (int, []byte) {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(gw.CA().PEM()))
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	body, _ := json.Marshal(req)
	resp, err := client.Post("https://"+gw.Addr()+gateway.EnrollPath, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func problemCode(b []byte) apperr.Code {
	var p apperr.Problem
	_ = json.Unmarshal(b, &p)
	return p.Code
}

// enroll enrolls an agent with token through gw's HTTPS endpoint.
func (h *harness) enroll(gw *gateway.Gateway, token string, uris ...string) enrolled {
	h.t.Helper()
	key, csrPEM := csr(h.t, uris...)
	status, body := postEnroll(h.t, gw, gateway.EnrollRequest{Token: token, CSRPEM: csrPEM})
	if status != http.StatusCreated {
		h.t.Fatalf("enroll: %d %s", status, body)
	}
	var resp gateway.EnrollResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		h.t.Fatal(err)
	}
	return withCert(h.t, resp, key)
}

func withCert(t testing.TB, resp gateway.EnrollResponse, key *ecdsa.PrivateKey) enrolled {
	t.Helper()
	block, _ := pem.Decode([]byte(resp.CertificatePEM))
	if block == nil {
		t.Fatalf("no certificate in %q", resp.CertificatePEM)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(resp.CAPEM))
	return enrolled{resp: resp, cert: tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key, Leaf: leaf},
		leaf: leaf, key: key, pool: pool}
}

// push is one desired-state stream as the test agent received it.
type push struct {
	traceParent string
	msgs        []*wire.DesiredState
}

func (p push) assignments() []wire.Assignment {
	var out []wire.Assignment
	for _, m := range p.msgs {
		out = append(out, m.Assignments...)
	}
	return out
}

// testAgent is a minimal agent on quic-go and libs/wire: it says Hello, records every
// push, and acknowledges what it applies unless told not to.
type testAgent struct {
	t      testing.TB
	conn   *quic.Conn
	ctrlW  *wire.Writer
	ctrlR  *wire.Reader
	ack    *wire.HelloAck
	pushes chan push
	ctrl   chan wire.Message // what the gateway sends on the control stream

	mu      sync.Mutex
	noAck   bool
	applied map[wire.SessionID]int64
	applies int // assignments applied (a generation not seen before)
}

func dialTLS(e enrolled) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{e.cert}, RootCAs: e.pool, ServerName: "localhost",
		NextProtos: wire.SupportedALPNs(), MinVersion: tls.VersionTLS13}
}

// dialQUIC opens an authenticated QUIC connection without speaking the protocol.
func dialQUIC(t testing.TB, addr string, e enrolled) (*quic.Conn, error) {
	return dialQUICWith(t, addr, e, testDial)
}

// dialSettings are a test agent's QUIC liveness and handshake timeout.
type dialSettings struct {
	keepAlive, idleTimeout, handshakeTimeout time.Duration
}

// testDial suits tests: liveness at test speed, a short handshake timeout.
var testDial = dialSettings{keepAlive: time.Second, idleTimeout: 10 * time.Second, handshakeTimeout: 5 * time.Second}

// agentDial are the real agent's defaults (agent/tunnel), for benchmarks.
var agentDial = dialSettings{keepAlive: 5 * time.Second, idleTimeout: 20 * time.Second, handshakeTimeout: 10 * time.Second}

// dialQUICWith is dialQUIC with the given settings.
func dialQUICWith(t testing.TB, addr string, e enrolled, d dialSettings) (*quic.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d.handshakeTimeout)
	defer cancel()
	return quic.DialAddr(ctx, addr, dialTLS(e), &quic.Config{KeepAlivePeriod: d.keepAlive, MaxIdleTimeout: d.idleTimeout,
		HandshakeIdleTimeout: d.handshakeTimeout})
}

// connect dials gw and completes Hello / HelloAck.
func connect(t testing.TB, gw *gateway.Gateway, e enrolled) (*testAgent, error) {
	t.Helper()
	return connectAddr(t, gw.Addr(), e)
}

// connectAddr is connect to a gateway address.
func connectAddr(t testing.TB, addr string, e enrolled) (*testAgent, error) {
	t.Helper()
	return connectHello(t, addr, e, nil)
}

// connectHello is connectAddr with a chance to change the Hello before it is sent.
func connectHello(t testing.TB, addr string, e enrolled, edit func(*wire.Hello)) (*testAgent, error) {
	t.Helper()
	return connectWith(t, addr, e, testDial, edit)
}

// connectWith is connectHello with the given dial settings.
func connectWith(t testing.TB, addr string, e enrolled, d dialSettings, edit func(*wire.Hello)) (*testAgent, error) {
	t.Helper()
	conn, err := dialQUICWith(t, addr, e, d)
	if err != nil {
		return nil, err
	}
	a := &testAgent{t: t, conn: conn, pushes: make(chan push, 64), ctrl: make(chan wire.Message, 64), applied: map[wire.SessionID]int64{}}
	t.Cleanup(func() { _ = conn.CloseWithError(0, "test over") })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	a.ctrlW, a.ctrlR = wire.NewWriter(st), wire.NewReader(st, 0)
	if err := a.ctrlW.WritePreamble(wire.StreamControl); err != nil {
		return nil, err
	}
	hello := &wire.Hello{AgentID: e.resp.AgentID, AgentVersion: "test", Protocol: wire.Current,
		Capabilities: []string{"gpu"}, Cluster: map[string]string{"platform": "kind"},
		Capacity: wire.Capacity{CPUAllocatableMillis: 4000, MemoryAllocatableBytes: 8 << 30}}
	if edit != nil {
		edit(hello)
	}
	if err := a.ctrlW.Write(hello); err != nil {
		return nil, err
	}
	if _, err := a.ctrlR.ReadPreamble(); err != nil {
		return nil, err
	}
	m, err := a.ctrlR.Read()
	if err != nil {
		return nil, err
	}
	ack, ok := m.(*wire.HelloAck)
	if !ok {
		if we, ok := m.(*wire.Error); ok {
			return nil, we
		}
		return nil, fmt.Errorf("got %T, want hello_ack", m)
	}
	a.ack = ack
	go a.readControl()
	go a.acceptPushes()
	return a, nil
}

func (h *harness) connect(gw *gateway.Gateway, e enrolled) *testAgent {
	h.t.Helper()
	a, err := connect(h.t, gw, e)
	if err != nil {
		h.t.Fatalf("connecting: %v", err)
	}
	return a
}

func (a *testAgent) readControl() {
	for {
		m, err := a.ctrlR.Read()
		if err != nil {
			close(a.ctrl)
			return
		}
		a.ctrl <- m
	}
}

func (a *testAgent) acceptPushes() {
	for {
		st, err := a.conn.AcceptStream(context.Background())
		if err != nil {
			return
		}
		go a.servePush(st)
	}
}

func (a *testAgent) servePush(st *quic.Stream) {
	defer st.Close()
	r := wire.NewReader(st, 0)
	pre, err := r.ReadPreamble()
	if err != nil || pre.Stream != wire.StreamDesiredState {
		return
	}
	var p push
	for {
		env, err := r.ReadEnvelope()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return
		}
		if p.traceParent == "" {
			p.traceParent = env.TraceParent
		}
		p.msgs = append(p.msgs, env.Message.(*wire.DesiredState))
	}
	a.pushes <- p
	a.mu.Lock()
	noAck := a.noAck
	var acks []wire.Assignment
	for _, as := range p.assignments() {
		if as.Generation > a.applied[as.SessionID] {
			a.applied[as.SessionID] = as.Generation
			a.applies++
		}
		acks = append(acks, as)
	}
	a.mu.Unlock()
	if noAck {
		return
	}
	w := wire.NewWriter(st)
	_ = w.WritePreamble(wire.StreamDesiredState)
	for _, as := range acks {
		_ = w.Write(&wire.Ack{SessionID: as.SessionID, Generation: as.Generation})
	}
}

func (a *testAgent) setNoAck(v bool) {
	a.mu.Lock()
	a.noAck = v
	a.mu.Unlock()
}

// nextPush waits for the next push.
func (a *testAgent) nextPush(timeout time.Duration) push {
	a.t.Helper()
	select {
	case p := <-a.pushes:
		return p
	case <-time.After(timeout):
		a.t.Fatalf("no push within %s", timeout)
		return push{}
	}
}

// closed waits for the connection to close and returns its application error code.
func (a *testAgent) closed(timeout time.Duration) (wire.CloseCode, bool) {
	return closedWith(a.conn, timeout)
}

// closedWith waits for conn to close and returns its application error code.
func closedWith(conn *quic.Conn, timeout time.Duration) (wire.CloseCode, bool) {
	select {
	case <-conn.Context().Done():
		var ae *quic.ApplicationError
		if errors.As(context.Cause(conn.Context()), &ae) {
			return wire.CloseCode(ae.ErrorCode), true
		}
		return 0, true
	case <-time.After(timeout):
		return 0, false
	}
}

// eventually is poll.UntilNil for this package's waits, which name what they await by
// their line (reported, as eventually is a helper) and f's error.
func eventually(t testing.TB, timeout time.Duration, f func() error) {
	t.Helper()
	poll.UntilNil(t, timeout, "condition", f)
}

// mustTenant returns the tenant of an admin context.
func mustTenant(t testing.TB, ctx context.Context) tenant.ID {
	t.Helper()
	id, ok := tenant.FromContext(ctx)
	if !ok {
		t.Fatal("no tenant in context")
	}
	return id
}

// sysCtx acts for an enrolled agent's tenant, as the gateway does for its reports.
func sysCtx(e enrolled) context.Context {
	return auth.AsSystem(context.Background(), e.resp.TenantID, "test")
}

func parseURL(s string) ([]*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	return []*url.URL{u}, nil
}
