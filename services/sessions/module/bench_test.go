package module_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"
	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/benchenv"
	"streamspace.dev/libs/pgtest"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
)

// BenchmarkAPI measures the sessions API through its real HTTP transport on 127.0.0.1
// over real PostgreSQL: 50 clients (STREAMSPACE_BENCH_CLIENTS overrides), each a member of
// one tenant with its own token and its own keep-alive connection, against a server
// whose pool holds 40 connections (STREAMSPACE_BENCH_CONNS overrides), creating sessions and
// listing their own (a page of 50). Quotas are set high so that every create is accepted
// and takes the full quota path. With -benchtime=40x each phase below makes 2,000 of each
// request. The goals of the sessions issue are create p99 ≤ 20 ms and list p99 ≤ 10 ms
// under 50 concurrent clients.
//
// It reports three kinds of figure, because "latency under 50 clients" means nothing
// without the load those clients offer:
//
//   - Saturation (closed loop: creates/s, lists/s, create-p50-ms …): every client sends
//     its next request as soon as the last one answers, alternating create and list. The
//     server is never idle, so this is the most it can do, and by Little's law the
//     latency is clients / throughput: queueing, which grows with the clients and shrinks
//     only as the work per request does. It is the capacity figure.
//   - Offered load (open loop: open-rate/s, open-create-p50-ms …): the same 50 clients
//     each send on a fixed schedule whose total is a fraction (STREAMSPACE_BENCH_LOAD,
//     default 0.5) of the saturation throughput just measured, whether or not earlier
//     requests have answered. Latency counts from the scheduled send, so a stall that
//     delays later sends is charged to them (no coordinated omission). This is the
//     latency a user sees while the service runs below capacity: the figure to hold
//     against the goals, together with the rate it was measured at.
//   - Cost (create-cpu-ms, create-pg-cpu-ms, create-pg-rt, create-allocs, and list-…):
//     separate closed-loop passes of creates only and lists only, divided by the requests
//     made: CPU milliseconds of this process (server and clients: the profile shows the
//     split) and of the PostgreSQL backends serving the test's database (utime + stime
//     from /proc), database round trips through the server's pool, and heap allocations.
//     These do not depend on the machine's load and are what to compare between changes.
//
// The load average is logged next to the figures; timings on a shared machine need it.
func BenchmarkAPI(b *testing.B) {
	clients := benchenv.Int(b, "STREAMSPACE_BENCH_CLIENTS", 50)
	trips := &pgtest.RoundTrips{}
	conns := 0 // the harness's pool size
	if os.Getenv("STREAMSPACE_BENCH_CONNS") != "" {
		conns = benchenv.Int(b, "STREAMSPACE_BENCH_CONNS", 0)
	}
	h := startWith(b, func(c *pgxpool.Config) {
		c.ConnConfig.Tracer = multitracer.New(c.ConnConfig.Tracer, trips)
		if conns > 0 {
			c.MaxConns = int32(conns)
		}
	})
	many := int64(1 << 40)
	sys := auth.AsSystem(context.Background(), h.acme, "bench")
	if err := postgres.New(h.env.DB).SetSettings(sys, sessions.Settings{
		Tenant: sessions.Quota{MaxSessions: &many}, User: sessions.Quota{MaxSessions: &many}}, "bench"); err != nil {
		b.Fatal(err)
	}
	pg := newBackendCPU(b, h.env.URL)
	// One keep-alive connection per client, as 50 browsers would have: the default
	// transport keeps only two idle connections per host and would measure TCP set-up.
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	tokens := make([]string, clients)
	for i := range tokens {
		tokens[i] = h.token(h.acme, fmt.Sprintf("user-%02d", i), auth.RoleMember)
	}
	body := []byte(`{"template":"desk"}`)
	call := func(method, path, token string, body []byte, want int) error {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, h.base+path, rd)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != want {
			err = fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return err
	}
	// ops are the requests a client makes; ops[k] is request kind k.
	type op func(client int) error
	create := func(i int) error { return call("POST", "/api/v1/sessions", tokens[i], body, http.StatusCreated) }
	list := func(i int) error { return call("GET", "/api/v1/sessions", tokens[i], nil, http.StatusOK) }
	// run has every client make rounds rounds of ops, and returns the latencies of each
	// kind of op. With every == 0 a client sends each request when the last one answers
	// (closed loop). Otherwise client i schedules request n of its sequence at
	// began + (i/clients + n) * every, sends it then or, if it is behind, at once, and
	// counts its latency from the scheduled time (open loop).
	run := func(rounds int, every time.Duration, ops ...op) [][]time.Duration {
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			firstErr atomic.Pointer[error]
		)
		lat := make([][]time.Duration, len(ops))
		began := time.Now()
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				mine := make([][]time.Duration, len(ops))
				n := 0
				for range rounds {
					for k, o := range ops {
						start := time.Now()
						if every > 0 {
							start = began.Add(time.Duration(i)*every/time.Duration(clients) + time.Duration(n)*every)
							time.Sleep(time.Until(start))
						}
						n++
						if err := o(i); err != nil {
							firstErr.CompareAndSwap(nil, &err)
							return
						}
						mine[k] = append(mine[k], time.Since(start))
					}
				}
				mu.Lock()
				for k := range lat {
					lat[k] = append(lat[k], mine[k]...)
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		if err := firstErr.Load(); err != nil {
			b.Fatal(*err)
		}
		return lat
	}
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	percentiles := func(prefix string, lat []time.Duration) {
		slices.Sort(lat)
		b.ReportMetric(ms(lat[len(lat)/2]), prefix+"-p50-ms")
		b.ReportMetric(ms(lat[len(lat)*99/100]), prefix+"-p99-ms")
	}
	logLoad := func(when string) {
		l, _ := os.ReadFile("/proc/loadavg")
		b.Logf("load average %s: %s", when, strings.Join(strings.Fields(string(l))[:3], " "))
	}

	// Warm up connections and the token and tenant caches, and give every user a full
	// page to list.
	run(clients, 0, create, list)
	logLoad("before")
	b.ResetTimer()

	// Saturation: closed loop.
	began := time.Now()
	lat := run(b.N, 0, create, list)
	elapsed := time.Since(began)
	pairs := float64(len(lat[0])) / elapsed.Seconds()
	b.ReportMetric(pairs, "creates/s")
	b.ReportMetric(float64(len(lat[1]))/elapsed.Seconds(), "lists/s")
	percentiles("create", lat[0])
	percentiles("list", lat[1])

	// Offered load: open loop at a fraction of the pairs per second just measured. Each
	// client sends one request every `every`, alternating create and list.
	rate := benchenv.Fraction(b, "STREAMSPACE_BENCH_LOAD", 0.5) * 2 * pairs // requests per second, both kinds
	every := time.Duration(float64(clients) / rate * float64(time.Second))
	lat = run(b.N, every, create, list)
	b.ReportMetric(rate, "open-rate/s")
	percentiles("open-create", lat[0])
	percentiles("open-list", lat[1])

	// Cost: one kind of request at a time, closed loop.
	for _, c := range []struct {
		name string
		op   op
	}{{"create", create}, {"list", list}} {
		before := sample(pg, trips)
		n := len(run(b.N, 0, c.op)[0])
		after := sample(pg, trips)
		per := float64(n)
		b.ReportMetric(ms(after.proc-before.proc)/per, c.name+"-cpu-ms")
		var pgCPU time.Duration
		for pid, t := range after.pg {
			pgCPU += t - before.pg[pid]
		}
		b.ReportMetric(ms(pgCPU)/per, c.name+"-pg-cpu-ms")
		b.ReportMetric(float64(after.trips-before.trips)/per, c.name+"-pg-rt")
		b.ReportMetric(float64(after.mallocs-before.mallocs)/per, c.name+"-allocs")
	}
	b.StopTimer()
	logLoad("after")
	b.ReportMetric(0, "ns/op") // an iteration is 50 clients' work; its time says nothing
}

