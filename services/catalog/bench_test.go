package catalog_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/manifest"
	"streamspace.dev/services/catalog/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// BenchmarkList measures Service.List for a member over the merged view of 500 templates:
// 300 platform templates and 250 tenant ones, 50 of which shadow a platform name. It
// reports the p50 and p99 latency of one call in microseconds.
func BenchmarkList(b *testing.B) {
	env := tenantstest.New(b)
	acme, _ := env.Tenant(b, "acme")
	// The production status cache (tenantstest's DB re-reads the tenant's status on every
	// transaction, which no server does).
	db, err := tenantdb.Open(context.Background(), env.URL, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	store := postgres.New(db)
	svc := catalog.NewService(store, manifest.Parse, nil)
	seeds, err := catalog.SeedTemplates()
	if err != nil {
		b.Fatal(err)
	}
	admin := authtest.Context(context.Background(), auth.Principal{Kind: auth.KindUser, Tenant: acme.ID, Subject: "a", Role: auth.RoleAdmin})
	member := authtest.Context(context.Background(), auth.Principal{Kind: auth.KindUser, Tenant: acme.ID, Subject: "m", Role: auth.RoleMember})
	for i := range 300 {
		s := seeds[i%len(seeds)].Spec
		if _, err := store.Create(context.Background(), catalog.ScopePlatform, catalog.TemplateName(fmt.Sprintf("platform-app-%03d", i)), s, true); err != nil {
			b.Fatal(err)
		}
	}
	for i := range 250 {
		nt := seeds[i%len(seeds)]
		// The first 50 shadow platform templates; the rest are the tenant's own.
		nt.Name = catalog.TemplateName(fmt.Sprintf("tenant-app-%03d", i))
		if i < 50 {
			nt.Name = catalog.TemplateName(fmt.Sprintf("platform-app-%03d", i))
		}
		if _, err := svc.Create(admin, catalog.ScopeTenant, nt); err != nil {
			b.Fatal(err)
		}
	}
	for _, limit := range []int{catalog.DefaultLimit, catalog.MaxLimit} {
		b.Run(fmt.Sprintf("page=%d", limit), func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				p, err := svc.List(member, catalog.ScopeTenant, catalog.Query{Limit: limit})
				lat = append(lat, time.Since(start))
				if err != nil || len(p.Items) != min(limit, 500) {
					b.Fatalf("%d items, %v", len(p.Items), err)
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
		})
	}
}
