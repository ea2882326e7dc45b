package auth_test

import (
	"context"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
)

// BenchmarkVerify measures Verify on a realistic user token with the keys in hand (the JWKS
// cache is a map lookup; fetching is off the hot path). Beside ns/op it reports:
//
//   - verifs/s/core: verifications per second per core busy — b.N over wall time, divided
//     by the number of goroutines verifying at once (1 serially, GOMAXPROCS in parallel),
//     so the two figures compare directly and show how well Verify scales;
//   - p99-µs: the 99th percentile latency of one verification, from a per-op sample.
//
// serial and parallel verify one token again and again, as a client's requests do: after
// the first, the Verifier remembers it and checks only its expiry and key. first verifies
// a token the Verifier has not seen, every time: the full check, signature included, as
// for a client's first request with a token.
func BenchmarkVerify(b *testing.B) {
	s := authtest.NewSigner(b)
	v := s.Verifier(b)
	tok := s.Token(b, testTenant, "user-0123456789", auth.RoleAdmin)
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}

	b.Run("serial", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for range b.N {
			start := time.Now()
			if _, err := v.Verify(ctx, tok); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		report(b, 1, lat)
	})

	b.Run("first", func(b *testing.B) {
		// Distinct tokens, signed before the timer starts; each round through them gets a
		// new Verifier, which has seen none of them.
		toks := make([]string, 2000)
		for i := range toks {
			toks[i] = s.Token(b, testTenant, "user-"+strconv.Itoa(i), auth.RoleAdmin)
		}
		var fresh *auth.Verifier
		lat := make([]time.Duration, 0, b.N)
		b.ReportAllocs()
		b.ResetTimer()
		for i := range b.N {
			if i%len(toks) == 0 {
				fresh = s.Verifier(b)
			}
			start := time.Now()
			if _, err := fresh.Verify(ctx, toks[i%len(toks)]); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		report(b, 1, lat)
	})

	b.Run("parallel", func(b *testing.B) {
		var (
			mu  sync.Mutex
			lat = make([]time.Duration, 0, b.N)
		)
		b.ReportAllocs()
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			mine := make([]time.Duration, 0, 1024)
			for pb.Next() {
				start := time.Now()
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Error(err)
					return
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			mu.Unlock()
		})
		b.StopTimer()
		report(b, runtime.GOMAXPROCS(0), lat)
	})
}

// report adds the per-core throughput and p99 latency metrics.
func report(b *testing.B, workers int, lat []time.Duration) {
	if elapsed := b.Elapsed().Seconds(); elapsed > 0 {
		b.ReportMetric(float64(b.N)/elapsed/float64(workers), "verifs/s/core")
	}
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p99 := lat[min(len(lat)-1, len(lat)*99/100)]
	b.ReportMetric(float64(p99)/float64(time.Microsecond), "p99-µs")
}
