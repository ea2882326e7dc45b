package auth_test

import (
	"context"
	"runtime"
	"slices"
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
