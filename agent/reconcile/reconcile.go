// Package reconcile is the loop between the gateway's desired state and an agent.Backend.
//
// The control plane is the source of truth, so the loop keeps no opinion of its own: it
// remembers, per session, the highest generation the backend accepted, applies what is
// newer, acknowledges every assignment it is given (duplicates included: delivery is
// at-least-once and an unacknowledged assignment is re-pushed), removes what a full set no
// longer names, and forwards the backend's status changes, coalesced per session, for
// the tunnel to report whenever it is connected. Nothing here knows about QUIC.
package reconcile

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"streamspace.dev/agent"
	"streamspace.dev/agent/backoff"
	"streamspace.dev/libs/wire"
)

// Reconciler applies desired state to a Backend and collects its status changes. Create
// it with New and Start it for as long as the agent lives; Push and the status methods are
// safe for concurrent use.
type Reconciler struct {
	backend agent.Backend
	log     *slog.Logger

	// applyMu serialises pushes, so that two desired-state streams arriving together
	// compare generations against a consistent record.
	applyMu sync.Mutex

	mu sync.Mutex
	// applied holds, per session, the assignment with the highest generation the backend
	// accepted. Its checksum is compared with the gateway's after a reconnect.
	applied map[wire.SessionID]wire.Assignment
	// pending holds the latest unreported status per session.
	pending map[wire.SessionID]wire.SessionStatus
	changed chan struct{}
	done    chan struct{}
}

// New returns a Reconciler for backend, logging to log (slog.Default() when nil).
func New(backend agent.Backend, log *slog.Logger) *Reconciler {
	if log == nil {
		log = slog.Default()
	}
	return &Reconciler{
		backend: backend,
		log:     log,
		applied: map[wire.SessionID]wire.Assignment{},
		pending: map[wire.SessionID]wire.SessionStatus{},
		changed: make(chan struct{}, 1),
	}
}

// Start establishes the backend watch, returning its error if the first attempt fails,
// and then follows status changes in the background until ctx is done, re-establishing
// the watch with backoff whenever the backend breaks it. Wait blocks until it has
// stopped. Establishing the first watch before returning means that no status change
// caused by a later Push can be missed.
func (r *Reconciler) Start(ctx context.Context) error {
	ch, err := r.backend.Watch(ctx)
	if err != nil {
		return fmt.Errorf("watching backend: %w", err)
	}
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.follow(ctx, ch)
	}()
	return nil
}

// Wait blocks until the loop started by Start has stopped.
func (r *Reconciler) Wait() {
	if r.done != nil {
		<-r.done
	}
}

func (r *Reconciler) follow(ctx context.Context, ch <-chan wire.SessionStatus) {
	bo := backoff.New(backoff.Policy{Initial: 100 * time.Millisecond, Max: 10 * time.Second}, nil)
	for {
		for st := range ch {
			r.record(st)
			bo.Reset()
		}
		for {
			if ctx.Err() != nil {
				return
			}
			d := bo.Next()
			r.log.Warn("backend watch broke; re-establishing", "delay", d)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			var err error
			if ch, err = r.backend.Watch(ctx); err != nil {
				r.log.Warn("re-establishing backend watch failed", "err", err)
				continue
			}
			// Changes during the gap are lost; report everything as changed.
			if snap, err := r.backend.Observe(ctx); err == nil {
				for _, st := range snap {
					r.record(st)
				}
			}
			break
		}
	}
}

func (r *Reconciler) record(st wire.SessionStatus) {
	r.mu.Lock()
	r.pending[st.SessionID] = st
	r.mu.Unlock()
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Changed receives a value whenever statuses are waiting in TakeChanges. One value may
// stand for many changes.
func (r *Reconciler) Changed() <-chan struct{} { return r.changed }

// TakeChanges returns and forgets the statuses changed since the last call (the latest
// per session, ordered by session id). While the agent is disconnected they accumulate
// here, coalesced, so that no change is lost and none is reported twice.
func (r *Reconciler) TakeChanges() []wire.SessionStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.pending) == 0 {
		return nil
	}
	out := make([]wire.SessionStatus, 0, len(r.pending))
	for _, id := range slices.Sorted(maps.Keys(r.pending)) {
		out = append(out, r.pending[id])
	}
	clear(r.pending)
	return out
}

// FullStatus returns every session the backend owns, for the full status report sent
// after each connect. Pending changes that the snapshot already covers are dropped, so a
// delta sent after the full report never moves a session back to an older phase; newer
// ones stay for the next TakeChanges.
func (r *Reconciler) FullStatus(ctx context.Context) ([]wire.SessionStatus, error) {
	snap, err := r.backend.Observe(ctx)
	if err != nil {
		return nil, fmt.Errorf("observing backend: %w", err)
	}
	byID := make(map[wire.SessionID]wire.SessionStatus, len(snap))
	for _, st := range snap {
		byID[st.SessionID] = st
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for id, p := range r.pending {
		s, ok := byID[id]
		switch {
		case ok && !s.ObservedAt.Before(p.ObservedAt):
			delete(r.pending, id)
		case !ok && p.Phase == wire.PhaseDeleted:
			// Gone in the snapshot too; the full report already says so by omission.
			delete(r.pending, id)
		}
	}
	return snap, nil
}

// Checksum returns wire.Checksum of the applied set, to compare with HelloAck's
// DesiredChecksum.
func (r *Reconciler) Checksum() string {
	return wire.Checksum(r.Applied())
}

// Applied returns the applied set, ordered by session id.
func (r *Reconciler) Applied() []wire.Assignment {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]wire.Assignment, 0, len(r.applied))
	for _, id := range slices.Sorted(maps.Keys(r.applied)) {
		out = append(out, r.applied[id])
	}
	return out
}

