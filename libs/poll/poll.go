// Package poll waits in tests for a state that has no event to wait on: a row a background
// loop will write, a backend that will take a lock. It polls and fails the test, naming
// what it waited for, once a deadline passes. The deadline only bounds a broken run; it
// never asserts how long anything took (these machines are shared and noisy).
package poll

import (
	"testing"
	"time"
)

// interval is how often a condition is polled: short next to the waits it is used for.
const interval = 10 * time.Millisecond

// Until polls cond until it holds, failing tb with "gave up waiting until <what>" once
// timeout has passed.
func Until(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("gave up waiting until %s", what)
			return // for a testing.TB whose Fatalf does not stop the goroutine
		}
		time.Sleep(interval)
	}
}
