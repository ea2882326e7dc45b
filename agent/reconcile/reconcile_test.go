package reconcile_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/agent/reconcile"
	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/wire"
)

func as(id string, gen int64, d wire.Desired) wire.Assignment {
	return wire.Assignment{SessionID: wire.SessionID(id), TenantID: "t1", Generation: gen, Desired: d}
}

func setup(t *testing.T) (*memory.Backend, *reconcile.Reconciler) {
	t.Helper()
	b := memory.New(memory.Config{})
	t.Cleanup(b.Close)
	r := reconcile.New(b, nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); r.Wait() })
	return b, r
}

func push(t *testing.T, r *reconcile.Reconciler, full bool, set ...wire.Assignment) []wire.Ack {
	t.Helper()
	ds := &wire.DesiredState{Full: full, Assignments: set}
	if full {
		ds.Checksum = wire.Checksum(set)
	}
	acks, err := r.Push(context.Background(), ds)
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	return acks
}

func gens(acks []wire.Ack) map[wire.SessionID]int64 {
	m := map[wire.SessionID]int64{}
	for _, a := range acks {
		if a.Error != nil {
			m[a.SessionID] = -1
			continue
		}
		m[a.SessionID] = a.Generation
	}
	return m
}

// waitPhase waits for the reconciler to report phase for id. The timeout only keeps a
// broken build from hanging; nothing is asserted about how long it took.
func waitPhase(t *testing.T, r *reconcile.Reconciler, id wire.SessionID, phase wire.Phase) wire.SessionStatus {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		for _, st := range r.TakeChanges() {
			if st.SessionID == id && st.Phase == phase {
				return st
			}
		}
		select {
		case <-r.Changed():
		case <-deadline:
			t.Fatalf("session %s never reached %s", id, phase)
		}
	}
}

func TestPushAppliesAndReportsPhases(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	acks := push(t, r, false, as("s1", 3, wire.DesiredRunning))
	if g := gens(acks); g["s1"] != 3 || len(g) != 1 {
		t.Fatalf("acks = %+v", acks)
	}
	st := waitPhase(t, r, "s1", wire.PhaseRunning)
	if st.ObservedGeneration != 3 || st.Endpoint == nil {
		t.Fatalf("running status = %+v", st)
	}
	if n := b.ApplyCalls("s1"); n != 1 {
		t.Fatalf("apply calls = %d", n)
	}
}

func TestGenerations(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		second    wire.Assignment
		wantAck   int64
		wantCalls int
		wantGen   int64 // generation in the applied set afterwards
	}{
		{"duplicate is acked without applying", as("s1", 5, wire.DesiredRunning), 5, 1, 5},
		{"older is acked with the applied generation", as("s1", 4, wire.DesiredStopped), 5, 1, 5},
		{"newer is applied", as("s1", 6, wire.DesiredStopped), 6, 2, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b, r := setup(t)
			push(t, r, false, as("s1", 5, wire.DesiredRunning))
			acks := push(t, r, false, tt.second)
			if g := gens(acks)["s1"]; g != tt.wantAck {
				t.Fatalf("ack generation = %d, want %d", g, tt.wantAck)
			}
			if n := b.ApplyCalls("s1"); n != tt.wantCalls {
				t.Fatalf("apply calls = %d, want %d", n, tt.wantCalls)
			}
			if a := r.Applied(); len(a) != 1 || a[0].Generation != tt.wantGen {
				t.Fatalf("applied = %+v", a)
			}
		})
	}
}

func TestDuplicateWithinOnePushTakesNewest(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	acks := push(t, r, false, as("s1", 2, wire.DesiredRunning), as("s1", 7, wire.DesiredRunning), as("s1", 1, wire.DesiredRunning))
	if len(acks) != 1 || acks[0].Generation != 7 {
		t.Fatalf("acks = %+v", acks)
	}
	if n := b.ApplyCalls("s1"); n != 1 {
		t.Fatalf("apply calls = %d", n)
	}
}

func TestFullSetRemovesOrphansAndKeepsOthers(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	push(t, r, false, as("keep", 1, wire.DesiredRunning), as("dropped", 1, wire.DesiredRunning))
	// Left behind by an earlier install: never pushed, still owned by this agent.
	b.Seed(wire.SessionStatus{SessionID: "leftover", Phase: wire.PhaseRunning, ObservedGeneration: 9})

	acks := push(t, r, true, as("keep", 1, wire.DesiredRunning), as("new", 1, wire.DesiredRunning))
	if g := gens(acks); g["keep"] != 1 || g["new"] != 1 || len(g) != 2 {
		t.Fatalf("acks = %+v", acks)
	}
	removed := b.Removed()
	slices.Sort(removed)
	if !slices.Equal(removed, []wire.SessionID{"dropped", "leftover"}) {
		t.Fatalf("removed = %v", removed)
	}
	if n := b.ApplyCalls("keep"); n != 1 {
		t.Fatalf("kept session re-applied: %d calls", n)
	}
	want := []wire.Assignment{as("keep", 1, wire.DesiredRunning), as("new", 1, wire.DesiredRunning)}
	if got := r.Applied(); !slices.EqualFunc(got, want, func(a, b wire.Assignment) bool {
		return a.SessionID == b.SessionID && a.Generation == b.Generation
	}) {
		t.Fatalf("applied = %+v", got)
	}
	if r.Checksum() != wire.Checksum(want) {
		t.Fatal("checksum of the applied set differs from the pushed set's")
	}
	waitPhase(t, r, "leftover", wire.PhaseDeleted)
}

