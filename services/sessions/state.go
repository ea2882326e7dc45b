package sessions

import (
	"fmt"
	"time"

	"streamspace.dev/libs/apperr"
)

// edges is the phase graph: from each phase, the phases a session may move to. Every
// phase change — from a user's action, the scheduler, a timer or an agent's report — goes
// through Allowed, so a late or confused report can never, say, revive a Stopped session.
var edges = map[Phase][]Phase{
	PhasePending:    {PhaseScheduling, PhaseStarting, PhaseHibernated, PhaseStopping, PhaseStopped, PhaseFailed},
	PhaseScheduling: {PhasePending, PhaseStarting, PhaseHibernated, PhaseStopping, PhaseStopped, PhaseFailed},
	// Starting may fall back to Scheduling when its agent is lost before it ran.
	PhaseStarting: {PhasePending, PhaseScheduling, PhaseRunning, PhaseHibernated, PhaseStopping, PhaseStopped, PhaseFailed},
	// Running may fall back to Starting when the agent restarts the pod.
	PhaseRunning:    {PhaseStarting, PhaseStopping, PhaseHibernated, PhaseStopped, PhaseFailed},
	PhaseHibernated: {PhasePending, PhaseStopping, PhaseStopped, PhaseFailed},
	// Stopping towards Hibernated may be interrupted by a wake (Pending).
	PhaseStopping: {PhasePending, PhaseHibernated, PhaseStopped, PhaseFailed},
	PhaseStopped:  {},
	PhaseFailed:   {PhaseStopping, PhaseStopped},
}

// Allowed reports whether a session may move from phase from to phase to. Staying in a
// phase (with a new reason) is always allowed.
func Allowed(from, to Phase) bool {
	if from == to {
		return true
	}
	for _, p := range edges[from] {
		if p == to {
			return true
		}
	}
	return false
}

// Action is something asked of a session: by its user, or by the control plane's timers.
type Action string

// The actions.
const (
	ActionHibernate Action = "hibernate"
	ActionWake      Action = "wake"
	ActionStop      Action = "stop"
	ActionDelete    Action = "delete"
	// ActionFail marks a session that made no progress Failed and releases what it held.
	ActionFail Action = "fail"
)

// Decision is what an action does to a session. The store applies it in one transaction.
type Decision struct {
	// Noop: the session is already where the action would take it; nothing changes.
	Noop bool
	// Desired is the new desired state.
	Desired Desired
	// Phase, Reason and Message are the new phase.
	Phase   Phase
	Reason  string
	Message string
	// Bump increments the generation: the agent has something new to apply.
	Bump bool
	// Settled: nothing needs to reach an agent (the session was never placed), so the
	// new generation counts as dispatched at once.
	Settled bool
	// Charge takes the session's requests from the quotas; Release gives them back.
	Charge, Release bool
	// Delete hides the session from every view.
	Delete bool
	// Action is the action decided, for the audit log.
	Action Action
}

// conflict builds the 409 of an illegal action, naming the state and the way out.
func conflict(s Session, a Action, hint string) error {
	return apperr.New(apperr.Conflict, "cannot %s session %s: it is %s (desired %s); %s", a, s.ID, s.Phase, s.Desired, hint)
}

// Decide says what action a does to session s, or why it may not. It is pure: the store
// calls it with the row locked and applies the result.
func Decide(s Session, a Action, reason, message string) (Decision, error) {
	d, err := decide(s, a, reason, message)
	d.Action = a
	return d, err
}

