package sessions

import (
	"strings"
	"sync"

	"streamspace.dev/libs/tenant"
)

// Change says that a session changed. It carries no state: a subscriber reads the session
// again with its own caller's rights, so the notice itself can never leak anything.
type Change struct {
	Tenant  tenant.ID
	Session ID
	Owner   string
}

// ParseChange reads a ChangeChannel payload ("<tenant>:<session>:<owner>").
func ParseChange(payload string) (Change, bool) {
	t, rest, ok1 := strings.Cut(payload, ":")
	id, owner, ok2 := strings.Cut(rest, ":")
	if !ok1 || !ok2 {
		return Change{}, false
	}
	if _, err := tenant.ParseID(t); err != nil || !idPattern.MatchString(id) {
		return Change{}, false
	}
	return Change{Tenant: tenant.ID(t), Session: ID(id), Owner: owner}, true
}

// Hub fans change notices out to live-stream subscribers in this process. A subscriber is
// tied to one tenant and, unless it is an admin, to one owner: notices of other tenants
// and other users never reach it. Notices coalesce per session, so a slow subscriber
// never blocks the publisher and never loses the fact that a session changed.
type Hub struct {
	mu   sync.Mutex
	subs map[*Subscription]struct{}
}

// NewHub returns an empty hub.
func NewHub() *Hub { return &Hub{subs: map[*Subscription]struct{}{}} }

// Subscription receives the changes its filter admits.
type Subscription struct {
	hub    *Hub
	tenant tenant.ID
	owner  string // "" for every owner (admins)
	// Ready receives a value whenever Take has something new.
	Ready   chan struct{}
	mu      sync.Mutex
	pending map[ID]struct{}
	order   []ID
	resync  bool
}

// Subscribe admits changes of tenant t and, when owner is not empty, of that owner only.
func (h *Hub) Subscribe(t tenant.ID, owner string) *Subscription {
	s := &Subscription{hub: h, tenant: t, owner: owner, Ready: make(chan struct{}, 1), pending: map[ID]struct{}{}}
	h.mu.Lock()
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Close ends the subscription.
func (s *Subscription) Close() {
	s.hub.mu.Lock()
	delete(s.hub.subs, s)
	s.hub.mu.Unlock()
}

// Take returns the sessions changed since the last call, in the order first seen, and
// whether the subscriber must resync: changes may have been missed (see Hub.Resync), so
// it should read everything it shows again.
func (s *Subscription) Take() (changed []ID, resync bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, resync = s.order, s.resync
	s.order, s.pending, s.resync = nil, map[ID]struct{}{}, false
	return changed, resync
}

// Resync tells every subscriber that notices may have been lost, as they are while the
// process's LISTEN connection is down: each reads its sessions again. NOTIFY is not
// queued for a listener that is not connected, so without this a live stream would show
// a stale state until the session's next change.
func (h *Hub) Resync() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.mu.Lock()
		s.resync = true
		s.mu.Unlock()
		select {
		case s.Ready <- struct{}{}:
		default:
		}
	}
}

// Publish hands c to every subscriber it concerns.
func (h *Hub) Publish(c Change) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.tenant != c.Tenant || (s.owner != "" && s.owner != c.Owner) {
			continue
		}
		s.mu.Lock()
		if _, dup := s.pending[c.Session]; !dup {
			s.pending[c.Session] = struct{}{}
			s.order = append(s.order, c.Session)
		}
		s.mu.Unlock()
		select {
		case s.Ready <- struct{}{}:
		default:
		}
	}
}
