// Benchmarks for the figures the schema-per-tenant design must meet. Each b.N iteration
// does a fixed, meaningful amount of work, so run them once each:
//
//	cd tenants && go test -run '^$' -bench . -benchtime=1x -timeout 30m .
//
// STREAMSPACE_BENCH_TENANTS overrides the 1,000 tenants of BenchmarkProvisioning and
// BenchmarkTenantReadLatency. The figures are reported with b.ReportMetric and never
// asserted: timings belong to the machine, not to the test suite.
package tenants_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"streamspace.dev/libs/benchenv"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants"
	"streamspace.dev/tenants/tenantstest"
)

// provisionWorkers is how many goroutines call Manager.Create at once: what an operator
// onboarding tenants in bulk would reasonably run against a 2-core database.
const provisionWorkers = 4

// provision creates n tenants with slugs prefix-0 … prefix-(n-1), provisionWorkers at a
// time, and returns them in slug order with the wall time it took.
func provision(b *testing.B, m *tenants.Manager, prefix string, n int) ([]tenants.Tenant, time.Duration) {
	b.Helper()
	ctx := context.Background()
	out := make([]tenants.Tenant, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	start := time.Now()
	for range provisionWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t, _, err := m.Create(ctx, fmt.Sprintf("%s-%d", prefix, i), "Bench tenant")
				if err != nil {
					mu.Lock()
					firstErr = cmpErr(firstErr, fmt.Errorf("creating tenant %d: %w", i, err))
					mu.Unlock()
					return
				}
				out[i] = t
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return out, elapsed
}

func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}