// backendCPU reads the CPU time of the PostgreSQL backends connected to one database.
type backendCPU struct {
	b    testing.TB
	conn *pgx.Conn
}

func newBackendCPU(b testing.TB, url string) *backendCPU {
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close(context.Background()) })
	return &backendCPU{b: b, conn: conn}
}

// read returns utime + stime of each backend of the database but its own.
func (p *backendCPU) read() map[int]time.Duration {
	rows, _ := p.conn.Query(context.Background(),
		`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`)
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		p.b.Fatal(err)
	}
	out := map[int]time.Duration{}
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // ended since
		}
		// The fields after the command (which may hold spaces) in parentheses: state is
		// the first, utime and stime the 12th and 13th, in clock ticks of 10 ms (Linux's
		// USER_HZ is 100 on every architecture Go supports).
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		u, _ := strconv.ParseInt(f[11], 10, 64)
		k, _ := strconv.ParseInt(f[12], 10, 64)
		out[int(pid)] = time.Duration(u+k) * 10 * time.Millisecond
	}
	return out
}

// usage is a sample of the cumulative costs BenchmarkAPI divides by requests.
type usage struct {
	proc    time.Duration
	pg      map[int]time.Duration // by backend
	trips   int64
	mallocs uint64
}

// sample reads the process's CPU time and allocations, the database's backends' CPU time
// and the round trips so far. A backend that started since the last sample counts from
// zero, one that ended is lost (the pool keeps its connections, so neither happens
// much).
func sample(pg *backendCPU, trips *pgtest.RoundTrips) usage {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return usage{proc: time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), pg: pg.read(), trips: trips.Load(), mallocs: ms.Mallocs}
}
