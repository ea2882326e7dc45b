package scheduler

import (
	"strings"
	"testing"
)

func TestChoose(t *testing.T) {
	t.Parallel()
	agent := func(id string, cpuFree, memFree int64, mods ...func(*Candidate)) Candidate {
		c := Candidate{ID: id, Online: true, CPUAllocatable: 4000, MemoryAllocatable: 8 << 30,
			CPUPlaced: 4000 - cpuFree, MemoryPlaced: (8 << 30) - memFree, Tags: []string{"region=eu"}}
		for _, m := range mods {
			m(&c)
		}
		return c
	}
	offline := func(c *Candidate) { c.Online = false }
	draining := func(c *Candidate) { c.Draining = true }
	full := func(c *Candidate) { c.MaxSessions, c.Sessions = 2, 2 }
	req := Request{CPU: 1000, Memory: 1 << 30}
	cases := []struct {
		name     string
		cands    []Candidate
		r        Request
		s        Strategy
		want     string
		whyParts []string
	}{
		{"spread picks the least allocated", []Candidate{agent("a", 1500, 4<<30), agent("b", 3500, 7<<30)}, req, Spread, "b", nil},
		{"binpack picks the most allocated that fits", []Candidate{agent("a", 1500, 4<<30), agent("b", 3500, 7<<30)}, req, Binpack, "a", nil},
		{"preferred agent wins when it fits", []Candidate{agent("a", 1500, 4<<30), agent("b", 3500, 7<<30)}, Request{CPU: 1000, Memory: 1 << 30, Prefer: "a"}, Spread, "a", nil},
		{"preferred agent that does not fit is skipped", []Candidate{agent("a", 500, 4<<30), agent("b", 3500, 7<<30)}, Request{CPU: 1000, Memory: 1 << 30, Prefer: "a"}, Spread, "b", nil},
		{"ties go to the smaller id", []Candidate{agent("b", 2000, 4<<30), agent("a", 2000, 4<<30)}, req, Spread, "a", nil},
		{"required tags filter", []Candidate{agent("a", 4000, 8<<30)}, Request{CPU: 1, Memory: 1, Tags: []string{"gpu=true"}}, Spread, "", []string{"1 missing tag gpu=true"}},
		{"nothing fits", []Candidate{agent("a", 500, 8<<30), agent("b", 4000, 8<<30, offline), agent("c", 4000, 8<<30, draining),
			agent("d", 4000, 100), agent("e", 4000, 8<<30, full)}, req, Spread, "",
			[]string{"5 agents", "1 insufficient cpu", "1 offline", "1 draining", "1 insufficient memory", "1 at its session limit"}},
		{"no agents", nil, req, Spread, "", []string{"no agents"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, why := Choose(tc.cands, tc.r, tc.s)
			if got != tc.want {
				t.Fatalf("Choose = %q (%s), want %q", got, why, tc.want)
			}
			for _, p := range tc.whyParts {
				if !strings.Contains(why, p) {
					t.Errorf("reason %q lacks %q", why, p)
				}
			}
		})
	}
}
