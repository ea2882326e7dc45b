package streamspace_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/streamspace"
)

// streamWorld is a control plane with one tenant (owner, a member), an enrolled agent
// over a memory backend the test holds, and a second tenant.
type streamWorld struct {
	*plane
	mem           *memory.Backend
	tenant        identity.SignupResult
	owner, member string
	// other is the other tenant's owner.
	other string
}

func newStreamWorld(t testing.TB, set func(*streamspace.Settings)) *streamWorld {
	t.Helper()
	p := startPlaneWith(t, set)
	w := &streamWorld{plane: p}
	const password = "a long enough passphrase"
	p.call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Hooli", Slug: "hooli", Email: "g@hooli.test", Password: password}, nil, &w.tenant, 201)
	w.owner = w.tenant.Tokens.AccessToken
	p.call("POST", "/api/v1/users", w.owner, identity.NewUser{Email: "m@hooli.test", Role: auth.RoleMember, Password: password}, nil, nil, 201)
	var login identity.Tokens
	p.call("POST", "/api/v1/auth/login", "", identity.Credentials{Tenant: "hooli", Email: "m@hooli.test", Password: password}, nil, &login, 200)
	w.member = login.AccessToken
	var other identity.SignupResult
	p.call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Globex", Slug: "globex", Email: "h@globex.test", Password: password}, nil, &other, 201)
	w.other = other.Tokens.AccessToken

	var tok identity.CreatedEnrollmentToken
	p.call("POST", "/api/v1/enrollment-tokens", w.owner, identity.NewEnrollmentToken{Name: "cluster-1"}, nil, &tok, 201)
	w.mem = memory.New(memory.Config{Allocatable: wire.Capacity{CPUAllocatableMillis: 1 << 40, MemoryAllocatableBytes: 1 << 60}})
	t.Cleanup(w.mem.Close)
	runAgent(t, p.Gateway.Gateway().Addr(), p.Base+gateway.EnrollPath, tok.Token, w.mem)
	return w
}

// running creates a session as token and waits until it runs.
func (w *streamWorld) running(t testing.TB, token string) sessions.Session {
	t.Helper()
	var s sessions.Session
	w.call("POST", "/api/v1/sessions", token, sessions.NewSession{Template: "firefox"}, nil, &s, 201)
	return w.waitPhase(t, token, s.ID, sessions.PhaseRunning)
}

