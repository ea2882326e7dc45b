package streamspace_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/agent-gateway/gatewaytest"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/streamspace"
)

// Series of the gateway's stream metrics the forwarding tests read.
const (
	forwardedSeries     = `agent_gateway_session_streams_total{result="forwarded"}`
	forwardFailedSeries = `agent_gateway_session_streams_total{result="forward_failed"}`
)

// peerRefusedSeries is the series of peer connections refused on side for reason.
func peerRefusedSeries(side, reason string) string {
	return `agent_gateway_peer_refused_total{reason="` + reason + `",side="` + side + `"}`
}

// peerURL is the WebSocket address of a session's stream on this plane's peer listener.
func (p *plane) peerURL(id sessions.ID) string {
	return "wss://" + p.Gateway.Gateway().PeerAddr() + strings.Replace(gateway.StreamPath, "{session}", string(id), 1)
}

// dialPeer opens a stream on the plane's peer listener as a replica would, presenting
// cert (none when nil) whatever CAs the listener names, with the token as a browser
// sends it. It trusts the listener blindly: what is tested is whom the listener lets in.
func (p *plane) dialPeer(t *testing.T, id sessions.ID, token string, cert *tls.Certificate) (*websocket.Conn, error) {
	t.Helper()
	conf := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}
	if cert != nil {
		conf.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, p.peerURL(id), &websocket.DialOptions{
		Subprotocols: []string{gateway.StreamSubprotocol, gateway.BearerSubprotocolPrefix + token},
		HTTPClient:   &http.Client{Transport: &http.Transport{TLSClientConfig: conf, DisableKeepAlives: true}}})
	if err != nil {
		return nil, refusal(resp, err)
	}
	return c, nil
}

// wantTLSAlert checks that err is the TLS alert of a refused handshake.
func wantTLSAlert(t *testing.T, err error) {
	t.Helper()
	if oe := new(net.OpError); !errors.As(err, &oe) || oe.Op != "remote error" {
		t.Fatalf("got %v, want the peer listener's TLS alert", err)
	}
}

// agentCert issues a certificate of the plane's CA naming agent of tenant, as enrollment
// does.
func agentCert(t *testing.T, p *plane, tid tenant.ID, agent gateway.AgentID) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, _, _, err := p.Gateway.Gateway().CA().IssueAgent(csr, gateway.Identity{Tenant: tid, Agent: agent}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(certPEM))
	return tls.Certificate{Certificate: [][]byte{block.Bytes}, PrivateKey: key}
}

// wantTunnelHereAlone checks that agent's tunnel is on the world's replica and not on
// other, so that other forwards the agent's streams.
func (w *streamWorld) wantTunnelHereAlone(t testing.TB, other *plane, agent gateway.AgentID) {
	t.Helper()
	if !w.Gateway.Gateway().Connected(agent) || other.Gateway.Gateway().Connected(agent) {
		t.Fatal("the agent's tunnel is not on the first replica alone")
	}
}

// count reads a counter of the plane's /metrics as a number.
func (p *plane) count(t testing.TB, series string) int {
	t.Helper()
	f, err := strconv.ParseFloat(p.metric(t, series), 64)
	if err != nil {
		t.Fatalf("%s: %v", series, err)
	}
	return int(f)
}

// setOwnerReplica rewrites the platform row of the replica that owns agent's tunnel (its
// address, its heartbeat), as a misconfigured, dead or moved replica would leave it.
func (w *streamWorld) setOwnerReplica(t *testing.T, agent string, set string, arg any) {
	t.Helper()
	tag, err := w.Env.Pool.Exec(context.Background(), `UPDATE platform.gateway_replicas SET `+set+`
		WHERE id = (SELECT owner_gateway FROM platform.agent_directory WHERE agent_id = $2)`, arg, agent)
	if err != nil || tag.RowsAffected() != 1 {
		t.Fatalf("rewriting the owner's replica row: %v (%d rows)", err, tag.RowsAffected())
	}
}

