// Package memory is an in-process agent.Backend for tests and for running the agent
// without a cluster. Sessions only exist in a map, but they move through the phases a
// real backend reports (pending → starting → running, stopping → stopped, hibernating →
// hibernated) after configurable delays, and failures can be injected per session, so
// the reconcile loop and the tunnel can be exercised end to end.
//
// Session traffic is real: a running session listens on a loopback TCP port of its own
// (stream.go) that greets like an RFB server and echoes what it receives, so tests push
// real bytes through the gateway, the QUIC tunnel and the agent.
package memory

import (
	"context"
	"maps"
	"net"
	"slices"
	"sync"
	"time"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backend/feed"
	"streamspace.dev/libs/wire"
)

// Config tunes the simulation. The zero value moves sessions through every phase at
// once (still asynchronously, as a real backend would).
type Config struct {
	// StartDelay is the time spent in pending before starting; RunDelay the time in
	// starting before running; StopDelay the time in stopping or hibernating.
	StartDelay, RunDelay, StopDelay time.Duration
	// Allocatable is the capacity reported with nothing running; the used fields are
	// computed from the sessions.
	Allocatable wire.Capacity
	// PerSessionCPUMillis and PerSessionMemoryBytes are what each running or starting
	// session counts against Allocatable.
	PerSessionCPUMillis, PerSessionMemoryBytes int64
	// Info is returned by Info.
	Info agent.Info
	// Now stamps statuses; time.Now when nil.
	Now func() time.Time
}

// Backend is the in-memory backend. Create it with New.
type Backend struct {
	cfg Config

	mu          sync.Mutex
	sessions    map[wire.SessionID]*session
	applyCalls  map[wire.SessionID]int
	removed     []wire.SessionID
	failApply   map[wire.SessionID]*injected
	failStart   map[wire.SessionID]string
	watchers    feed.Feed
	timers      map[*time.Timer]struct{}
	closed      bool
	unavailable error
	failDial    map[wire.SessionID]error
}

type session struct {
	status wire.SessionStatus
	a      wire.Assignment
	// epoch invalidates pending timers when the session is re-applied or removed.
	epoch int
	// ln is the session's stream listener while it runs.
	ln net.Listener
}

type injected struct {
	err   error
	times int
}

var _ agent.Backend = (*Backend)(nil)

// New returns an empty backend.
func New(cfg Config) *Backend {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Backend{
		cfg:        cfg,
		sessions:   map[wire.SessionID]*session{},
		applyCalls: map[wire.SessionID]int{},
		failApply:  map[wire.SessionID]*injected{},
		failStart:  map[wire.SessionID]string{},
		failDial:   map[wire.SessionID]error{},
		timers:     map[*time.Timer]struct{}{},
	}
}

// Close stops pending phase transitions. Statuses stay readable.
func (b *Backend) Close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for t := range b.timers {
		t.Stop()
	}
	clear(b.timers)
	for _, s := range b.sessions {
		s.stopListening()
	}
}

// FailApply makes the next n Apply calls for id fail with err (n ≤ 0: until cleared
// with FailApply(id, nil, 0)).
func (b *Backend) FailApply(id wire.SessionID, err error, n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		delete(b.failApply, id)
		return
	}
	b.failApply[id] = &injected{err: err, times: n}
}

// FailStart makes session id end in PhaseFailed with reason instead of running, as a
// pod stuck in ImagePullBackOff would. An empty reason clears it.
func (b *Backend) FailStart(id wire.SessionID, reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if reason == "" {
		delete(b.failStart, id)
		return
	}
	b.failStart[id] = reason
}

// SetUnavailable makes every method fail with err, as an unreachable API server would;
// nil restores service.
func (b *Backend) SetUnavailable(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unavailable = err
}

// Seed adds a session the control plane never asked for, as if left behind by an
// earlier install: an orphan for the reconcile loop to find.
func (b *Backend) Seed(st wire.SessionStatus) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sessions[st.SessionID] = &session{status: st, a: wire.Assignment{SessionID: st.SessionID, Generation: st.ObservedGeneration}}
}

// Lose deletes a session behind the agent's back, as a cluster admin deleting its
// Deployment would, without reporting it; a full reconcile must notice and recreate it.
func (b *Backend) Lose(id wire.SessionID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s, ok := b.sessions[id]; ok {
		s.epoch++
		s.stopListening()
		delete(b.sessions, id)
	}
}

// ApplyCalls returns how many times Apply was asked to apply session id.
func (b *Backend) ApplyCalls(id wire.SessionID) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.applyCalls[id]
}

// Removed returns the sessions removed through Remove, in order.
func (b *Backend) Removed() []wire.SessionID {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.removed)
}

// Status returns one session's status.
func (b *Backend) Status(id wire.SessionID) (wire.SessionStatus, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	s, ok := b.sessions[id]
	if !ok {
		return wire.SessionStatus{}, false
	}
	return s.status, true
}

// Apply implements agent.Backend.
func (b *Backend) Apply(ctx context.Context, set []wire.Assignment) []error {
	b.mu.Lock()
	defer b.mu.Unlock()
	var errs []error
	fail := func(i int, err error) {
		if errs == nil {
			errs = make([]error, len(set))
		}
		errs[i] = err
	}
	for i, a := range set {
		if err := ctx.Err(); err != nil {
			fail(i, err)
			continue
		}
		b.applyCalls[a.SessionID]++
		if b.unavailable != nil {
			fail(i, b.unavailable)
			continue
		}
		if inj := b.failApply[a.SessionID]; inj != nil {
			fail(i, inj.err)
			if inj.times > 0 {
				if inj.times--; inj.times == 0 {
					delete(b.failApply, a.SessionID)
				}
			}
			continue
		}
		b.applyLocked(a)
	}
	return errs
}

