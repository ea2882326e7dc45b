package streamspace_test

import (
	"context"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/apperr"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/streamspace"
)

// Series of the gateway's stream metrics the forwarding tests read.
const (
	forwardedSeries     = `agent_gateway_session_streams_total{result="forwarded"}`
	forwardFailedSeries = `agent_gateway_session_streams_total{result="forward_failed"}`
)

// count reads a counter of the plane's /metrics as a number.
func (p *plane) count(t *testing.T, series string) int {
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
	if !w.Gateway.Gateway().Connected(agent) || b.Gateway.Gateway().Connected(agent) {
		t.Fatal("the agent's tunnel is not on the first replica alone")
	}
	if got := b.Gateway.Gateway().AdvertiseURL(); got != b.Base {
		t.Fatalf("the second replica advertises %q, want its loopback listener %q", got, b.Base)
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

	t.Run("a forward is not forwarded again", func(t *testing.T) {
		_, err := b.dialWith(t, s.ID, w.member, "", http.Header{gateway.HopHeader: {"gw-elsewhere"}})
		wantUnavailable(t, err, "forwarded")
		if got := b.count(t, forwardedSeries); got != 2 {
			t.Fatalf("a request marked as forwarded was forwarded: %d forwards, want 2", got)
		}
		// The owner's replica row names the second replica itself (a stale or misconfigured
		// address): it forwards once, to itself, which answers instead of looping.
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", b.Base)
		defer w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Base)
		_, err = b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "forwarded")
		if got := b.count(t, forwardedSeries); got != 3 {
			t.Fatalf("%d forwards, want exactly one more", got)
		}
	})

	t.Run("the owner cannot be reached", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := "http://" + ln.Addr().String()
		_ = ln.Close()
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", dead)
		_, err = b.dial(t, s.ID, w.member, "")
		wantUnavailable(t, err, "cannot be reached")
		if got := b.count(t, forwardFailedSeries); got != 1 {
			t.Fatalf("%d failed forwards, want 1", got)
		}
		// With the owner's address back, the stream goes through again.
		w.setOwnerReplica(t, string(agent), "advertise_url = $1", w.Base)
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
