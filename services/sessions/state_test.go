package sessions

import (
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
)

func TestPhaseGraph(t *testing.T) {
	t.Parallel()
	cases := []struct {
		from, to Phase
		ok       bool
	}{
		{PhasePending, PhaseScheduling, true},
		{PhaseScheduling, PhaseStarting, true},
		{PhaseStarting, PhaseRunning, true},
		{PhaseRunning, PhaseStopping, true},
		{PhaseStopping, PhaseHibernated, true},
		{PhaseHibernated, PhasePending, true},
		{PhaseStopping, PhaseStopped, true},
		{PhaseStarting, PhaseScheduling, true},
		{PhaseRunning, PhaseStarting, true},
		{PhaseFailed, PhaseStopped, true},
		{PhaseRunning, PhaseRunning, true},
		// The edges v1 got wrong: nothing revives a stopped session, and nothing skips
		// straight to Running without being placed and started.
		{PhaseStopped, PhaseRunning, false},
		{PhaseStopped, PhasePending, false},
		{PhasePending, PhaseRunning, false},
		{PhaseScheduling, PhaseRunning, false},
		{PhaseHibernated, PhaseRunning, false},
		{PhaseFailed, PhaseRunning, false},
		{PhaseStopping, PhaseRunning, false},
	}
	for _, tc := range cases {
		if got := Allowed(tc.from, tc.to); got != tc.ok {
			t.Errorf("Allowed(%s, %s) = %v, want %v", tc.from, tc.to, got, tc.ok)
		}
	}
	for _, p := range Phases {
		if _, ok := edges[p]; !ok {
			t.Errorf("phase %s has no row in the graph", p)
		}
	}
}

func sess(desired Desired, phase Phase, placed bool) Session {
	s := Session{ID: "ses_aaaaaaaaaaaaaaaaaaaa", Desired: desired, Phase: phase, Generation: 3, DispatchedGeneration: 3, AssignmentGeneration: 2}
	if placed {
		s.AgentID = "agt_aaaaaaaaaaaaaaaaaaaa"
	}
	return s
}

func TestDecide(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		s      Session
		a      Action
		want   Decision
		errMsg bool // a 409
	}{
		{"hibernate running placed", sess(DesiredRunning, PhaseRunning, true), ActionHibernate,
			Decision{Desired: DesiredHibernated, Phase: PhaseStopping, Reason: ReasonHibernating, Bump: true, Release: true}, false},
		{"hibernate unplaced settles at once", sess(DesiredRunning, PhaseScheduling, false), ActionHibernate,
			Decision{Desired: DesiredHibernated, Phase: PhaseHibernated, Reason: ReasonHibernating, Bump: true, Settled: true, Release: true}, false},
		{"hibernate twice is a no-op", sess(DesiredHibernated, PhaseHibernated, true), ActionHibernate, Decision{Noop: true}, false},
		{"hibernate stopped", sess(DesiredStopped, PhaseStopped, false), ActionHibernate, Decision{}, true},
		{"hibernate failed", sess(DesiredRunning, PhaseFailed, true), ActionHibernate, Decision{}, true},
		{"wake hibernated charges", sess(DesiredHibernated, PhaseHibernated, true), ActionWake,
			Decision{Desired: DesiredRunning, Phase: PhasePending, Reason: ReasonWaking, Bump: true, Charge: true}, false},
		{"wake running is a no-op", sess(DesiredRunning, PhaseRunning, true), ActionWake, Decision{Noop: true}, false},
		{"wake stopped", sess(DesiredStopped, PhaseStopped, false), ActionWake, Decision{}, true},
		{"wake failed", sess(DesiredRunning, PhaseFailed, true), ActionWake, Decision{}, true},
		{"stop running placed", sess(DesiredRunning, PhaseRunning, true), ActionStop,
			Decision{Desired: DesiredStopped, Phase: PhaseStopping, Reason: ReasonStopping, Bump: true, Release: true}, false},
		{"stop hibernated keeps quota released", sess(DesiredHibernated, PhaseHibernated, true), ActionStop,
			Decision{Desired: DesiredStopped, Phase: PhaseStopping, Reason: ReasonStopping, Bump: true}, false},
		{"stop pending unplaced", sess(DesiredRunning, PhasePending, false), ActionStop,
			Decision{Desired: DesiredStopped, Phase: PhaseStopped, Reason: ReasonStopping, Bump: true, Settled: true, Release: true}, false},
		{"stop stopped is a no-op", sess(DesiredStopped, PhaseStopped, false), ActionStop, Decision{Noop: true}, false},
		{"delete placed tells the agent", sess(DesiredRunning, PhaseRunning, true), ActionDelete,
			Decision{Desired: DesiredStopped, Phase: PhaseRunning, Bump: true, Release: true, Delete: true}, false},
		{"delete unplaced", sess(DesiredStopped, PhaseStopped, false), ActionDelete,
			Decision{Desired: DesiredStopped, Phase: PhaseStopped, Settled: true, Delete: true}, false},
		{"fail starting", sess(DesiredRunning, PhaseStarting, true), ActionFail,
			Decision{Desired: DesiredStopped, Phase: PhaseFailed, Reason: ReasonStopping, Bump: true, Release: true}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := Decide(tc.s, tc.a, "", "")
			if tc.errMsg {
				if !apperr.IsCode(err, apperr.Conflict) {
					t.Fatalf("err = %v, want a conflict", err)
				}
				if e, _ := apperr.As(err); len(e.Message) < 30 {
					t.Fatalf("message %q does not explain", e.Message)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tc.want.Action = tc.a
			if got != tc.want {
				t.Fatalf("Decide = %+v\nwant     %+v", got, tc.want)
			}
			if !got.Noop && !Allowed(tc.s.Phase, got.Phase) {
				t.Fatalf("decision moves %s -> %s, off the graph", tc.s.Phase, got.Phase)
			}
		})
	}
}