// openDB returns a tenantdb.DB with the default status TTL, as services run it: the
// status check is served from its cache on the hot path.
func openDB(b *testing.B, env *tenantstest.Env) *tenantdb.DB {
	b.Helper()
	db, err := tenantdb.Open(context.Background(), env.URL, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	return db
}

// seed writes rows audit rows into each tenant through InTenant and returns their ids.
func seed(b *testing.B, db *tenantdb.DB, ts []tenants.Tenant, rows int) map[tenant.ID][]int64 {
	b.Helper()
	ids := make(map[tenant.ID][]int64, len(ts))
	for _, t := range ts {
		err := db.InTenant(tenantstest.Context(t.ID), func(ctx context.Context, tx pgx.Tx) error {
			r, err := tx.Query(ctx, `INSERT INTO audit_log (actor, action, target)
				SELECT 'bench', 'session.start', 'session-' || g FROM generate_series(1, $1) g RETURNING id`, rows)
			if err != nil {
				return err
			}
			ids[t.ID], err = pgx.CollectRows(r, pgx.RowTo[int64])
			return err
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	return ids
}

// readAudit is the "simple indexed read" of the benchmarks: one row by primary key.
const readAudit = "SELECT action FROM audit_log WHERE id = $1"

func tenantRead(ctx context.Context, db *tenantdb.DB, id int64) error {
	return db.InTenant(ctx, func(ctx context.Context, tx pgx.Tx) error {
		var action string
		return tx.QueryRow(ctx, readAudit, id).Scan(&action)
	})
}

// BenchmarkTenantDBOverhead compares a transaction through InTenant with a plain
// transaction doing the same read on the same pool. Each iteration runs 2,000 of each in
// alternating blocks, first one side then the other, so drift in the machine (autovacuum,
// CPU frequency, other tenants of the host) lands on both sides alike.
func BenchmarkTenantDBOverhead(b *testing.B) {
	env := tenantstest.New(b)
	db := openDB(b, env)
	tn, ctx := env.Tenant(b, "overhead")
	ids := seed(b, db, []tenants.Tenant{tn}, 1000)[tn.ID]
	plainSQL := "SELECT action FROM " + pgx.Identifier{tn.ID.Schema(), "audit_log"}.Sanitize() + " WHERE id = $1"
	plainRead := func(id int64) error {
		return pgx.BeginTxFunc(ctx, db.Pool(), pgx.TxOptions{}, func(tx pgx.Tx) error {
			var action string
			return tx.QueryRow(ctx, plainSQL, id).Scan(&action)
		})
	}
	const perSide, block = 2000, 100
	rng := rand.New(rand.NewPCG(1, 2))
	side := func(tenantSide bool, n int) time.Duration {
		start := time.Now()
		for range n {
			id := ids[rng.IntN(len(ids))]
			var err error
			if tenantSide {
				err = tenantRead(ctx, db, id)
			} else {
				err = plainRead(id)
			}
			if err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start)
	}
	// Warm the pool's connections, the server's caches and the status cache.
	side(true, 200)
	side(false, 200)

	var tenantTime, plainTime time.Duration
	b.ResetTimer()
	for i := range b.N {
		for j := range perSide / block {
			if (i+j)%2 == 0 {
				tenantTime += side(true, block)
				plainTime += side(false, block)
			} else {
				plainTime += side(false, block)
				tenantTime += side(true, block)
			}
		}
	}
	b.StopTimer()
	n := float64(b.N * perSide)
	tenantNs, plainNs := float64(tenantTime.Nanoseconds())/n, float64(plainTime.Nanoseconds())/n
	b.ReportMetric(tenantNs, "ns/tenant-tx")
	b.ReportMetric(plainNs, "ns/plain-tx")
	b.ReportMetric(tenantNs/plainNs, "ratio")
}

// BenchmarkProvisioning creates and migrates benchTenants tenants per iteration, each
// iteration with fresh slugs, provisionWorkers at a time.
func BenchmarkProvisioning(b *testing.B) {
	env := tenantstest.New(b)
	n := benchenv.Int(b, "STREAMSPACE_BENCH_TENANTS", 1000)
	var total time.Duration
	b.ResetTimer()
	for i := range b.N {
		_, d := provision(b, env.Tenants, fmt.Sprintf("prov%d", i), n)
		total += d
	}
	b.StopTimer()
	perIter := total.Seconds() / float64(b.N)
	b.ReportMetric(perIter, "s/total")
	b.ReportMetric(perIter*1000/float64(n), "ms/tenant")
}

// BenchmarkTenantReadLatency measures the latency distribution of one indexed read
// through InTenant, each read on a random tenant, in a database holding 10 tenant schemas
// and in one holding benchTenants. The question is whether thousands of schemas (catalog
// size, per-connection catalog caches, the status cache) slow every tenant down.
//
// Both databases are provisioned first and then read in alternating blocks, so the
// aftermath of provisioning (checkpoints, autovacuum of the catalogs) and any other drift
// of the machine falls on both sides alike rather than on whichever was measured second.
// Each side uses its own tenantdb.DB with the default status TTL, as services run it.
func BenchmarkTenantReadLatency(b *testing.B) {
	n := benchenv.Int(b, "STREAMSPACE_BENCH_TENANTS", 1000)
	const samples, block = 10000, 500
	type side struct {
		db   *tenantdb.DB
		ts   []tenants.Tenant
		rows map[tenant.ID][]int64
		lat  []time.Duration
	}
	newSide := func(count int) *side {
		env := tenantstest.New(b)
		s := &side{db: openDB(b, env)}
		s.ts, _ = provision(b, env.Tenants, "read", count)
		s.rows = seed(b, s.db, s.ts, 10)
		// Start both sides from clean buffers rather than with provisioning's WAL pending.
		if _, err := env.Pool.Exec(context.Background(), "CHECKPOINT"); err != nil {
			b.Fatal(err)
		}
		return s
	}
	few, many := newSide(min(10, n)), newSide(n)
	rng := rand.New(rand.NewPCG(3, 4))
	read := func(s *side, count int) {
		for range count {
			t := s.ts[rng.IntN(len(s.ts))]
			r := s.rows[t.ID]
			ctx, id := tenantstest.Context(t.ID), r[rng.IntN(len(r))]
			start := time.Now()
			if err := tenantRead(ctx, s.db, id); err != nil {
				b.Fatal(err)
			}
			s.lat = append(s.lat, time.Since(start))
		}
	}
	// Warm up: every tenant once, so each table is in the server's and the connection's
	// caches as it would be in a running service.
	for _, s := range []*side{few, many} {
		for _, t := range s.ts {
			if err := tenantRead(tenantstest.Context(t.ID), s.db, s.rows[t.ID][0]); err != nil {
				b.Fatal(err)
			}
		}
	}

	b.ResetTimer()
	for i := range b.N {
		for j := range samples / block {
			if (i+j)%2 == 0 {
				read(few, block)
				read(many, block)
			} else {
				read(many, block)
				read(few, block)
			}
		}
	}
	b.StopTimer()

	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	p50Few, p99Few := percentile(few.lat, 50), percentile(few.lat, 99)
	p50Many, p99Many := percentile(many.lat, 50), percentile(many.lat, 99)
	b.ReportMetric(us(p50Few), "p50-10-µs")
	b.ReportMetric(us(p99Few), "p99-10-µs")
	b.ReportMetric(us(p50Many), fmt.Sprintf("p50-%d-µs", n))
	b.ReportMetric(us(p99Many), fmt.Sprintf("p99-%d-µs", n))
	b.ReportMetric(us(p99Many)/us(p99Few), "p99-ratio")
}

// percentile returns the p-th percentile (nearest rank) of d, sorting it.
func percentile(d []time.Duration, p int) time.Duration {
	slices.Sort(d)
	rank := (len(d)*p + 99) / 100
	return d[max(rank, 1)-1]
}
