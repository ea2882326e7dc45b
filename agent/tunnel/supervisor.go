package tunnel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"streamspace.dev/agent/backoff"
	"streamspace.dev/libs/wire"
)

// GoodbyeError ends a connection the gateway closed in an orderly way. The supervisor
// reconnects at once (after a jitter of at most the backoff's first step) instead of
// backing off: a draining replica is not a failing one.
type GoodbyeError struct{ Goodbye wire.Goodbye }

// Error implements error.
func (e *GoodbyeError) Error() string {
	return fmt.Sprintf("gateway said goodbye: %s %s", e.Goodbye.Reason, e.Goodbye.Message)
}

// RefusedError says the gateway refused the agent's certificate in the TLS handshake.
// A gateway of protocol 1.1 or later refuses only on the registry's definite answer (the
// agent is unknown or deleted, or its tenant is not active); when it cannot ask the
// registry it accepts the handshake and answers Hello with a retryable "unavailable"
// error (close code wire.CloseUnavailable), which is not a RefusedError and ends a run
// of refusals. But the agent cannot tell such a gateway from an older one, which refuses
// the same way on a database failure, nor a refusal from a TLS failure with another
// cause, so the supervisor only gives up once refusals have lasted
// Supervisor.RefusalGrace with nothing else in between.
type RefusedError struct{ Err error }

// Error implements error.
func (e *RefusedError) Error() string {
	return "gateway refused the agent certificate: " + e.Err.Error()
}

// Unwrap returns the cause.
func (e *RefusedError) Unwrap() error { return e.Err }

// PermanentError is what Supervisor.Run returns when a connection failed in a way that
// retrying cannot fix (a revoked certificate, an unsupported protocol version). The agent
// exits with a distinct status so the operator sees it instead of a silent retry loop.
type PermanentError struct{ Err error }

// Error implements error.
func (e *PermanentError) Error() string { return "permanent tunnel failure: " + e.Err.Error() }

// Unwrap returns the cause.
func (e *PermanentError) Unwrap() error { return e.Err }

// Supervisor keeps one connection up: it calls Connect again after every failure, waiting
// per the failure's retry policy (wire.Retryable) and the backoff, as cloudflared's
// supervisor does. It knows nothing about QUIC, so its decisions are unit-tested with a
// fake Connect, a fake clock and a recorded Sleep.
type Supervisor struct {
	// Connect runs one connection until it ends and returns why; it calls up() once the
	// gateway accepted the agent (HelloAck). A nil error means an orderly end because ctx
	// is done.
	Connect func(ctx context.Context, up func()) error
	// Backoff spaces the attempts.
	Backoff *backoff.Backoff
	// StableAfter is how long a connection must have been up for the backoff to start
	// over; shorter ones count as failures, so a gateway that accepts and then drops the
	// agent at once still sees backoff growing. 30 s when zero.
	StableAfter time.Duration
	// RefusalGrace is how long certificate refusals (RefusedError) must go on, with no
	// other outcome in between (a retryable "unavailable" from the gateway counts as
	// another outcome), before they count as permanent. 2 min when zero.
	RefusalGrace time.Duration
	// Sleep waits d or until ctx is done; a real timer when nil.
	Sleep func(ctx context.Context, d time.Duration) error
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Log receives one line per attempt; slog.Default() when nil.
	Log *slog.Logger
}

// Run connects until ctx is done (returning nil) or a permanent failure (returning a
// *PermanentError).
func (s *Supervisor) Run(ctx context.Context) error {
	now, sleep, log := s.Now, s.Sleep, s.Log
	if now == nil {
		now = time.Now
	}
	if sleep == nil {
		sleep = sleepCtx
	}
	if log == nil {
		log = slog.Default()
	}
	stable := s.StableAfter
	if stable <= 0 {
		stable = 30 * time.Second
	}
	grace := s.RefusalGrace
	if grace <= 0 {
		grace = 2 * time.Minute
	}
	var refusedSince time.Time
	for attempt := 1; ; attempt++ {
		var upAt time.Time
		err := s.Connect(ctx, func() { upAt = now() })
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("connection ended without a reason")
		}
		if !upAt.IsZero() && now().Sub(upAt) >= stable {
			s.Backoff.Reset()
		}
		var delay time.Duration
		if _, ok := errors.AsType[*RefusedError](err); ok {
			if refusedSince.IsZero() {
				refusedSince = now()
			}
			if now().Sub(refusedSince) >= grace {
				log.ErrorContext(ctx, "the gateway keeps refusing the agent certificate; not retrying", "err", err, "since", refusedSince)
				return &PermanentError{Err: err}
			}
		} else {
			refusedSince = time.Time{}
		}
		if gb, ok := errors.AsType[*GoodbyeError](err); ok && gb.Goodbye.Reason == wire.GoodbyeSuperseded {
			// Another process holds this agent's identity (two replicas, or a rolling
			// update's overlap). Reconnecting at once would take the tunnel back and
			// ping-pong; backing off lets the newer one keep it.
			delay = s.Backoff.Next()
			log.WarnContext(ctx, "another connection of this agent took over; backing off", "delay", delay)
		} else if ok {
			s.Backoff.Reset()
			delay = s.Backoff.Next()
			log.InfoContext(ctx, "gateway closed the tunnel; reconnecting", "reason", gb.Goodbye.Reason,
				"message", gb.Goodbye.Message, "elsewhere", gb.Goodbye.ReconnectElsewhere, "delay", delay)
		} else {
			retry, after := wire.Retryable(err)
			if !retry {
				log.ErrorContext(ctx, "tunnel failed permanently; not retrying", "err", err, "attempt", attempt)
				return &PermanentError{Err: err}
			}
			delay = s.Backoff.After(after)
			log.WarnContext(ctx, "tunnel down; retrying", "err", err, "attempt", attempt,
				"was_up", !upAt.IsZero(), "retry_after_hint", after, "delay", delay)
		}
		if err := sleep(ctx, delay); err != nil {
			return nil
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
