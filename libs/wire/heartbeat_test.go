package wire

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCapacityReporter runs a connection's heartbeats through the reporter: what each
// beat carries, given the capacity the agent knows at that beat ("-" for none: the
// backend failed).
func TestCapacityReporter(t *testing.T) {
	t.Parallel()
	a := &Capacity{CPUAllocatableMillis: 4000, Sessions: 1}
	b := &Capacity{CPUAllocatableMillis: 4000, Sessions: 2}
	name := func(c *Capacity) string {
		switch {
		case c == nil:
			return "-"
		case *c == *a:
			return "a"
		case *c == *b:
			return "b"
		}
		return fmt.Sprintf("%+v", *c)
	}
	type beat struct{ now, sent *Capacity }
	steady := func(n int, c *Capacity) []beat { // n beats at c that carry nothing
		out := make([]beat, n)
		for i := range out {
			out[i] = beat{c, nil}
		}
		return out
	}
	cat := func(parts ...[]beat) []beat {
		var out []beat
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	v11, v12 := Version{1, 1}, Version{1, 2}
	for _, tc := range []struct {
		name     string
		accepted Version
		hello    *Capacity
		beats    []beat
	}{
		{"1.2 steady: Hello counts, then every 6th beat refreshes", v12, a,
			cat(steady(CapacityRefresh-1, a), []beat{{a, a}}, steady(CapacityRefresh-1, a), []beat{{a, a}})},
		{"1.2 a change is sent at once and restarts the refresh count", v12, a,
			cat(steady(2, a), []beat{{b, b}}, steady(CapacityRefresh-1, b), []beat{{b, b}, {a, a}, {a, nil}})},
		{"1.2 without Hello capacity the first known one is sent", v12, nil,
			cat([]beat{{nil, nil}, {a, a}}, steady(1, a))},
		{"1.2 an unknown capacity is never sent, and counts towards the refresh", v12, a,
			cat(steady(2, nil), steady(2, a), []beat{{nil, nil}, {a, a}})},
		{"1.1 every beat carries capacity", v11, a,
			[]beat{{a, a}, {a, a}, {b, b}, {b, b}, {a, a}}},
		{"1.1 an unknown capacity repeats the last one, not zeros", v11, a,
			[]beat{{nil, a}, {b, b}, {nil, b}}},
		{"1.1 with nothing reported yet an unknown capacity is absent", v11, nil,
			[]beat{{nil, nil}, {a, a}}},
		{"1.0 every beat carries capacity", Version{1, 0}, a, []beat{{a, a}, {a, a}}},
		{"a newer minor omits too", Version{1, 9}, a, []beat{{a, nil}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := NewCapacityReporter(tc.accepted, tc.hello)
			for i, bt := range tc.beats {
				var now *Capacity
				if bt.now != nil {
					c := *bt.now
					now = &c
				}
				got := r.Next(now)
				if name(got) != name(bt.sent) {
					t.Fatalf("beat %d at %s carries %s, want %s", i+1, name(bt.now), name(got), name(bt.sent))
				}
				if got != nil && got == now {
					t.Fatalf("beat %d returned the caller's capacity, not a copy", i+1)
				}
			}
		})
	}
}

// A 1.1 gateway decodes Heartbeat with a non-pointer Capacity: a beat without capacity
// reads as zeros there, which is why only a 1.2 peer is sent one.
func TestHeartbeatWithoutCapacityAsOlderPeersSeeIt(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join("testdata", "heartbeat_1_2.golden"))
	if err != nil {
		t.Fatal(err)
	}
	_, payload, _ := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
	var env struct{ Body json.RawMessage }
	if err := json.Unmarshal([]byte(payload), &env); err != nil {
		t.Fatal(err)
	}
	var v11 struct {
		Seq      uint64   `json:"seq"`
		Capacity Capacity `json:"capacity"`
	}
	if err := json.Unmarshal(env.Body, &v11); err != nil {
		t.Fatal(err)
	}
	if v11.Seq != 43 || v11.Capacity != (Capacity{}) {
		t.Fatalf("a 1.1 reader sees %+v", v11)
	}
}
