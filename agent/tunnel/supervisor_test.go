package tunnel

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"streamspace.dev/agent/backoff"
	"streamspace.dev/libs/wire"
)

// step is one scripted connection: how long it stayed up after HelloAck (negative: it
// never got that far) and how it ended.
type step struct {
	up  time.Duration
	err error
}

// script runs a Supervisor against steps with a fake clock and records the sleeps. The
// random source returns the top of the range, so every delay equals its ceiling and the
// expected values are exact.
func script(t *testing.T, steps []step) (sleeps []time.Duration, err error) {
	t.Helper()
	var clock time.Time
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	i := 0
	s := &Supervisor{
		Backoff:     backoff.New(backoff.Policy{}, func(n int64) int64 { return n - 1 }),
		StableAfter: 30 * time.Second,
		Log:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		Now:         func() time.Time { return clock },
		Sleep: func(_ context.Context, d time.Duration) error {
			sleeps = append(sleeps, d)
			clock = clock.Add(d)
			return nil
		},
		Connect: func(ctx context.Context, up func()) error {
			if i == len(steps) {
				cancel()
				return nil
			}
			st := steps[i]
			i++
			if st.up >= 0 {
				up()
				clock = clock.Add(st.up)
			}
			return st.err
		},
	}
	err = s.Run(ctx)
	return sleeps, err
}

const ms = time.Millisecond

func TestSupervisorBacksOffExponentially(t *testing.T) {
	t.Parallel()
	sleeps, err := script(t, []step{{-1, io.EOF}, {-1, io.EOF}, {-1, io.EOF}, {-1, io.EOF}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms}; !slices.Equal(sleeps, want) {
		t.Fatalf("sleeps = %v, want %v", sleeps, want)
	}
}

func TestSupervisorResetsAfterStableConnectionOnly(t *testing.T) {
	t.Parallel()
	sleeps, err := script(t, []step{
		{-1, io.EOF}, {-1, io.EOF}, {-1, io.EOF}, // 100, 200, 400
		{5 * time.Second, io.EOF}, // up, but not for long: keeps growing (800)
		{time.Minute, io.EOF},     // stable: starts over (100)
		{-1, io.EOF},              // 200
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 100 * ms, 200 * ms}; !slices.Equal(sleeps, want) {
		t.Fatalf("sleeps = %v, want %v", sleeps, want)
	}
}

func TestSupervisorHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	busy := &wire.Error{Code: wire.CodeUnavailable, Message: "shedding load", RetryAfter: 10 * time.Second}
	sleeps, err := script(t, []step{{-1, busy}, {-1, io.EOF}})
	if err != nil {
		t.Fatal(err)
	}
	// The hint plus the full fifth of jitter (the fake rand draws the maximum), then
	// the backoff carries on from its second step.
	if want := []time.Duration{12 * time.Second, 200 * ms}; !slices.Equal(sleeps, want) {
		t.Fatalf("sleeps = %v, want %v", sleeps, want)
	}
}

func TestSupervisorStopsOnPermanentError(t *testing.T) {
	t.Parallel()
	revoked := &wire.Error{Code: wire.CodeForbidden, Message: "agent deleted", Permanent: true}
	sleeps, err := script(t, []step{{-1, io.EOF}, {-1, revoked}, {-1, io.EOF}})
	var perm *PermanentError
	if !errors.As(err, &perm) || !errors.Is(err, revoked) {
		t.Fatalf("err = %v, want a PermanentError wrapping the revocation", err)
	}
	if len(sleeps) != 1 {
		t.Fatalf("sleeps = %v: retried after a permanent error", sleeps)
	}
}

func TestSupervisorReconnectsPromptlyAfterGoodbye(t *testing.T) {
	t.Parallel()
	drain := &GoodbyeError{wire.Goodbye{Reason: wire.GoodbyeDrain, ReconnectElsewhere: true}}
	sleeps, err := script(t, []step{{-1, io.EOF}, {-1, io.EOF}, {-1, io.EOF}, {time.Second, drain}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{100 * ms, 200 * ms, 400 * ms, 100 * ms}; !slices.Equal(sleeps, want) {
		t.Fatalf("sleeps = %v, want %v", sleeps, want)
	}
}

func TestSupervisorGivesUpOnlyOnPersistentCertRefusal(t *testing.T) {
	t.Parallel()
	refused := &RefusedError{Err: errors.New("bad_certificate")}
	// A refusal, then success (a database blip on the gateway), then refusals that
	// last: only the lasting ones end the loop, once the grace (2 min) has passed.
	steps := []step{{-1, refused}, {-1, refused}, {time.Minute, io.EOF}}
	for range 20 {
		steps = append(steps, step{-1, refused})
	}
	sleeps, err := script(t, steps)
	var perm *PermanentError
	if !errors.As(err, &perm) || !errors.Is(err, refused) {
		t.Fatalf("err = %v, want a permanent refusal", err)
	}
	var total time.Duration
	for _, d := range sleeps[3:] {
		total += d
	}
	if total < 2*time.Minute {
		t.Fatalf("gave up after %v of refusals, before the grace", total)
	}
}

func TestSupervisorBacksOffWhenSuperseded(t *testing.T) {
	t.Parallel()
	superseded := &GoodbyeError{wire.Goodbye{Reason: wire.GoodbyeSuperseded}}
	sleeps, err := script(t, []step{{time.Second, superseded}, {time.Second, superseded}, {time.Second, superseded}})
	if err != nil {
		t.Fatal(err)
	}
	if want := []time.Duration{100 * ms, 200 * ms, 400 * ms}; !slices.Equal(sleeps, want) {
		t.Fatalf("sleeps = %v, want growing delays %v", sleeps, want)
	}
}
