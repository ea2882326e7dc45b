package backoff

import (
	"testing"
	"time"
)

// top always returns the largest value, so delays equal their ceilings.
func top(n int64) int64 { return n - 1 }

// bottom always returns 0.
func bottom(int64) int64 { return 0 }

func TestCeilingDoublesFromInitialToMax(t *testing.T) {
	t.Parallel()
	b := New(Policy{}, top)
	var got []time.Duration
	for range 12 {
		got = append(got, b.Next())
	}
	ms := time.Millisecond
	want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms,
		6400 * ms, 12800 * ms, 25600 * ms, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("delay %d = %v, want %v (all: %v)", i, got[i], want[i], got)
		}
	}
}

func TestFullJitterSpansZeroToCeiling(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rnd  Rand
		want time.Duration
	}{
		{"lowest draw", bottom, 0},
		{"highest draw", top, 400 * time.Millisecond},
		{"middle draw", func(n int64) int64 { return n / 2 }, 200 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var asked int64
			b := New(Policy{}, func(n int64) int64 { asked = n; return tt.rnd(n) })
			b.Next()
			b.Next()
			if got := b.Next(); got != tt.want {
				t.Fatalf("third delay = %v, want %v", got, tt.want)
			}
			// The draw covers the closed interval [0, ceiling].
			if asked != int64(400*time.Millisecond)+1 {
				t.Fatalf("rand asked for [0, %d), want [0, %d)", asked, int64(400*time.Millisecond)+1)
			}
		})
	}
}

func TestResetStartsOver(t *testing.T) {
	t.Parallel()
	b := New(Policy{Initial: time.Second, Max: 8 * time.Second}, top)
	for range 10 {
		b.Next()
	}
	if c := b.Ceiling(); c != 8*time.Second {
		t.Fatalf("ceiling before reset = %v", c)
	}
	b.Reset()
	if d := b.Next(); d != time.Second {
		t.Fatalf("first delay after reset = %v, want 1s", d)
	}
}

func TestAfterHonoursHintAsFloorWithJitter(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		rnd  Rand
		hint time.Duration
		want time.Duration
	}{
		{"hint above backoff, no jitter", bottom, 5 * time.Second, 5 * time.Second},
		{"hint above backoff, full jitter", top, 5 * time.Second, 6 * time.Second},
		{"hint below backoff", top, 10 * time.Millisecond, 100 * time.Millisecond},
		{"no hint", top, 0, 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := New(Policy{}, tt.rnd)
			if got := b.After(tt.hint); got != tt.want {
				t.Fatalf("After(%v) = %v, want %v", tt.hint, got, tt.want)
			}
			if b.Attempt() != 1 {
				t.Fatalf("After did not count as an attempt")
			}
		})
	}
}

func TestPolicyDefaultsAndMaxBelowInitial(t *testing.T) {
	t.Parallel()
	b := New(Policy{Initial: time.Second, Max: time.Millisecond}, top)
	if d := b.Next(); d != time.Second {
		t.Fatalf("delay = %v, want the initial 1s when max < initial", d)
	}
	if d := b.Next(); d != time.Second {
		t.Fatalf("delay = %v, want capped at 1s", d)
	}
}