// wantUnavailable checks that err is a retryable 503 whose message says why.
func wantUnavailable(t *testing.T, err error, why string) {
	t.Helper()
	if e, ok := apperr.As(err); !ok || e.Code != apperr.Unavailable || e.RetryAfter <= 0 || !strings.Contains(e.Message, why) {
		t.Fatalf("got %#v, want unavailable (%s) with a retry time", err, why)
	}
}

// TestStreamThroughAnotherReplica: two replicas of the control plane share a database;
// the agent's tunnel is on the first. A stream opened through the second is forwarded to
// the first with the caller's own credential and carries the session's bytes both ways;
// its traffic is recorded once. Callers who may not see the session are refused by the
// second replica as by the first. A forward is never forwarded again, and an owner that
// cannot be reached is a retryable 503.
func TestStreamThroughAnotherReplica(t *testing.T) {
	w := newStreamWorld(t, nil)
	b := startPlaneOn(t, w.Env, nil, nil)
	s := w.running(t, w.member)
	owners := w.running(t, w.owner)
	agent := gateway.AgentID(s.AgentID)
	w.wantTunnelHereAlone(t, b, agent)
	if got, want := b.Gateway.Gateway().AdvertiseURL(), "https://"+b.Gateway.Gateway().PeerAddr(); got != want {
		t.Fatalf("the second replica advertises %q, want its loopback peer listener %q", got, want)
	}
	openedA, openedB := w.streamsOpened(t), b.streamsOpened(t)

	// A browser (the token rides as a subprotocol) and an API client (the Authorization header).
	_ = streamBothWays(t, b, s.ID, w.member, w.owner).Close()

	if got := b.streamsOpened(t); got != openedB {
		t.Fatalf("the second replica opened streams on a tunnel it does not hold: %s, was %s", got, openedB)
	}
	was, _ := strconv.Atoi(openedA)
	if now, _ := strconv.Atoi(w.streamsOpened(t)); now-was != 2 || b.count(t, forwardedSeries) != 2 {
		t.Fatalf("the owner opened %d streams, the second replica forwarded %d; want 2 of each",
			now-was, b.count(t, forwardedSeries))
	}
	// Counted once, by the owner that piped the bytes: both replicas flush, and the
	// record must be exact.
	in := int64(1<<20 + len("hello"))
	w.waitTraffic(t, s.ID, in, in+int64(2*len(memory.Greeting)), w.plane, b)

	t.Run("callers who may not see the session", func(t *testing.T) {
		for _, c := range []struct {
			name  string
			id    sessions.ID
			token string
		}{
			{"a member on the owner's session", owners.ID, w.member},
			{"another tenant's owner", s.ID, w.other},
		} {
			if _, err := b.dial(t, c.id, c.token, ""); !apperr.IsCode(err, apperr.NotFound) {
				t.Fatalf("%s: got %v, want not_found", c.name, err)
			}
		}
		if got := b.count(t, forwardedSeries); got != 2 {
			t.Fatalf("refused callers were forwarded: %d forwards, want 2", got)
		}
	})

	t.Run("the hop header grants nothing on the public listener", func(t *testing.T) {
		// Whoever sends it is not a replica: the request is served as any other, here
		// forwarded to the owner with the header replaced.
		ws, err := b.dialWith(t, s.ID, w.member, "", http.Header{gateway.HopHeader: {w.Gateway.Gateway().ID()}})
		if err != nil {
			t.Fatal(err)
		}
		greeted(t, websocket.NetConn(context.Background(), ws, websocket.MessageBinary))
		_ = ws.Close(websocket.StatusNormalClosure, "")
		if got := b.count(t, forwardedSeries); got != 3 {
			t.Fatalf("%d forwards, want 3", got)
		}
	})

	t.Run("a forward is not forwarded again", func(t *testing.T) {
		// A replica reached the second replica's peer listener, taking it for the owner:
		// it answers itself instead of forwarding on.
		replica, err := b.Gateway.Gateway().CA().IssueReplica("gw-elsewhere", time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.dialPeer(t, s.ID, w.member, &replica)
		wantUnavailable(t, err, "forwarded")
		if got := b.count(t, forwardedSeries); got != 3 {
			t.Fatalf("a request that reached the peer listener was forwarded: %d forwards, want 3", got)
		}
		// A replica forwarding to the owner's peer listener gets the stream (the path
		// every forward above took).
		ws, err := w.dialPeer(t, s.ID, w.member, &replica)
		if err != nil {
			t.Fatal(err)
		}
		greeted(t, websocket.NetConn(context.Background(), ws, websocket.MessageBinary))
		_ = ws.Close(websocket.StatusNormalClosure, "")
	})

	t.Run("the peer listener refuses all but replicas", func(t *testing.T) {
		opened := w.streamsOpened(t)
		for _, c := range []struct {
			name   string
			cert   *tls.Certificate
			reason string
		}{
			{"no certificate", nil, "handshake"},
			{"the session's own agent's certificate", new(agentCert(t, w.plane, w.tenant.Tenant.ID, agent)), "not_replica"},
			{"a replica certificate of another CA", new(gatewaytest.ImpostorReplica(t, b.Gateway.Gateway().ID())), "untrusted"},
		} {
			before := w.count(t, peerRefusedSeries("server", c.reason))
			_, err := w.dialPeer(t, s.ID, w.owner, c.cert)
			wantTLSAlert(t, err)
			// The client reads the alert before the listener has counted it.
			for deadline := time.Now().Add(10 * time.Second); w.count(t, peerRefusedSeries("server", c.reason)) != before+1; {
				if time.Now().After(deadline) {
					t.Fatalf("%s: %d refusals (%s), want %d", c.name, w.count(t, peerRefusedSeries("server", c.reason)), c.reason, before+1)
				}
				time.Sleep(20 * time.Millisecond)
			}
		}
		if got := w.streamsOpened(t); got != opened {
			t.Fatalf("a refused client reached the session: %s streams opened, was %s", got, opened)
		}
	})

	t.Run("the owner's address is another replica", func(t *testing.T) {
		// The owner's replica row names the second replica itself (a stale or
		// misconfigured address): its certificate is a replica's but not the owner's, and
		// the stream, with its credential, is not sent to it.
		failed, opened := b.count(t, forwardFailedSeries), b.streamsOpened(t)
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", b.Gateway.Gateway().AdvertiseURL())
		defer w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Gateway.Gateway().AdvertiseURL())
		_, err := b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "failed to prove itself")
		if got := b.count(t, forwardFailedSeries); got != failed+1 {
			t.Fatalf("%d failed forwards, want %d", got, failed+1)
		}
		if got := b.count(t, peerRefusedSeries("client", "wrong_replica")); got != 1 {
			t.Fatalf("%d refusals of the wrong replica, want 1", got)
		}
		if got := b.streamsOpened(t); got != opened {
			t.Fatalf("the wrong replica opened a stream: %s, was %s", got, opened)
		}
	})

	t.Run("the owner's address presents no replica certificate", func(t *testing.T) {
		// A server at the owner's address with a certificate of the same CA, the agents'
		// server certificate: the forwarder refuses it before sending anything.
		cert, err := w.Gateway.Gateway().CA().IssueServer([]string{"127.0.0.1"}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var reached atomic.Int32
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
		srv.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}
		srv.StartTLS()
		defer srv.Close()
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", srv.URL)
		defer w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Gateway.Gateway().AdvertiseURL())
		_, err = b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "failed to prove itself")
		if got := b.count(t, peerRefusedSeries("client", "not_replica")); got != 1 {
			t.Fatalf("%d refusals of a non-replica owner, want 1", got)
		}
		if n := reached.Load(); n != 0 {
			t.Fatalf("the impostor received %d requests", n)
		}
	})

	t.Run("the owner cannot be reached", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "https://" + ln.Addr().String()
		_ = ln.Close()
		failed := b.count(t, forwardFailedSeries)
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", dead)
		_, err = b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "cannot be reached")
		if got := b.count(t, forwardFailedSeries); got != failed+1 {
			t.Fatalf("%d failed forwards, want %d", got, failed+1)
		}
		// A row of a replica from before mutual TLS names its HTTP API: no credential
		// goes there, nothing is dialed.
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Base)
		_, err = b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "no valid address")
		if got := b.count(t, forwardFailedSeries); got != failed+1 {
			t.Fatalf("an http:// owner was dialed: %d failed forwards, want %d", got, failed+1)
		}
		// With the owner's address back, the stream goes through again.
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Gateway.Gateway().AdvertiseURL())
		ws, err := b.dial(t, s.ID, w.member, "")
		if err != nil {
			t.Fatal(err)
		}
		greeted(t, websocket.NetConn(context.Background(), ws, websocket.MessageBinary))
		_ = ws.Close(websocket.StatusNormalClosure, "")
	})
}