func TestFold(t *testing.T) {
	t.Parallel()
	ep := &Endpoint{Host: "h", Port: 5900, Protocol: "vnc"}
	agent := "agt_aaaaaaaaaaaaaaaaaaaa"
	at := time.Unix(1000, 0)
	obs := func(phase string, gen int64, e *Endpoint) Observed {
		return Observed{AgentID: agent, Phase: phase, ObservedGeneration: gen, Endpoint: e, ObservedAt: at}
	}
	cases := []struct {
		name    string
		s       Session
		o       Observed
		changed bool
		phase   Phase
		reason  string
	}{
		{"running with endpoint is Running", sess(DesiredRunning, PhaseStarting, true), obs("running", 2, ep), true, PhaseRunning, ""},
		{"running without endpoint is not Running", sess(DesiredRunning, PhaseStarting, true), obs("running", 2, nil), true, PhaseStarting, ReasonEndpointNotReady},
		{"an old generation is not an answer", sess(DesiredRunning, PhaseStarting, true), obs("running", 1, ep), true, PhaseStarting, ReasonWaitingForAgent},
		{"not yet dispatched", func() Session { s := sess(DesiredRunning, PhaseStarting, true); s.Generation = 4; return s }(),
			obs("running", 2, ep), true, PhaseStarting, ReasonWaitingForAgent},
		{"another agent's report is ignored", sess(DesiredRunning, PhaseStarting, true),
			Observed{AgentID: "agt_bbbbbbbbbbbbbbbbbbbb", Phase: "running", ObservedGeneration: 9, Endpoint: ep}, false, "", ""},
		{"unplaced ignores reports", sess(DesiredRunning, PhaseScheduling, false), obs("running", 2, ep), false, "", ""},
		{"agent failure", sess(DesiredRunning, PhaseStarting, true), Observed{AgentID: agent, Phase: "failed", Reason: "ImagePullBackOff", ObservedGeneration: 2}, true, PhaseFailed, "ImagePullBackOff"},
		{"hibernated", sess(DesiredHibernated, PhaseStopping, true), obs("hibernated", 2, nil), true, PhaseHibernated, ""},
		{"hibernating", sess(DesiredHibernated, PhaseStopping, true), obs("hibernating", 2, nil), true, PhaseStopping, ReasonHibernating},
		{"stopped", sess(DesiredStopped, PhaseStopping, true), obs("stopped", 2, nil), true, PhaseStopped, ""},
		{"deleted counts as stopped", sess(DesiredStopped, PhaseStopping, true), obs("deleted", 2, nil), true, PhaseStopped, ""},
		{"a stopped session stays stopped", sess(DesiredStopped, PhaseStopped, true), obs("running", 2, ep), false, "", ""},
		{"a failed session stays failed", sess(DesiredStopped, PhaseFailed, true), obs("stopped", 2, nil), false, "", ""},
		{"same state changes nothing", func() Session { s := sess(DesiredRunning, PhaseRunning, true); s.Endpoint = ep; return s }(),
			obs("running", 2, ep), false, PhaseRunning, ""},
		{"a lost agent's return is a change", func() Session {
			s := sess(DesiredRunning, PhaseRunning, true)
			s.Endpoint, s.AgentLostAt = ep, &at
			return s
		}(), obs("running", 2, ep), true, PhaseRunning, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			out, changed := Fold(tc.s, tc.o)
			if changed != tc.changed {
				t.Fatalf("changed = %v, want %v (%+v)", changed, tc.changed, out)
			}
			if changed && (out.Phase != tc.phase || out.Reason != tc.reason) {
				t.Fatalf("Fold = %s/%s, want %s/%s", out.Phase, out.Reason, tc.phase, tc.reason)
			}
			if out.Phase == PhaseRunning && out.Endpoint == nil {
				t.Fatal("Running without an endpoint")
			}
		})
	}
}