func decide(s Session, a Action, reason, message string) (Decision, error) {
	running := s.Desired == DesiredRunning
	switch a {
	case ActionHibernate:
		switch {
		case s.Desired == DesiredHibernated:
			return Decision{Noop: true}, nil
		case s.Desired == DesiredStopped:
			return Decision{}, conflict(s, a, "a stopped session cannot be hibernated")
		case s.Phase == PhaseFailed:
			return Decision{}, conflict(s, a, "a failed session can only be stopped or deleted")
		}
		d := Decision{Desired: DesiredHibernated, Bump: true, Release: running, Reason: orDefault(reason, ReasonHibernating), Message: message}
		if s.Placed() {
			d.Phase = PhaseStopping
		} else {
			d.Phase, d.Settled = PhaseHibernated, true
		}
		return d, nil
	case ActionWake:
		switch {
		case s.Desired == DesiredRunning && s.Phase == PhaseFailed:
			return Decision{}, conflict(s, a, "a failed session cannot be woken; delete it and create a new one")
		case s.Desired == DesiredRunning:
			return Decision{Noop: true}, nil
		case s.Desired == DesiredStopped:
			return Decision{}, conflict(s, a, "a stopped session cannot be woken; create a new one")
		}
		return Decision{Desired: DesiredRunning, Bump: true, Charge: true, Phase: PhasePending,
			Reason: orDefault(reason, ReasonWaking), Message: message}, nil
	case ActionStop, ActionFail:
		if s.Desired == DesiredStopped && (a == ActionStop || s.Phase == PhaseFailed) {
			return Decision{Noop: true}, nil
		}
		d := Decision{Desired: DesiredStopped, Bump: true, Release: running, Reason: orDefault(reason, ReasonStopping), Message: message}
		switch {
		case a == ActionFail:
			// A failed session keeps its phase so its owner sees why; the agent is still
			// told to stop, so nothing keeps running (or holding quota) behind it.
			d.Phase = PhaseFailed
			d.Settled = !s.Placed()
		case s.Placed():
			d.Phase = PhaseStopping
		default:
			d.Phase, d.Settled = PhaseStopped, true
		}
		return d, nil
	case ActionDelete:
		// Deleting works from every state: it is the way out of all of them. A placed
		// session's agent still has to be told (the bump); the row stays until then.
		return Decision{Desired: DesiredStopped, Bump: s.Placed(), Settled: !s.Placed(), Release: running, Delete: true,
			Phase: s.Phase, Reason: s.Reason, Message: s.Message}, nil
	}
	return Decision{}, fmt.Errorf("sessions: unknown action %q", a)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Observed is an agent's latest report about a session, as the gateway stored it.
type Observed struct {
	AgentID            string
	Phase              string // the agent protocol's phase: pending, starting, running, …
	Reason, Message    string
	ObservedGeneration int64
	Endpoint           *Endpoint
	ObservedAt         time.Time
}

// Agent-protocol phases (wire.Phase values), spelled here so that this package needs no
// protocol import.
const (
	agentPending     = "pending"
	agentStarting    = "starting"
	agentRunning     = "running"
	agentHibernating = "hibernating"
	agentHibernated  = "hibernated"
	agentStopping    = "stopping"
	agentStopped     = "stopped"
	agentFailed      = "failed"
	agentDeleted     = "deleted"
)

// Outcome is what folding a report into a session concludes.
type Outcome struct {
	Phase   Phase
	Reason  string
	Message string
	// Endpoint is the stream endpoint when Running, nil otherwise.
	Endpoint *Endpoint
}

// Fold concludes a session's phase from its agent's report. It returns false when the
// report changes nothing or must be ignored: it comes from an agent the session is not
// placed on, or would move the session along an edge the phase graph does not have.
//
// The agent's report counts as an answer to the session's current wish only when the
// scheduler has written that wish (dispatched generation) and the agent has applied it
// (observed generation); until then the session is still on its way (Starting or
// Stopping). Running needs the agent's running phase and a stream endpoint: the agent
// reports running only when the pod is Ready and the endpoint answers, and a report
// without an endpoint is not trusted as Running.
func Fold(s Session, o Observed) (Outcome, bool) {
	if !s.Placed() || o.AgentID != s.AgentID {
		return Outcome{}, false
	}
	current := s.DispatchedGeneration >= s.Generation && o.ObservedGeneration >= s.AssignmentGeneration && s.AssignmentGeneration > 0
	var out Outcome
	switch s.Desired {
	case DesiredRunning:
		switch {
		case !current:
			out = Outcome{Phase: PhaseStarting, Reason: ReasonWaitingForAgent, Message: "the agent has not applied the latest change yet"}
		case o.Phase == agentRunning && o.Endpoint != nil && o.Endpoint.Host != "" && o.Endpoint.Port > 0:
			out = Outcome{Phase: PhaseRunning, Endpoint: o.Endpoint}
		case o.Phase == agentRunning:
			out = Outcome{Phase: PhaseStarting, Reason: ReasonEndpointNotReady, Message: "the agent reports the session running but no stream endpoint yet"}
		case o.Phase == agentFailed:
			out = Outcome{Phase: PhaseFailed, Reason: orDefault(o.Reason, ReasonAgentFailed), Message: o.Message}
		default:
			out = Outcome{Phase: PhaseStarting, Reason: o.Reason, Message: o.Message}
		}
	case DesiredHibernated:
		switch {
		case current && o.Phase == agentHibernated:
			out = Outcome{Phase: PhaseHibernated}
		case current && o.Phase == agentFailed:
			out = Outcome{Phase: PhaseFailed, Reason: orDefault(o.Reason, ReasonAgentFailed), Message: o.Message}
		default:
			out = Outcome{Phase: PhaseStopping, Reason: ReasonHibernating}
		}
	case DesiredStopped:
		switch {
		case s.Phase == PhaseFailed:
			// A failed session stays Failed while its agent tears it down: the reason is
			// what its owner needs to see.
			return Outcome{}, false
		case current && (o.Phase == agentStopped || o.Phase == agentDeleted):
			out = Outcome{Phase: PhaseStopped, Reason: s.Reason, Message: s.Message}
		default:
			out = Outcome{Phase: PhaseStopping, Reason: ReasonStopping}
		}
	}
	if !Allowed(s.Phase, out.Phase) {
		return Outcome{}, false
	}
	// A report from a lost agent means it is back: the change clears the lost marker even
	// when the phase stays.
	if s.AgentLostAt == nil && out.Phase == s.Phase && out.Reason == s.Reason && out.Message == s.Message && endpointEqual(out.Endpoint, s.Endpoint) {
		return out, false
	}
	return out, true
}

func endpointEqual(a, b *Endpoint) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}
