package poll

import (
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

func TestUntilReturnsOnceTheConditionHolds(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	Until(t, time.Minute, "the third poll", func() bool { return n.Add(1) >= 3 })
	if got := n.Load(); got != 3 {
		t.Fatalf("polled %d times, want 3", got)
	}
}

// failRecorder records Fatalf instead of stopping the test, so that giving up can be
// asserted.
type failRecorder struct {
	testing.TB
	msgs []string
}

func (f *failRecorder) Helper() {}

func (f *failRecorder) Fatalf(format string, args ...any) {
	f.msgs = append(f.msgs, fmt.Sprintf(format, args...))
}

func TestUntilGivesUp(t *testing.T) {
	t.Parallel()
	r := &failRecorder{TB: t}
	Until(r, 30*time.Millisecond, "never", func() bool { return false })
	if want := []string{"gave up waiting until never"}; fmt.Sprint(r.msgs) != fmt.Sprint(want) {
		t.Fatalf("failed with %q, want %q", r.msgs, want)
	}
}

func TestUntilNilReturnsOnceFReturnsNil(t *testing.T) {
	t.Parallel()
	var n atomic.Int32
	UntilNil(t, time.Minute, "the third poll", func() error {
		if got := n.Add(1); got < 3 {
			return fmt.Errorf("poll %d", got)
		}
		return nil
	})
	if got := n.Load(); got != 3 {
		t.Fatalf("polled %d times, want 3", got)
	}
}

// The failure names what was awaited and the last error, not the first: the last says
// how far the state got.
func TestUntilNilGivesUpWithTheLastError(t *testing.T) {
	t.Parallel()
	r := &failRecorder{TB: t}
	var n atomic.Int32
	UntilNil(r, 30*time.Millisecond, "never", func() error { return fmt.Errorf("poll %d", n.Add(1)) })
	want := fmt.Sprintf("never: not within 30ms: poll %d", n.Load())
	if len(r.msgs) != 1 || r.msgs[0] != want {
		t.Fatalf("failed with %q, want [%q]", r.msgs, want)
	}
}