// TestStreamNotForwardedToStaleOwner: an owner whose replica row's heartbeat has aged past
// a few owner heartbeats is a replica that is dead or cut off; the other replica does
// not forward to it and answers a retryable 503 without dialing. Fresh again, it does.
func TestStreamNotForwardedToStaleOwner(t *testing.T) {
	// The first replica stamps its replica row only when it starts, so the test alone ages
	// it; the second replica keeps the default freshness bound.
	w := newStreamWorld(t, func(s *streamspace.Settings) { s.Gateway.OwnerHeartbeat = time.Hour })
	b := startPlaneOn(t, w.Env, nil, nil)
	s := w.running(t, w.owner)

	w.setOwnerReplica(t, string(s.AgentID), "heartbeat = now() - $1::interval", "1 minute")
	_, err := b.dial(t, s.ID, w.owner, "")
	wantUnavailable(t, err, "not connected")
	if f, ff := b.count(t, forwardedSeries), b.count(t, forwardFailedSeries); f != 0 || ff != 0 {
		t.Fatalf("a stale owner was dialed: %d forwards, %d failed", f, ff)
	}

	w.setOwnerReplica(t, string(s.AgentID), "heartbeat = now() - $1::interval", "0 seconds")
	ws, err := b.dial(t, s.ID, w.owner, "")
	if err != nil {
		t.Fatal(err)
	}
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	greeted(t, nc)
	if err := roundTrip(nc, []byte("fresh")); err != nil {
		t.Fatal(err)
	}
	_ = ws.Close(websocket.StatusNormalClosure, "")
}

// TestForwardedStreamDrains: when the replica holding the agent's tunnel shuts down, a
// stream forwarded to it ends like its own streams (its agents are told to go), the
// shutdown does not wait for it, and its peer listener accepts no more forwards.
func TestForwardedStreamDrains(t *testing.T) {
	w := newStreamWorld(t, nil)
	b := startPlaneOn(t, w.Env, nil, nil)
	s := w.running(t, w.member)
	ws, err := b.dial(t, s.ID, w.member, "")
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	nc := websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
	greeted(t, nc)
	if got := b.count(t, forwardedSeries); got != 1 {
		t.Fatalf("%d forwards, want 1", got)
	}
	peer := w.Gateway.Gateway().PeerAddr()

	if err := w.stop(); err != nil {
		t.Fatalf("the owner's shutdown: %v", err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, nc)
		ended <- err
	}()
	select {
	case <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("the forwarded stream outlived the owner's shutdown")
	}
	if c, err := net.Dial("tcp", peer); err == nil {
		c.Close()
		t.Fatal("the owner's peer listener accepts after its shutdown")
	}
}
