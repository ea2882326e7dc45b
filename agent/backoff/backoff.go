// Package backoff computes reconnect delays: exponential growth with "full jitter" (AWS
// Architecture Blog, "Exponential Backoff and Jitter"), where each delay is uniform in
// [0, ceiling] and the ceiling doubles per failure up to a cap.
//
// Full jitter rather than "equal" or "decorrelated" jitter: after a gateway restart a
// thousand agents fail at the same instant, and full jitter spreads their retries most
// evenly over the window, which is what keeps a reconnect storm from becoming a thundering
// herd. The random source is injected so tests are deterministic and never sleep.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Defaults from issue 5: from 100 ms up to 30 s.
const (
	DefaultInitial = 100 * time.Millisecond
	DefaultMax     = 30 * time.Second
)

// Policy bounds the delays.
type Policy struct {
	// Initial is the ceiling of the first delay. DefaultInitial when zero.
	Initial time.Duration
	// Max caps the ceiling. DefaultMax when zero.
	Max time.Duration
}

// Rand returns a uniform value in [0, n); n is always > 0. rand.Int64N fits.
type Rand func(n int64) int64

// Backoff hands out successive delays for one retry loop. It is not safe for concurrent
// use: one supervisor owns one Backoff.
type Backoff struct {
	initial, max time.Duration
	rand         Rand
	attempt      int
}

// New returns a Backoff for p drawing from rnd (math/rand/v2's Int64N when nil).
func New(p Policy, rnd Rand) *Backoff {
	if p.Initial <= 0 {
		p.Initial = DefaultInitial
	}
	if p.Max <= 0 {
		p.Max = DefaultMax
	}
	if p.Max < p.Initial {
		p.Max = p.Initial
	}
	if rnd == nil {
		rnd = rand.Int64N
	}
	return &Backoff{initial: p.Initial, max: p.Max, rand: rnd}
}

// Ceiling returns the upper bound of the next delay without consuming an attempt:
// Initial·2^attempt, capped at Max.
func (b *Backoff) Ceiling() time.Duration {
	c := b.initial
	for i := 0; i < b.attempt && c < b.max; i++ {
		c *= 2 // stops at max, so it overflows only for a max above 146 years
	}
	return min(c, b.max)
}

// Next returns the next delay, uniform in [0, Ceiling()], and raises the ceiling.
func (b *Backoff) Next() time.Duration {
	c := b.Ceiling()
	if c < b.max {
		b.attempt++
	}
	return b.jitter(c)
}

// After returns the delay to honour a peer's retry-after hint: the hint plus up to a fifth
// of it again, so that a fleet told the same hint by a shedding gateway does not come back
// in one burst. It also counts as an attempt. A hint below the backoff's own next delay
// yields the backoff's delay instead: the hint is a floor, not a replacement.
func (b *Backoff) After(hint time.Duration) time.Duration {
	d := b.Next()
	if hint <= 0 || hint <= d {
		return d
	}
	return hint + b.jitter(hint/5)
}

// Reset starts over from Initial, after a connection proved stable.
func (b *Backoff) Reset() { b.attempt = 0 }

// Attempt returns how many delays have raised the ceiling since the last Reset.
func (b *Backoff) Attempt() int { return b.attempt }

func (b *Backoff) jitter(c time.Duration) time.Duration {
	if c <= 0 {
		return 0
	}
	// rand(n) is in [0, n): n = c+1 makes c itself reachable.
	return time.Duration(b.rand(int64(c) + 1))
}