// ErrChecksum is the code-carrying error Push returns when a full set does not match its
// checksum. It is retryable: the gateway re-pushes unacknowledged work, and a second
// transfer of the same set will most likely arrive intact.
var ErrChecksum = &wire.Error{Code: wire.CodeProtocol, Message: "full desired set does not match its checksum"}

// Push applies one complete desired-state push (all parts of a full set joined) and
// returns one Ack per session named in it, in order of first appearance.
//
// An assignment older than what was applied is acknowledged with the applied (higher)
// generation, and one equal to it is acknowledged without touching the backend, so
// duplicates and reordered pushes are harmless. A full set also removes every session the
// backend owns that the set does not name, and re-applies sessions the set names that the
// backend has lost. A full set whose checksum is set and wrong changes nothing and fails
// with ErrChecksum.
func (r *Reconciler) Push(ctx context.Context, ds *wire.DesiredState) ([]wire.Ack, error) {
	if ds.Full && ds.Checksum != "" {
		if got := wire.Checksum(ds.Assignments); got != ds.Checksum {
			r.log.WarnContext(ctx, "full desired set fails its checksum; keeping current state", "got", got, "want", ds.Checksum)
			return nil, ErrChecksum
		}
	}
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	return r.apply(ctx, dedupe(ds.Assignments), ds.Full)
}

// ReconcileApplied repairs the backend against the applied set without a push: it
// re-applies sessions the backend has lost and removes orphans. The tunnel calls it after
// a reconnect when the gateway's checksum equals Checksum, because the gateway then sends
// no full set and nothing else would notice a session deleted while the agent was away.
func (r *Reconciler) ReconcileApplied(ctx context.Context) error {
	r.applyMu.Lock()
	defer r.applyMu.Unlock()
	_, err := r.apply(ctx, r.Applied(), true)
	return err
}

// dedupe keeps, per session, the assignment with the highest generation, in order of
// first appearance: a push naming a session twice is a gateway bug, and the newest
// generation is the safe reading of it.
func dedupe(set []wire.Assignment) []wire.Assignment {
	idx := make(map[wire.SessionID]int, len(set))
	out := make([]wire.Assignment, 0, len(set))
	for _, a := range set {
		if i, ok := idx[a.SessionID]; ok {
			if a.Generation > out[i].Generation {
				out[i] = a
			}
			continue
		}
		idx[a.SessionID] = len(out)
		out = append(out, a)
	}
	return out
}

// apply runs with applyMu held.
func (r *Reconciler) apply(ctx context.Context, set []wire.Assignment, full bool) ([]wire.Ack, error) {
	var present map[wire.SessionID]bool // what the backend owns; only needed for full sets
	var errs []error
	if full {
		snap, err := r.backend.Observe(ctx)
		if err != nil {
			// Without knowing what exists we can neither remove orphans nor spot lost
			// sessions; applying what is new is still right, so carry on.
			errs = append(errs, fmt.Errorf("observing backend: %w", err))
		} else {
			present = make(map[wire.SessionID]bool, len(snap))
			for _, st := range snap {
				present[st.SessionID] = true
			}
		}
	}

	acks := make([]wire.Ack, len(set))
	var todo []wire.Assignment
	var todoIdx []int
	r.mu.Lock()
	for i, a := range set {
		acks[i] = wire.Ack{SessionID: a.SessionID, Generation: a.Generation}
		cur, ok := r.applied[a.SessionID]
		switch {
		case ok && a.Generation < cur.Generation:
			acks[i].Generation = cur.Generation
			continue
		case ok && a.Generation == cur.Generation:
			lost := present != nil && !present[a.SessionID] && a.Desired != wire.DesiredDeleted
			if !lost {
				continue
			}
			r.log.InfoContext(ctx, "session lost by the backend; re-applying", "session", a.SessionID, "generation", a.Generation)
		}
		todo = append(todo, a)
		todoIdx = append(todoIdx, i)
	}
	r.mu.Unlock()

	if len(todo) > 0 {
		res := r.backend.Apply(ctx, todo)
		r.mu.Lock()
		for j, a := range todo {
			var err error
			if res != nil {
				err = res[j]
			}
			if err != nil {
				acks[todoIdx[j]].Error = wire.ErrorOf(err)
				r.log.WarnContext(ctx, "applying session failed", "session", a.SessionID, "generation", a.Generation, "err", err)
				continue
			}
			r.applied[a.SessionID] = a
		}
		r.mu.Unlock()
	}

	if full && present != nil {
		want := make(map[wire.SessionID]bool, len(set))
		for _, a := range set {
			want[a.SessionID] = true
		}
		r.mu.Lock()
		for id := range r.applied {
			if !want[id] {
				delete(r.applied, id)
			}
		}
		r.mu.Unlock()
		for _, id := range slices.Sorted(maps.Keys(present)) {
			if want[id] {
				continue
			}
			r.log.InfoContext(ctx, "removing orphan session", "session", id)
			if err := r.backend.Remove(ctx, id); err != nil {
				errs = append(errs, fmt.Errorf("removing orphan %s: %w", id, err))
			}
		}
	}
	return acks, errors.Join(errs...)
}