func TestFullSetReappliesLostSession(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	push(t, r, true, as("s1", 4, wire.DesiredRunning))
	b.Lose("s1")
	push(t, r, true, as("s1", 4, wire.DesiredRunning))
	if n := b.ApplyCalls("s1"); n != 2 {
		t.Fatalf("apply calls = %d, want a re-apply of the lost session", n)
	}
	if _, ok := b.Status("s1"); !ok {
		t.Fatal("lost session not recreated")
	}
}

func TestReconcileAppliedRepairsWithoutPush(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	push(t, r, true, as("s1", 1, wire.DesiredRunning))
	b.Lose("s1")
	b.Seed(wire.SessionStatus{SessionID: "orphan", Phase: wire.PhaseRunning})
	if err := r.ReconcileApplied(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Status("s1"); !ok {
		t.Fatal("lost session not recreated")
	}
	if got := b.Removed(); !slices.Equal(got, []wire.SessionID{"orphan"}) {
		t.Fatalf("removed = %v", got)
	}
}

func TestBadChecksumChangesNothing(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	push(t, r, false, as("s1", 1, wire.DesiredRunning))
	_, err := r.Push(context.Background(), &wire.DesiredState{
		Full: true, Checksum: wire.Checksum(nil), Assignments: []wire.Assignment{as("s2", 1, wire.DesiredRunning)},
	})
	if retry, _ := wire.Retryable(err); !errors.Is(err, reconcile.ErrChecksum) || !retry {
		t.Fatalf("err = %v, want retryable ErrChecksum", err)
	}
	if len(b.Removed()) != 0 || b.ApplyCalls("s2") != 0 {
		t.Fatal("a set failing its checksum changed the backend")
	}
}

func TestApplyFailureIsAckedWithPolicyAndRetried(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	b.FailApply("bad", apperr.New(apperr.Invalid, "image name is not valid"), 0)
	b.FailApply("flaky", apperr.New(apperr.Unavailable, "api server unreachable"), 1)
	acks := push(t, r, false, as("bad", 1, wire.DesiredRunning), as("flaky", 1, wire.DesiredRunning))
	if acks[0].Error == nil || !acks[0].Error.Permanent {
		t.Fatalf("bad ack = %+v, want a permanent error", acks[0])
	}
	if acks[1].Error == nil || acks[1].Error.Permanent {
		t.Fatalf("flaky ack = %+v, want a retryable error", acks[1])
	}
	// The gateway re-pushes what was not acknowledged: the flaky one now succeeds, because
	// a failed apply is not recorded as applied.
	acks = push(t, r, false, as("flaky", 1, wire.DesiredRunning))
	if acks[0].Error != nil {
		t.Fatalf("retry ack = %+v", acks[0])
	}
	waitPhase(t, r, "flaky", wire.PhaseRunning)
}

func TestStartFailureIsReported(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	b.FailStart("s1", "ImagePullBackOff")
	push(t, r, false, as("s1", 1, wire.DesiredRunning))
	st := waitPhase(t, r, "s1", wire.PhaseFailed)
	if st.Reason != "ImagePullBackOff" {
		t.Fatalf("status = %+v", st)
	}
}

func TestDeletedSessionGoesAwayAndStaysAcked(t *testing.T) {
	t.Parallel()
	b, r := setup(t)
	push(t, r, false, as("s1", 1, wire.DesiredRunning))
	push(t, r, false, as("s1", 2, wire.DesiredDeleted))
	waitPhase(t, r, "s1", wire.PhaseDeleted)
	if _, ok := b.Status("s1"); ok {
		t.Fatal("deleted session still present")
	}
	// A re-delivered delete, even inside a full set, neither re-applies nor counts as lost.
	acks := push(t, r, true, as("s1", 2, wire.DesiredDeleted))
	if acks[0].Generation != 2 || acks[0].Error != nil || b.ApplyCalls("s1") != 2 {
		t.Fatalf("acks = %+v, calls = %d", acks, b.ApplyCalls("s1"))
	}
}

func TestFullStatusDropsCoveredChanges(t *testing.T) {
	t.Parallel()
	_, r := setup(t)
	push(t, r, false, as("s1", 1, wire.DesiredRunning))
	// Let the changes pile up, as they do while disconnected.
	deadline := time.After(10 * time.Second)
	for {
		full, err := r.FullStatus(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(full) == 1 && full[0].Phase == wire.PhaseRunning {
			break
		}
		select {
		case <-deadline:
			t.Fatal("never running")
		case <-r.Changed():
		}
	}
	// Everything before the running snapshot is covered by it; nothing older may follow.
	for _, st := range r.TakeChanges() {
		if st.Phase != wire.PhaseRunning {
			t.Fatalf("stale change %+v left after full status", st)
		}
	}
}