func TestParseChange(t *testing.T) {
	t.Parallel()
	if c, ok := ParseChange("abcdefghijkl:ses_aaaaaaaaaaaaaaaaaaaa:user-1"); !ok || c.Owner != "user-1" || c.Session != "ses_aaaaaaaaaaaaaaaaaaaa" {
		t.Fatalf("ParseChange = %+v, %v", c, ok)
	}
	for _, bad := range []string{"", "x", "abcdefghijkl:ses_x:u", "ABC:ses_aaaaaaaaaaaaaaaaaaaa:u", "abcdefghijkl:ses_aaaaaaaaaaaaaaaaaaaa"} {
		if _, ok := ParseChange(bad); ok {
			t.Errorf("ParseChange(%q) accepted", bad)
		}
	}
}

func TestHubFilters(t *testing.T) {
	t.Parallel()
	h := NewHub()
	member := h.Subscribe("abcdefghijkl", "alice")
	admin := h.Subscribe("abcdefghijkl", "")
	other := h.Subscribe("bcdefghijklm", "")
	defer member.Close()
	defer admin.Close()
	defer other.Close()
	h.Publish(Change{Tenant: "abcdefghijkl", Session: "ses_aaaaaaaaaaaaaaaaaaaa", Owner: "alice"})
	h.Publish(Change{Tenant: "abcdefghijkl", Session: "ses_bbbbbbbbbbbbbbbbbbbb", Owner: "bob"})
	h.Publish(Change{Tenant: "abcdefghijkl", Session: "ses_aaaaaaaaaaaaaaaaaaaa", Owner: "alice"})
	if got, resync := member.Take(); len(got) != 1 || got[0] != "ses_aaaaaaaaaaaaaaaaaaaa" || resync {
		t.Errorf("member got %v (resync %v)", got, resync)
	}
	if got, _ := admin.Take(); len(got) != 2 {
		t.Errorf("admin got %v", got)
	}
	if got, _ := other.Take(); len(got) != 0 {
		t.Errorf("another tenant got %v", got)
	}
	// A resync reaches every subscriber once, whatever its filter.
	for _, s := range []*Subscription{member, admin, other} {
		select {
		case <-s.Ready: // the publishes' wake-up
		default:
		}
	}
	h.Resync()
	for name, s := range map[string]*Subscription{"member": member, "admin": admin, "other": other} {
		select {
		case <-s.Ready:
		default:
			t.Errorf("%s was not woken by the resync", name)
		}
		if got, resync := s.Take(); len(got) != 0 || !resync {
			t.Errorf("%s after a resync: %v, resync %v", name, got, resync)
		}
		if _, resync := s.Take(); resync {
			t.Errorf("%s: the resync was reported twice", name)
		}
	}
}
