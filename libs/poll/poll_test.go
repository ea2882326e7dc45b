package poll

import (
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
	msg string
}

func (f *failRecorder) Helper() {}

func (f *failRecorder) Fatalf(format string, args ...any) { f.msg = format }

func TestUntilGivesUp(t *testing.T) {
	t.Parallel()
	r := &failRecorder{TB: t}
	Until(r, 30*time.Millisecond, "never", func() bool { return false })
	if r.msg == "" {
		t.Fatal("Until returned without the condition holding and without failing")
	}
}
