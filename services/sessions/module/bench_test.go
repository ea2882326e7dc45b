package module_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/services/sessions"
	"streamspace.dev/services/sessions/postgres"
)

// benchClients returns the number of concurrent API clients of BenchmarkAPI: 50, or
// STREAMSPACE_BENCH_CLIENTS (to see how latency grows with concurrency).
func benchClients(b *testing.B) int {
	s := os.Getenv("STREAMSPACE_BENCH_CLIENTS")
	if s == "" {
		return 50
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 {
		b.Fatalf("STREAMSPACE_BENCH_CLIENTS=%q: want a positive integer", s)
	}
	return n
}

// BenchmarkAPI measures the sessions API through its real HTTP transport on 127.0.0.1
// over real PostgreSQL: 50 clients, each a member of one tenant with its own token, run
// at once (STREAMSPACE_BENCH_CLIENTS overrides), each alternating a create and a list of its own sessions (a page of 50). One
// iteration is one create and one list per client, so -benchtime=40x gives 2,000 of each.
// Quotas are set high so that every create is accepted and takes the full quota path.
// It reports the p50 and p99 latency of each operation in milliseconds, as the client
// sees it. The goals of the sessions issue are create p99 ≤ 20 ms and list p99 ≤ 10 ms.
func BenchmarkAPI(b *testing.B) {
	clients := benchClients(b)
	h := start(b)
	many := int64(1 << 40)
	sys := auth.AsSystem(context.Background(), h.acme, "bench")
	if err := postgres.New(h.env.DB).SetSettings(sys, sessions.Settings{
		Tenant: sessions.Quota{MaxSessions: &many}, User: sessions.Quota{MaxSessions: &many}}, "bench"); err != nil {
		b.Fatal(err)
	}
	// One keep-alive connection per client, as 50 browsers would have: the default
	// transport keeps only two idle connections per host and would measure TCP set-up.
	client := &http.Client{Transport: &http.Transport{MaxIdleConns: clients, MaxIdleConnsPerHost: clients}}
	defer client.CloseIdleConnections()
	tokens := make([]string, clients)
	for i := range tokens {
		tokens[i] = h.token(h.acme, fmt.Sprintf("user-%02d", i), auth.RoleMember)
	}
	body := []byte(`{"template":"desk"}`)
	call := func(method, path, token string, body []byte, want int) (time.Duration, error) {
		var rd io.Reader
		if body != nil {
			rd = bytes.NewReader(body)
		}
		req, err := http.NewRequest(method, h.base+path, rd)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		d := time.Since(start)
		if err == nil && resp.StatusCode != want {
			err = fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, b)
		}
		return d, err
	}
	// run has every client do rounds create+list pairs at once and returns the latencies.
	run := func(rounds int) (creates, lists []time.Duration) {
		var (
			mu       sync.Mutex
			wg       sync.WaitGroup
			firstErr atomic.Pointer[error]
		)
		for i := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := make([]time.Duration, 0, rounds)
				l := make([]time.Duration, 0, rounds)
				for range rounds {
					d, err := call("POST", "/api/v1/sessions", tokens[i], body, http.StatusCreated)
					if err == nil {
						c = append(c, d)
						d, err = call("GET", "/api/v1/sessions", tokens[i], nil, http.StatusOK)
						l = append(l, d)
					}
					if err != nil {
						firstErr.CompareAndSwap(nil, &err)
						return
					}
				}
				mu.Lock()
				creates, lists = append(creates, c...), append(lists, l...)
				mu.Unlock()
			}()
		}
		wg.Wait()
		if err := firstErr.Load(); err != nil {
			b.Fatal(*err)
		}
		return creates, lists
	}
	// Warm up connections, prepared statements and the token and tenant caches, and give
	// every user a full page to list.
	run(clients)
	b.ResetTimer()
	began := time.Now()
	creates, lists := run(b.N)
	elapsed := time.Since(began)
	b.StopTimer()
	// The clients send back to back, so by Little's law latency is clients / throughput
	// once the server saturates: the rate tells whether a latency is queueing or work.
	b.ReportMetric(float64(len(creates))/elapsed.Seconds(), "creates/s")
	b.ReportMetric(float64(len(lists))/elapsed.Seconds(), "lists/s")
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, m := range []struct {
		name string
		lat  []time.Duration
	}{{"create", creates}, {"list", lists}} {
		slices.Sort(m.lat)
		b.ReportMetric(ms(m.lat[len(m.lat)/2]), m.name+"-p50-ms")
		b.ReportMetric(ms(m.lat[len(m.lat)*99/100]), m.name+"-p99-ms")
	}
	b.ReportMetric(0, "ns/op") // an iteration is 50 clients' work; its time says nothing
}