func (w *streamWorld) waitPhase(t testing.TB, token string, id sessions.ID, want sessions.Phase) sessions.Session {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var got sessions.Session
		w.call("GET", "/api/v1/sessions/"+string(id), token, nil, nil, &got, 200)
		if got.Phase == want {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("session %s is %s/%s (%s), want %s", id, got.Phase, got.Reason, got.Message, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamURL is the WebSocket address of a session's stream on this plane.
func (p *plane) streamURL(id sessions.ID, query string) string {
	u := "ws" + strings.TrimPrefix(p.Base, "http") + strings.Replace(gateway.StreamPath, "{session}", string(id), 1)
	if query != "" {
		u += "?" + query
	}
	return u
}

// dial opens a stream on this plane the way a browser does: the token rides as a
// subprotocol.
func (p *plane) dial(t testing.TB, id sessions.ID, token, query string) (*websocket.Conn, error) {
	t.Helper()
	return p.dialWith(t, id, token, query, nil)
}

// dialWith is dial with more request headers.
func (p *plane) dialWith(t testing.TB, id sessions.ID, token, query string, header http.Header) (*websocket.Conn, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	protos := []string{gateway.StreamSubprotocol}
	if token != "" {
		protos = append(protos, gateway.BearerSubprotocolPrefix+token)
	}
	c, resp, err := websocket.Dial(ctx, p.streamURL(id, query), &websocket.DialOptions{Subprotocols: protos, HTTPHeader: header})
	if err != nil {
		return nil, refusal(resp, err)
	}
	if c.Subprotocol() != gateway.StreamSubprotocol {
		t.Errorf("negotiated subprotocol %q, want %q (and never the token)", c.Subprotocol(), gateway.StreamSubprotocol)
	}
	c.SetReadLimit(-1)
	return c, nil
}

// refusal turns a failed handshake into the problem the gateway answered with.
func refusal(resp *http.Response, err error) error {
	if resp == nil {
		return err
	}
	return apperr.FromResponse(resp)
}

// greeted reads the session's greeting off a fresh stream.
func greeted(t testing.TB, nc net.Conn) {
	t.Helper()
	buf := make([]byte, len(memory.Greeting))
	if _, err := io.ReadFull(nc, buf); err != nil || string(buf) != memory.Greeting {
		t.Fatalf("greeting %q, %v", buf, err)
	}
}

// roundTrip writes msg and reads its echo.
func roundTrip(nc net.Conn, msg []byte) error {
	if _, err := nc.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return errors.New("the echo differs from what was sent")
	}
	return nil
}

// echoAtOnce sends n random bytes and reads their echo meanwhile: the echo of a large
// message must not wait for all of it.
func echoAtOnce(t testing.TB, nc net.Conn, n int) {
	t.Helper()
	msg := make([]byte, n)
	_, _ = rand.Read(msg)
	done := make(chan error, 1)
	go func() { _, err := nc.Write(msg); done <- err }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(nc, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo of %d bytes: equal=%v, %v", n, bytes.Equal(got, msg), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// waitTraffic flushes the traffic meters of every plane given until the session's
// recorded traffic is exactly in and out bytes, and fails if it ever exceeds them.
func (w *streamWorld) waitTraffic(t testing.TB, id sessions.ID, in, out int64, planes ...*plane) {
	t.Helper()
	ctx := context.Background()
	// The gateway counts a write once it returned, which may be just after the client
	// read it: flush until the count is complete.
	for deadline := time.Now().Add(10 * time.Second); ; {
		for _, p := range planes {
			if err := p.Gateway.FlushTraffic(ctx); err != nil {
				t.Fatal(err)
			}
		}
		var gotIn, gotOut int64
		err := w.Env.Pool.QueryRow(ctx, `SELECT bytes_in, bytes_out FROM `+w.tenant.Tenant.ID.Schema()+`.session_traffic WHERE session_id = $1`,
			string(id)).Scan(&gotIn, &gotOut)
		if err == nil && gotIn == in && gotOut == out {
			return
		}
		if time.Now().After(deadline) || gotIn > in || gotOut > out {
			t.Fatalf("recorded traffic in=%d out=%d (%v), want %d and %d", gotIn, gotOut, err, in, out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// openedSeries is the gateway's count of streams it opened to agents.
const openedSeries = "agent_gateway_session_streams_opened_total"

// streamsOpened reads the gateway's count of streams it opened to agents.
func (p *plane) streamsOpened(t testing.TB) string {
	t.Helper()
	return p.metric(t, openedSeries)
}

// metric reads one series of the plane's /metrics (name with its labels, as printed),
// "0" when it is absent.
func (p *plane) metric(t testing.TB, series string) string {
	t.Helper()
	resp, err := http.Get(p.Base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for line := range strings.SplitSeq(string(b), "\n") {
		if strings.HasPrefix(line, series+" ") {
			return strings.Fields(line)[1]
		}
	}
	return "0"
}

// TestStreamCarriesSessionBytes: bytes from a browser's WebSocket reach the session
// through the gateway, the QUIC tunnel and the agent, and come back; the same with an
// API client's Authorization header; the stream ends cleanly from either side.
func TestStreamCarriesSessionBytes(t *testing.T) {
	w := newStreamWorld(t, nil)
	s := w.running(t, w.member)

	nc2 := streamBothWays(t, w.plane, s.ID, w.member, w.owner)
	// The session going away (hibernation cuts its endpoint) ends the stream.
	w.call("POST", "/api/v1/sessions/"+string(s.ID)+"/hibernate", w.owner, nil, nil, nil, 200)
	if _, err := io.ReadAll(nc2); err != nil {
		t.Fatalf("stream after the session stopped: %v", err)
	}
}

// streamBothWays opens two streams to session id through p, as the two kinds of caller
// do: a browser's (browserToken as a subprotocol: the greeting, a 1 MiB echo, a clean
// close) and an API client's (clientToken in the Authorization header: the greeting and
// a round trip). It returns the API client's stream, still open.
func streamBothWays(t *testing.T, p *plane, id sessions.ID, browserToken, clientToken string) net.Conn {
	t.Helper()
	ws, err := p.dial(t, id, browserToken, "")
	if err != nil {
		t.Fatal(err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	greeted(t, nc)
	echoAtOnce(t, nc, 1<<20)
	if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
		t.Fatalf("closing: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	ws2, _, err := websocket.Dial(ctx, p.streamURL(id, ""), &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + clientToken}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ws2.CloseNow() })
	nc2 := websocket.NetConn(ctx, ws2, websocket.MessageBinary)
	greeted(t, nc2)
	if err := roundTrip(nc2, []byte("hello")); err != nil {
		t.Fatal(err)
	}
	return nc2
}

// TestStreamRefusals: a caller without a valid token, or who may not see the session, is
// refused before any stream reaches an agent, exactly like a missing session; a session
// that does not run, and an agent's refusal, are clear typed errors.
func TestStreamRefusals(t *testing.T) {
	w := newStreamWorld(t, nil)
	owners := w.running(t, w.owner)
	orphaned := w.running(t, w.owner) // its agent goes away at the end
	opened := w.streamsOpened(t)

	forged := strings.Split(w.owner, ".")
	forged[1] = strings.ToUpper(forged[1][:4]) + forged[1][4:] // claims changed, signature not
	cases := []struct {
		name  string
		id    sessions.ID
		token string
		query string
		want  apperr.Code
	}{
		{"no token", owners.ID, "", "", apperr.Unauthenticated},
		{"garbage token", owners.ID, "not-a-jwt", "", apperr.Unauthenticated},
		{"forged token", owners.ID, strings.Join(forged, "."), "", apperr.Unauthenticated},
		{"a member on the owner's session", owners.ID, w.member, "", apperr.NotFound},
		{"another tenant's owner", owners.ID, w.other, "", apperr.NotFound},
		{"no such session", sessions.NewID(), w.owner, "", apperr.NotFound},
		{"malformed session id", "ses_nope", w.owner, "", apperr.NotFound},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := w.dial(t, c.id, c.token, c.query)
			if !apperr.IsCode(err, c.want) {
				t.Fatalf("got %v, want %s", err, c.want)
			}
		})
	}
	if got := w.streamsOpened(t); got != opened {
		t.Fatalf("streams opened went from %s to %s for refused callers", opened, got)
	}

	t.Run("not placed", func(t *testing.T) {
		// Globex has no agent: its session never gets placed.
		var s sessions.Session
		w.call("POST", "/api/v1/sessions", w.other, sessions.NewSession{Template: "firefox"}, nil, &s, 201)
		_, err := w.dial(t, s.ID, w.other, "")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.Conflict || !strings.Contains(e.Message, "not placed") {
			t.Fatalf("got %v, want conflict: not placed", err)
		}
	})
	t.Run("the agent has no such port", func(t *testing.T) {
		_, err := w.dial(t, owners.ID, w.owner, "port=audio")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.NotFound || !strings.Contains(e.Message, "agent") {
			t.Fatalf("got %v, want not_found from the agent", err)
		}
	})
	t.Run("the agent refuses: retry later", func(t *testing.T) {
		w.mem.FailDial(wire.SessionID(owners.ID), &wire.Error{Code: wire.CodeUnavailable, Message: "pod not Ready", RetryAfter: 3 * time.Second})
		defer w.mem.FailDial(wire.SessionID(owners.ID), nil)
		_, err := w.dial(t, owners.ID, w.owner, "")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.Unavailable || e.RetryAfter != 3*time.Second || strings.Contains(e.Message, "pod") {
			t.Fatalf("got %#v, want unavailable with retry after 3s and without the agent's text", err)
		}
	})
	t.Run("the agent fails internally", func(t *testing.T) {
		w.mem.FailDial(wire.SessionID(owners.ID), errors.New("dial tcp 10.1.2.3:5900: secret internals"))
		defer w.mem.FailDial(wire.SessionID(owners.ID), nil)
		_, err := w.dial(t, owners.ID, w.owner, "")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.Unavailable || strings.Contains(e.Message, "10.1.2.3") {
			t.Fatalf("got %#v, want unavailable without the agent's internals", err)
		}
	})
	t.Run("not running", func(t *testing.T) {
		w.call("POST", "/api/v1/sessions/"+string(owners.ID)+"/hibernate", w.owner, nil, nil, nil, 200)
		w.waitPhase(t, w.owner, owners.ID, sessions.PhaseHibernated)
		_, err := w.dial(t, owners.ID, w.owner, "")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.Conflict || !strings.Contains(e.Message, "Hibernated") {
			t.Fatalf("got %v, want conflict: Hibernated", err)
		}
	})
	t.Run("the agent is not connected", func(t *testing.T) {
		// Revoking closes the tunnel at once; the session still shows Running until the
		// agent is declared lost.
		w.Gateway.Gateway().Revoke(gateway.AgentID(orphaned.AgentID))
		deadline := time.Now().Add(10 * time.Second)
		for w.Gateway.Gateway().Connected(gateway.AgentID(orphaned.AgentID)) {
			if time.Now().After(deadline) {
				t.Fatal("the revoked tunnel stayed up")
			}
			time.Sleep(10 * time.Millisecond)
		}
		_, err := w.dial(t, orphaned.ID, w.owner, "")
		if e, ok := apperr.As(err); !ok || e.Code != apperr.Unavailable || e.RetryAfter <= 0 || !strings.Contains(e.Message, "not connected") {
			t.Fatalf("got %#v, want unavailable: not connected, with a retry time", err)
		}
	})
	// The problem body reaches API clients as JSON with its code.
	req, _ := http.NewRequest("GET", w.Base+strings.Replace(gateway.StreamPath, "{session}", string(owners.ID), 1), nil)
	req.Header.Set("Authorization", "Bearer "+w.member)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var p apperr.Problem
	if err := json.NewDecoder(resp.Body).Decode(&p); err != nil || resp.StatusCode != 404 || p.Code != apperr.NotFound {
		t.Fatalf("plain GET as the member: %d %+v %v", resp.StatusCode, p, err)
	}
}

// TestSlowViewerDoesNotStallAnother: a viewer that sends far more than it reads fills
// its own stream's windows and stalls only itself; another session's viewer on the same
// agent tunnel keeps its round trips going meanwhile. Then the slow viewer reads
// everything back intact.
func TestSlowViewerDoesNotStallAnother(t *testing.T) {
	w := newStreamWorld(t, nil)
	slowS, fastS := w.running(t, w.owner), w.running(t, w.owner)
	ctx := context.Background()
	slowWS, err := w.dial(t, slowS.ID, w.owner, "")
	if err != nil {
		t.Fatal(err)
	}
	slow := websocket.NetConn(ctx, slowWS, websocket.MessageBinary)
	greeted(t, slow)
	fastWS, err := w.dial(t, fastS.ID, w.owner, "")
	if err != nil {
		t.Fatal(err)
	}
	fast := websocket.NetConn(ctx, fastWS, websocket.MessageBinary)
	greeted(t, fast)

	// Far more than every buffer on the path holds: QUIC's stream window, the sockets'
	// buffers and the copy buffers together are tens of MiB.
	const total = 256 << 20
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	var written atomic.Int64
	wrote := make(chan error, 1)
	sent := sha256.New()
	go func() {
		for written.Load() < total {
			if _, err := slow.Write(block); err != nil {
				wrote <- err
				return
			}
			sent.Write(block)
			written.Add(int64(len(block)))
		}
		wrote <- nil
	}()
	// Wait until the slow viewer is stuck: its writes stop advancing.
	for last := int64(-1); ; {
		time.Sleep(200 * time.Millisecond)
		n := written.Load()
		if n == last {
			break
		}
		if n >= total {
			t.Fatalf("all %d bytes went out with nobody reading: the path buffers without bound", total)
		}
		last = n
	}
	for i := range 200 {
		if err := roundTrip(fast, []byte(strings.Repeat("x", 1+i*37))); err != nil {
			t.Fatalf("round trip %d of the other viewer: %v", i, err)
		}
	}
	if written.Load() >= total {
		t.Fatal("the slow viewer finished while the other ran: it was never stalled, so this proves nothing")
	}
	// Now read it all back; the writer resumes as the windows drain.
	got := sha256.New()
	if _, err := io.CopyN(got, slow, total); err != nil {
		t.Fatalf("reading the slow viewer's echo: %v", err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Sum(nil), sent.Sum(nil)) {
		t.Fatal("the slow viewer's echo differs from what it sent")
	}
}

// TestTrafficKeepsASessionAwake: with their idle timeout long past, the session whose
// stream carried bytes is not hibernated by the sessions service's idle timer, and the one
// without traffic is. Time is moved by rewriting last_activity, not by waiting; the
// controller's Tick and the gateway's flush are driven by the test.
func TestTrafficKeepsASessionAwake(t *testing.T) {
	w := newStreamWorld(t, func(s *streamspace.Settings) {
		s.Sessions.Interval = time.Hour    // only the test ticks
		s.Gateway.TrafficFlush = time.Hour // only the test flushes
	})
	busy, idle := w.running(t, w.owner), w.running(t, w.owner)
	schema := w.tenant.Tenant.ID.Schema()
	_, err := w.Env.Pool.Exec(context.Background(), `UPDATE `+schema+`.sessions SET last_activity = now() - interval '2 hours' WHERE id = ANY ($1)`,
		[]string{string(busy.ID), string(idle.ID)})
	if err != nil {
		t.Fatal(err)
	}

	ws, err := w.dial(t, busy.ID, w.owner, "")
	if err != nil {
		t.Fatal(err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	greeted(t, nc)
	if err := roundTrip(nc, []byte("keep me awake")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	w.waitTraffic(t, busy.ID, int64(len("keep me awake")), int64(len(memory.Greeting)+len("keep me awake")), w.plane)
	if err := w.Sessions.Controller().Tick(ctx); err != nil {
		t.Fatal(err)
	}
	var got sessions.Session
	w.call("GET", "/api/v1/sessions/"+string(busy.ID), w.owner, nil, nil, &got, 200)
	if got.Desired != sessions.DesiredRunning || got.Phase != sessions.PhaseRunning {
		t.Fatalf("the session with traffic is %s/%s (%s)", got.Desired, got.Phase, got.Reason)
	}
	w.call("GET", "/api/v1/sessions/"+string(idle.ID), w.owner, nil, nil, &got, 200)
	if got.Desired != sessions.DesiredHibernated {
		t.Fatalf("the session without traffic is %s/%s (%s), want hibernating for idleness", got.Desired, got.Phase, got.Reason)
	}
	// A flush with nothing new writes nothing: the record stays as it was.
	if err := w.Gateway.FlushTraffic(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := w.Env.Pool.QueryRow(ctx, `SELECT count(*) FROM `+schema+`.session_traffic`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d traffic rows, %v; want only the busy session's", n, err)
	}
}
