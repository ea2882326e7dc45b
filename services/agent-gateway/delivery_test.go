package gateway_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

func spec(image string) json.RawMessage {
	return json.RawMessage(fmt.Sprintf(`{"image":%q,"ports":[{"name":"vnc","port":5901}]}`, image))
}

// waitAcked waits until the session's current generation is acknowledged.
func waitAcked(t testing.TB, svc gateway.Service, ctx context.Context, s gateway.SessionID, gen int64) {
	t.Helper()
	eventually(t, 5*time.Second, func() error {
		a, err := svc.Assignment(ctx, s)
		if err != nil {
			return err
		}
		if a.AckedGeneration != gen {
			return fmt.Errorf("acked %d, want %d", a.AckedGeneration, gen)
		}
		return nil
	})
}

func TestDeliveryAndAck(t *testing.T) {
	t.Parallel()
	// A long resync: only NOTIFY can make delivery this quick.
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = time.Minute })
	tid, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	ag := h.connect(h.gw(), e)
	ag.nextPush(5 * time.Second) // the empty full set

	as, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("firefox:1")})
	if err != nil {
		t.Fatal(err)
	}
	if as.Generation != 1 || !as.Pending() {
		t.Fatalf("assignment %+v", as)
	}
	start := time.Now()
	p := ag.nextPush(2 * time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("delivery took %s", d)
	}
	got := p.assignments()
	if len(got) != 1 || p.msgs[0].Full || got[0].SessionID != "ses-1" || got[0].TenantID != tid || got[0].Generation != 1 || got[0].Desired != wire.DesiredRunning {
		t.Fatalf("push %+v", p.msgs)
	}
	waitAcked(t, h.svc(), ctx, "ses-1", 1)

	// The same write again changes nothing: no new generation, no push.
	if again, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("firefox:1")}); err != nil || again.Generation != 1 {
		t.Fatalf("identical write: %+v %v", again, err)
	}
	// A change bumps the generation and is delivered.
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: e.resp.AgentID, Desired: wire.DesiredHibernated, Spec: spec("firefox:1")}); err != nil {
		t.Fatal(err)
	}
	p = ag.nextPush(2 * time.Second)
	if got := p.assignments(); len(got) != 1 || got[0].Generation != 2 || got[0].Desired != wire.DesiredHibernated {
		t.Fatalf("second push %+v", got)
	}
	waitAcked(t, h.svc(), ctx, "ses-1", 2)
	select {
	case p := <-ag.pushes:
		t.Fatalf("unexpected push %+v", p.assignments())
	case <-time.After(300 * time.Millisecond):
	}

	// Bad input and other agents' sessions.
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: gateway.NewAgentID(), Desired: wire.DesiredRunning}); !apperr.IsCode(err, apperr.Conflict) {
		t.Fatalf("moving a session between agents: %v", err)
	}
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-2", AgentID: gateway.NewAgentID(), Desired: wire.DesiredRunning}); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("unknown agent: %v", err)
	}
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "bad id!", AgentID: e.resp.AgentID, Desired: "flying", Spec: json.RawMessage(`[1]`)}); !apperr.IsCode(err, apperr.Invalid) {
		t.Fatalf("invalid input: %v", err)
	}
}

func TestWorkCreatedOfflineIsDeliveredOnConnect(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1)
	tid, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	for i := range 3 {
		if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: gateway.SessionID(fmt.Sprintf("ses-%d", i)), AgentID: e.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("x")}); err != nil {
			t.Fatal(err)
		}
	}
	ag := h.connect(h.gw(), e)
	p := ag.nextPush(5 * time.Second)
	got := p.assignments()
	want := make([]wire.Assignment, 3)
	for i := range want {
		want[i] = wire.Assignment{SessionID: gateway.SessionID(fmt.Sprintf("ses-%d", i)), TenantID: tid, Generation: 1, Desired: wire.DesiredRunning}
	}
	last := p.msgs[len(p.msgs)-1]
	if !last.Full || len(got) != 3 || last.Checksum != wire.Checksum(want) || ag.ack.DesiredChecksum != last.Checksum {
		t.Fatalf("full set %+v, checksum %s / hello %s, want %s", got, last.Checksum, ag.ack.DesiredChecksum, wire.Checksum(want))
	}
	for i := range 3 {
		waitAcked(t, h.svc(), ctx, gateway.SessionID(fmt.Sprintf("ses-%d", i)), 1)
	}

	// Disconnect, change one session and delete another while away, reconnect.
	_ = ag.conn.CloseWithError(0, "bye")
	eventually(t, 5*time.Second, func() error {
		if h.gw().Connected(e.resp.AgentID) {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: e.resp.AgentID, Desired: wire.DesiredStopped, Spec: spec("x")}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-2", AgentID: e.resp.AgentID, Desired: wire.DesiredDeleted}); err != nil {
		t.Fatal(err)
	}
	ag2 := h.connect(h.gw(), e)
	p = ag2.nextPush(5 * time.Second)
	byID := map[wire.SessionID]wire.Assignment{}
	for _, a := range p.assignments() {
		byID[a.SessionID] = a
	}
	if len(byID) != 3 || byID["ses-0"].Generation != 1 || byID["ses-1"].Generation != 2 || byID["ses-1"].Desired != wire.DesiredStopped ||
		byID["ses-2"].Desired != wire.DesiredDeleted {
		t.Fatalf("full set after reconnect %+v", byID)
	}
	waitAcked(t, h.svc(), ctx, "ses-1", 2)
	waitAcked(t, h.svc(), ctx, "ses-2", 2)
	// An acknowledged deletion leaves the set: the next full set omits it.
	set, err := h.svc().AgentAssignments(ctx, e.resp.AgentID)
	if err != nil || len(set) != 3 {
		t.Fatalf("assignments %v %v", set, err)
	}
	_ = ag2.conn.CloseWithError(0, "bye")
	eventually(t, 5*time.Second, func() error {
		if h.gw().Connected(e.resp.AgentID) {
			return fmt.Errorf("still connected")
		}
		return nil
	})
	ag3 := h.connect(h.gw(), e)
	if got := ag3.nextPush(5 * time.Second).assignments(); len(got) != 2 {
		t.Fatalf("full set after the deletion was acknowledged: %+v", got)
	}
}

