// Package poll waits in tests for a state that has no event to wait on: a row a background
// loop will write, a backend that will take a lock, an object a controller will create. It
// polls and fails the test, naming what it waited for, once a deadline passes. The deadline
// only bounds a broken run; it never asserts how long anything took (these machines are
// shared and noisy).
package poll

import (
	"errors"
	"testing"
	"time"
)

// The polling interval starts short, so a state that is nearly there is seen at once,
// and doubles up to maxInterval, so that a long wait (a kube-apiserver restart, a control
// plane coming up) does not spend a shared 2-core machine's CPU on reads.
const (
	firstInterval = 10 * time.Millisecond
	maxInterval   = 50 * time.Millisecond
)

// Until polls cond until it holds, failing tb with "gave up waiting until <what>" once
// timeout has passed.
func Until(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	if wait(tb, timeout, func() error {
		tb.Helper()
		if cond() {
			return nil
		}
		return errNotYet
	}) != nil {
		tb.Fatalf("gave up waiting until %s", what)
	}
}

// UntilNil polls f until it returns nil, failing tb with "<what>: not within <timeout>:
// <f's last error>" once timeout has passed. Where the state is read through a call that
// can fail, or can say why it is not there yet, f's error tells the failure why. f may
// fail the test itself for a state that can never turn good.
func UntilNil(tb testing.TB, timeout time.Duration, what string, f func() error) {
	tb.Helper()
	if err := wait(tb, timeout, f); err != nil {
		tb.Fatalf("%s: not within %v: %v", what, timeout, err)
	}
}

// errNotYet is Until's condition not holding, for wait, which only sees errors.
var errNotYet = errors.New("not yet")

// wait is the one polling loop: it calls f, at the intervals above, until f returns
// nil, and returns f's last error once timeout has passed. It takes tb only to mark itself a
// helper: a failure inside an f that is a helper too is then reported at the line that
// began the wait, not here.
func wait(tb testing.TB, timeout time.Duration, f func() error) error {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for pause := firstInterval; ; pause = min(2*pause, maxInterval) {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(pause)
	}
}
