package identity_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"streamspace.dev/services/identity"
)

// BenchmarkLogin measures a successful sign-in through the service against real
// PostgreSQL: throttle check, tenant lookup, user read, argon2id verification (t=2,
// m=19 MiB, p=1), audit write, access and refresh token issue. It reports p50 and p99
// latency; run the parallel variant to see a burst on every core.
//
//	go test -run '^$' -bench BenchmarkLogin -benchtime 200x ./services/identity/
func BenchmarkLogin(b *testing.B) {
	h := newHarness(b)
	a := h.signup("bench")
	svc := h.mod.Service()
	ctx := identity.WithClientIP(context.Background(), "127.0.0.1")
	creds := identity.Credentials{Tenant: a.Slug, Email: a.Email, Password: defaultPassword}

	b.Run("serial", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for b.Loop() {
			start := time.Now()
			if _, err := svc.Login(ctx, creds); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
		report(b, lat)
	})
	b.Run("parallel", func(b *testing.B) {
		lats := make(chan []time.Duration, 64)
		b.RunParallel(func(pb *testing.PB) {
			var lat []time.Duration
			for pb.Next() {
				start := time.Now()
				if _, err := svc.Login(ctx, creds); err != nil {
					b.Error(err)
					return
				}
				lat = append(lat, time.Since(start))
			}
			lats <- lat
		})
		close(lats)
		var all []time.Duration
		for l := range lats {
			all = append(all, l...)
		}
		report(b, all)
	})
}

func report(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 {
		return float64(lat[min(len(lat)-1, int(float64(len(lat))*p))].Microseconds()) / 1000
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op") // the percentiles say more than the mean
}
