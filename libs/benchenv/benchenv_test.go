package benchenv

import "testing"

func TestInt(t *testing.T) {
	t.Setenv("STREAMSPACE_BENCH_X", "")
	if got := Int(t, "STREAMSPACE_BENCH_X", 7); got != 7 {
		t.Fatalf("unset: %d, want the default 7", got)
	}
	t.Setenv("STREAMSPACE_BENCH_X", "12")
	if got := Int(t, "STREAMSPACE_BENCH_X", 7); got != 12 {
		t.Fatalf("12: got %d", got)
	}
	t.Setenv("STREAMSPACE_BENCH_F", "0.25")
	if got := Fraction(t, "STREAMSPACE_BENCH_F", 0.5); got != 0.25 {
		t.Fatalf("0.25: got %v", got)
	}
}

// fatalRecorder is a testing.TB whose Fatalf records the failure instead of stopping the
// test, so that the refusal of a malformed value can itself be asserted.
type fatalRecorder struct {
	testing.TB
	failed bool
}

func (f *fatalRecorder) Helper() {}

func (f *fatalRecorder) Fatalf(string, ...any) { f.failed = true }

func TestMalformedFails(t *testing.T) {
	for _, c := range []struct{ name, int, frac string }{
		{"zero", "0", "0"}, {"negative", "-3", "-0.1"}, {"word", "many", "half"}, {"too big", "1e3", "1.5"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Setenv("STREAMSPACE_BENCH_X", c.int)
			r := &fatalRecorder{TB: t}
			Int(r, "STREAMSPACE_BENCH_X", 1)
			if !r.failed {
				t.Errorf("Int accepted %q", c.int)
			}
			t.Setenv("STREAMSPACE_BENCH_F", c.frac)
			r = &fatalRecorder{TB: t}
			Fraction(r, "STREAMSPACE_BENCH_F", 0.5)
			if !r.failed {
				t.Errorf("Fraction accepted %q", c.frac)
			}
		})
	}
}