func (b *Backend) applyLocked(a wire.Assignment) {
	s, exists := b.sessions[a.SessionID]
	if exists && s.a.Generation == a.Generation && s.a.Desired == a.Desired {
		return // idempotent: nothing changed
	}
	if a.Desired == wire.DesiredDeleted {
		if exists {
			b.deleteLocked(s)
		}
		return
	}
	if !exists {
		s = &session{status: wire.SessionStatus{SessionID: a.SessionID}}
		b.sessions[a.SessionID] = s
	}
	prev := s.a.Desired
	s.a = a
	s.epoch++
	s.status.ObservedGeneration = a.Generation
	switch a.Desired {
	case wire.DesiredRunning:
		if exists && prev == wire.DesiredRunning && s.status.Phase != wire.PhaseFailed {
			// A new generation of a running session: a real backend rolls it; here the
			// phase stays and only the observed generation moves.
			b.emitLocked(s, s.status.Phase, s.status.Reason)
			return
		}
		b.emitLocked(s, wire.PhasePending, "")
		b.after(s, b.cfg.StartDelay, func() {
			b.emitLocked(s, wire.PhaseStarting, "")
			b.after(s, b.cfg.RunDelay, func() {
				if reason, ok := b.failStart[a.SessionID]; ok {
					b.emitLocked(s, wire.PhaseFailed, reason)
					return
				}
				b.emitLocked(s, wire.PhaseRunning, "")
			})
		})
	case wire.DesiredStopped:
		b.emitLocked(s, wire.PhaseStopping, "")
		b.after(s, b.cfg.StopDelay, func() { b.emitLocked(s, wire.PhaseStopped, "") })
	case wire.DesiredHibernated:
		b.emitLocked(s, wire.PhaseHibernating, "")
		b.after(s, b.cfg.StopDelay, func() { b.emitLocked(s, wire.PhaseHibernated, "") })
	}
}

// after runs fn under the lock after d, unless the session changed meanwhile.
func (b *Backend) after(s *session, d time.Duration, fn func()) {
	if b.closed {
		return
	}
	epoch := s.epoch
	var t *time.Timer
	t = time.AfterFunc(d, func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		delete(b.timers, t)
		if b.closed || s.epoch != epoch || b.sessions[s.status.SessionID] != s {
			return
		}
		fn()
	})
	b.timers[t] = struct{}{}
}

func (b *Backend) deleteLocked(s *session) {
	s.epoch++
	s.stopListening()
	delete(b.sessions, s.status.SessionID)
	b.emitLocked(s, wire.PhaseDeleted, "")
}

func (b *Backend) emitLocked(s *session, phase wire.Phase, reason string) {
	now := b.cfg.Now().UTC()
	if s.status.Phase != phase || s.status.LastTransition.IsZero() {
		s.status.LastTransition = now
	}
	s.status.Phase, s.status.Reason, s.status.ObservedAt = phase, reason, now
	s.status.Endpoint = nil
	if phase == wire.PhaseRunning {
		s.status.Endpoint = &wire.Endpoint{Host: string(s.status.SessionID) + ".memory.invalid", Port: StreamPort, Protocol: "vnc"}
		if !b.closed {
			s.listen()
		}
	} else {
		s.stopListening()
	}
	b.watchers.Publish(s.status)
}

// Remove implements agent.Backend.
func (b *Backend) Remove(_ context.Context, id wire.SessionID) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unavailable != nil {
		return b.unavailable
	}
	b.removed = append(b.removed, id)
	if s, ok := b.sessions[id]; ok {
		b.deleteLocked(s)
	}
	return nil
}

// Observe implements agent.Backend.
func (b *Backend) Observe(context.Context) ([]wire.SessionStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unavailable != nil {
		return nil, b.unavailable
	}
	out := make([]wire.SessionStatus, 0, len(b.sessions))
	for _, id := range slices.Sorted(maps.Keys(b.sessions)) {
		out = append(out, b.sessions[id].status)
	}
	return out, nil
}

// Capacity implements agent.Backend.
func (b *Backend) Capacity(context.Context) (wire.Capacity, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unavailable != nil {
		return wire.Capacity{}, b.unavailable
	}
	c := b.cfg.Allocatable
	for _, s := range b.sessions {
		switch s.status.Phase {
		case wire.PhasePending, wire.PhaseStarting, wire.PhaseRunning:
			c.Sessions++
			c.CPUUsedMillis += b.cfg.PerSessionCPUMillis
			c.MemoryUsedBytes += b.cfg.PerSessionMemoryBytes
		}
	}
	return c, nil
}

// Info implements agent.Backend.
func (b *Backend) Info(context.Context) (agent.Info, error) {
	info := b.cfg.Info
	if info.Cluster == nil {
		info.Cluster = map[string]string{"platform": "memory"}
	}
	return info, nil
}

// Watch implements agent.Backend.
func (b *Backend) Watch(ctx context.Context) (<-chan wire.SessionStatus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.unavailable != nil {
		return nil, b.unavailable
	}
	// Subscribing under the lock: no status published after this call is missed.
	return b.watchers.Subscribe(ctx, nil), nil
}
