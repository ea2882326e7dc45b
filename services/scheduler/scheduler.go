// Package scheduler is StreamSpace's scheduler service: it chooses an agent for every
// session that needs one, by tenant, health, tags and free capacity, and writes the
// session's desired state to the gateway's assignment outbox.
//
// It follows go-kit's shape: this file holds the domain types and the placement rules
// (pure functions, table-tested); service.go the admin API's logic (the tenant's agents
// and what is placed on them); endpoints.go and transport_http.go its go-kit endpoints and
// routes; postgres/ the placement pass, which is the scheduler's real work; module/ wires
// it into a server.Module and runs the pass loop.
//
// # The pass
//
// A pass visits one tenant. It takes the tenant's scheduling lock (a transaction-scoped
// advisory lock, tried, never waited for): replicas share tenants between them instead of
// queueing, and capacity is counted by one replica at a time, so two replicas never fill
// the same free space twice. Sessions are claimed with FOR UPDATE SKIP LOCKED as well, so
// even a pass that ran without the tenant lock could never place a session another pass
// holds. Work is every session whose generation is ahead of what was written to the
// gateway: new sessions to place, wakes, hibernations, stops and deletes to deliver.
//
// # Errors
//
// Service methods return *apperr.Error values: unauthenticated, forbidden (members).
package scheduler

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Name is the service's name in logs, traces and metrics.
const Name = "scheduler"

// Strategy says how to score the agents that fit.
type Strategy string

// The strategies.
const (
	// Spread prefers the least allocated agent (the default): sessions spread out and a
	// lost agent takes few of them along.
	Spread Strategy = "spread"
	// Binpack prefers the most allocated agent that still fits: agents fill up one by one
	// and empty ones can be scaled away.
	Binpack Strategy = "binpack"
)

// Valid reports whether s is a known strategy.
func (s Strategy) Valid() bool { return s == Spread || s == Binpack }

// Candidate is an agent as placement sees it: its state and what is already placed on it.
type Candidate struct {
	ID       string   `json:"id"`
	Name     string   `json:"name"`
	Tags     []string `json:"tags"`
	Online   bool     `json:"online"`
	Draining bool     `json:"draining"`
	// Allocatable is what the agent reported it can host.
	CPUAllocatable    int64 `json:"cpu_allocatable_millis"`
	MemoryAllocatable int64 `json:"memory_allocatable_bytes"`
	MaxSessions       int   `json:"max_sessions,omitempty"`
	// Placed is the sum of the requests of the running sessions placed on it.
	CPUPlaced    int64 `json:"cpu_placed_millis"`
	MemoryPlaced int64 `json:"memory_placed_bytes"`
	Sessions     int   `json:"sessions"`
}

// Request is what a session needs.
type Request struct {
	CPU, Memory int64
	// Tags must all be carried by the agent ("key=value" or plain).
	Tags []string
	// Prefer names the agent to choose if it fits (a wake goes back to its home volume).
	Prefer string
}

// Fits says whether the agent can take the request, and why not.
func Fits(c Candidate, r Request) (bool, string) {
	switch {
	case !c.Online:
		return false, "offline"
	case c.Draining:
		return false, "draining"
	}
	for _, t := range r.Tags {
		if !slices.Contains(c.Tags, t) {
			return false, "missing tag " + t
		}
	}
	switch {
	case c.CPUAllocatable-c.CPUPlaced < r.CPU:
		return false, "insufficient cpu"
	case c.MemoryAllocatable-c.MemoryPlaced < r.Memory:
		return false, "insufficient memory"
	case c.MaxSessions > 0 && c.Sessions >= c.MaxSessions:
		return false, "at its session limit"
	}
	return true, ""
}

// Score rates an agent that fits: higher is better. Allocation is the mean of the CPU and
// memory fractions the agent would have in use after taking the request.
func Score(c Candidate, r Request, s Strategy) float64 {
	frac := func(used, alloc int64) float64 {
		if alloc <= 0 {
			return 1
		}
		return float64(used) / float64(alloc)
	}
	after := (frac(c.CPUPlaced+r.CPU, c.CPUAllocatable) + frac(c.MemoryPlaced+r.Memory, c.MemoryAllocatable)) / 2
	if s == Binpack {
		return after
	}
	return 1 - after
}

// Choose picks the agent for r among cands: the preferred agent if it fits, else the best
// scored one (ties go to the smaller id, so the choice is deterministic). Without a fit it
// returns "" and a summary of why each agent was refused ("3 agents: 2 offline, 1
// insufficient cpu").
func Choose(cands []Candidate, r Request, s Strategy) (string, string) {
	best, bestScore := -1, 0.0
	why := map[string]int{}
	for i, c := range cands {
		ok, reason := Fits(c, r)
		if !ok {
			why[reason]++
			continue
		}
		if c.ID == r.Prefer && r.Prefer != "" {
			return c.ID, ""
		}
		sc := Score(c, r, s)
		if best < 0 || sc > bestScore || (sc == bestScore && c.ID < cands[best].ID) {
			best, bestScore = i, sc
		}
	}
	if best >= 0 {
		return cands[best].ID, ""
	}
	if len(cands) == 0 {
		return "", "the tenant has no agents; enroll one"
	}
	reasons := make([]string, 0, len(why))
	for k := range why {
		reasons = append(reasons, k)
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, k := range reasons {
		parts[i] = fmt.Sprintf("%d %s", why[k], k)
	}
	return "", fmt.Sprintf("no agent fits (%d agents: %s)", len(cands), strings.Join(parts, ", "))
}

// Service is the scheduler's admin API.
type Service interface {
	// Agents lists the tenant's agents as placement sees them (admins): forbidden.
	Agents(ctx context.Context) ([]Candidate, error)
}

// Store reads what the admin API shows.
type Store interface {
	// Candidates returns the tenant's agents with their placed load.
	Candidates(ctx context.Context) ([]Candidate, error)
}
