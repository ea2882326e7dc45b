// Package benchenv reads the STREAMSPACE_BENCH_* environment settings that size the
// project's benchmarks (how many agents, clients, tenants…). A setting that is present but
// malformed fails the benchmark with a message naming it, rather than silently running
// the default size and printing figures for a run nobody asked for.
package benchenv

import (
	"os"
	"strconv"
	"testing"
)

// Int returns the positive integer in the environment variable name, or def when it is
// unset or empty.
func Int(tb testing.TB, name string, def int) int {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// Fraction returns the number in (0, 1] in the environment variable name, or def when it
// is unset or empty.
func Fraction(tb testing.TB, name string, def float64) float64 {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	f, err := strconv.ParseFloat(v, 64)
	if err != nil || f <= 0 || f > 1 {
		tb.Fatalf("%s=%q: want a fraction in (0, 1]", name, v)
	}
	return f
}
