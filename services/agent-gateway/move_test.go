package gateway_test

import (
	"fmt"
	"testing"
	"time"

	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

// A session moved between agents held by different replicas is delivered to its new
// agent and stopped on the one it left: the replica holding the old agent's tunnel
// pushes the retirement (desired deleted, at a generation above what that agent applied),
// and the acknowledgement settles it. Nothing but NOTIFY can make this quick, with the
// resync a minute away.
func TestMoveStopsOnTheOldAgent(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2, func(c *gateway.Config) { c.Resync = time.Minute })
	_, ctx := h.tenant("acme")
	eOld := h.enroll(h.gw(), h.token(ctx, "old"))
	eNew := h.enroll(h.gw(), h.token(ctx, "new"))
	old := h.connect(h.replicas[0].gw, eOld)
	nu := h.connect(h.replicas[1].gw, eNew)
	old.nextPush(5 * time.Second) // the empty full sets
	nu.nextPush(5 * time.Second)

	svc := h.svc()
	first, err := svc.Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: eOld.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("desk:1")})
	if err != nil {
		t.Fatal(err)
	}
	if got := old.nextPush(2 * time.Second).assignments(); len(got) != 1 || got[0].Desired != wire.DesiredRunning {
		t.Fatalf("first push %+v", got)
	}
	waitAcked(t, svc, ctx, "ses-1", first.Generation)

	// Without Move the session stays where it is.
	if _, err := svc.Assign(ctx, gateway.AssignmentInput{SessionID: "ses-1", AgentID: eNew.resp.AgentID, Desired: wire.DesiredRunning, Spec: spec("desk:1")}); err == nil {
		t.Fatal("assigning to another agent without move succeeded")
	}
	res, err := h.replicas[1].svc.AssignMany(ctx, []gateway.AssignmentInput{{SessionID: "ses-1", AgentID: eNew.resp.AgentID,
		Desired: wire.DesiredRunning, Spec: spec("desk:1"), Move: true}})
	if err != nil || res[0].Err != nil {
		t.Fatalf("move: %+v %v", res, err)
	}
	moved := res[0].Assignment
	if moved.AgentID != eNew.resp.AgentID || moved.Generation <= first.Generation {
		t.Fatalf("moved %+v", moved)
	}
	gotNew := nu.nextPush(2 * time.Second).assignments()
	if len(gotNew) != 1 || gotNew[0].SessionID != "ses-1" || gotNew[0].Desired != wire.DesiredRunning || gotNew[0].Generation != moved.Generation {
		t.Fatalf("the new agent got %+v", gotNew)
	}
	gotOld := old.nextPush(2 * time.Second).assignments()
	if len(gotOld) != 1 || gotOld[0].SessionID != "ses-1" || gotOld[0].Desired != wire.DesiredDeleted || gotOld[0].Generation <= first.Generation {
		t.Fatalf("the old agent got %+v", gotOld)
	}
	waitAcked(t, svc, ctx, "ses-1", moved.Generation)
	eventually(t, 5*time.Second, func() error {
		list, err := svc.AgentAssignments(ctx, eOld.resp.AgentID)
		if err != nil {
			return err
		}
		if len(list) != 0 {
			return fmt.Errorf("the old agent still has %+v", list)
		}
		return nil
	})

	// Unassign: the new agent is told to delete it too, and nothing is left anywhere.
	if err := svc.Unassign(ctx, "ses-1"); err != nil {
		t.Fatal(err)
	}
	if got := nu.nextPush(2 * time.Second).assignments(); len(got) != 1 || got[0].Desired != wire.DesiredDeleted || got[0].Generation <= moved.Generation {
		t.Fatalf("after unassign the new agent got %+v", got)
	}
	if err := svc.Unassign(ctx, "ses-1"); err != nil {
		t.Fatalf("unassigning again: %v", err)
	}
	select {
	case p := <-old.pushes:
		t.Fatalf("the old agent got an unexpected push %+v", p.assignments())
	case <-time.After(300 * time.Millisecond):
	}
}