func TestUnacknowledgedWorkIsRetried(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = time.Minute })
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	ag := h.connect(h.gw(), e)
	ag.nextPush(5 * time.Second)
	ag.setNoAck(true)
	if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
		t.Fatal(err)
	}
	ag.nextPush(2 * time.Second)
	// No ack: it comes again after the backoff (RetryMin 200 ms), and again.
	for range 2 {
		if got := ag.nextPush(3 * time.Second).assignments(); len(got) != 1 || got[0].Generation != 1 {
			t.Fatalf("retry %+v", got)
		}
	}
	ag.setNoAck(false)
	ag.nextPush(3 * time.Second)
	waitAcked(t, h.svc(), ctx, "ses-1", 1)
	// Applied once, however often it was delivered.
	ag.mu.Lock()
	applies := ag.applies
	ag.mu.Unlock()
	if applies != 1 {
		t.Fatalf("applied %d times", applies)
	}
	// Once acknowledged, the retries stop.
	select {
	case p := <-ag.pushes:
		t.Fatalf("push after ack: %+v", p.assignments())
	case <-time.After(1500 * time.Millisecond):
	}
}

// An agent that reports a retryable failure gets the work again after the delay it asked
// for; a permanent failure counts as delivered and is kept.
func TestAckErrors(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 1, func(c *gateway.Config) { c.Resync = time.Minute })
	_, ctx := h.tenant("acme")
	e := h.enroll(h.gw(), h.token(ctx, "edge"))
	ag := h.connect(h.gw(), e)
	ag.nextPush(5 * time.Second)
	ag.setNoAck(true)
	for _, s := range []gateway.SessionID{"retry", "perm"} {
		if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: s, AgentID: e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
			t.Fatal(err)
		}
		ag.nextPush(2 * time.Second)
	}
	// Acks on the control stream (applied later), as the protocol allows.
	if err := ag.ctrlW.Write(&wire.Ack{SessionID: "perm", Generation: 1, Error: &wire.Error{Code: wire.CodeInvalid, Message: "bad spec", Permanent: true}}); err != nil {
		t.Fatal(err)
	}
	if err := ag.ctrlW.Write(&wire.Ack{SessionID: "retry", Generation: 1, Error: &wire.Error{Code: wire.CodeQuotaExceeded, Message: "full", RetryAfter: 1500 * time.Millisecond}}); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, h.svc(), ctx, "perm", 1)
	if a, _ := h.svc().Assignment(ctx, "perm"); a.AckError == nil || a.AckError.Code != wire.CodeInvalid {
		t.Fatalf("permanent failure not kept: %+v", a)
	}
	eventually(t, 2*time.Second, func() error {
		a, err := h.svc().Assignment(ctx, "retry")
		if err != nil || a.AckError == nil || a.AckedGeneration != 0 {
			return fmt.Errorf("retry assignment %+v %v", a, err)
		}
		return nil
	})
	// Drain retries of the earlier backoff that may already be queued, then expect the
	// retry no sooner than about the requested delay.
	start := time.Now()
	ag.setNoAck(false)
	for {
		p := ag.nextPush(4 * time.Second)
		if got := p.assignments(); len(got) == 1 && got[0].SessionID == "retry" && time.Since(start) > time.Second {
			break
		}
	}
	waitAcked(t, h.svc(), ctx, "retry", 1)
	if a, _ := h.svc().Assignment(ctx, "retry"); a.AckError != nil {
		t.Fatalf("success did not clear the error: %+v", a.AckError)
	}
}
