package gateway_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
)

// BenchmarkDeliveryLatency measures the time from an assignment's commit (Assign
// returning) to its receipt by the agent, over real PostgreSQL NOTIFY and real QUIC on
// loopback, with 1, 100 and 1,000 connected agents. Run it with -benchtime=1x: each run
// takes a fixed number of samples and reports their p50 and p99.
func BenchmarkDeliveryLatency(b *testing.B) {
	for _, n := range []int{1, 100, 1000} {
		b.Run(fmt.Sprintf("agents=%d", n), func(b *testing.B) {
			h := newHarness(b, 1, func(c *gateway.Config) { c.Resync = time.Minute })
			_, ctx := h.tenant("bench")
			type conn struct {
				e  enrolled
				ag *testAgent
			}
			conns := make([]conn, n)
			var wg sync.WaitGroup
			sem := make(chan struct{}, 16)
			for i := range conns {
				wg.Go(func() {
					sem <- struct{}{}
					defer func() { <-sem }()
					e := h.enroll(h.gw(), h.token(ctx, fmt.Sprintf("a%d", i)))
					ag := h.connect(h.gw(), e)
					ag.nextPush(10 * time.Second)
					conns[i] = conn{e, ag}
				})
			}
			wg.Wait()
			var mu sync.Mutex
			received := map[wire.SessionID]time.Time{}
			for _, c := range conns {
				go func() {
					for p := range c.ag.pushes {
						now := time.Now()
						mu.Lock()
						for _, a := range p.assignments() {
							received[a.SessionID] = now
						}
						mu.Unlock()
					}
				}()
			}
			const samples = 300
			b.ResetTimer()
			var lat []time.Duration
			for range b.N {
				for i := range samples {
					c := conns[i%n]
					s := gateway.SessionID(fmt.Sprintf("s-%d-%d", len(lat), i))
					if _, err := h.svc().Assign(ctx, gateway.AssignmentInput{SessionID: s, AgentID: c.e.resp.AgentID, Desired: wire.DesiredRunning}); err != nil {
						b.Fatal(err)
					}
					committed := time.Now()
					deadline := committed.Add(5 * time.Second)
					for {
						mu.Lock()
						at, ok := received[s]
						mu.Unlock()
						if ok {
							lat = append(lat, at.Sub(committed))
							break
						}
						if time.Now().After(deadline) {
							b.Fatalf("%s not delivered", s)
						}
						time.Sleep(50 * time.Microsecond)
					}
				}
			}
			b.StopTimer()
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50_ms")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99_ms")
		})
	}
}

// BenchmarkReconnectStorm connects 1,000 agents, restarts the gateway on the same address
// and reports how long until every agent is back (from the moment the old replica began
// to drain, and from the moment the new one listened), how long the old one took to
// drain, the peak accept rate, the dials that failed on the way, and the CPU time this
// process (gateway and agents alike) spent per reconnect: that last figure depends far
// less on how busy the machine is than the times do. The agents redial with jittered
// exponential backoff from 100 ms, as the real agent does. The gateway and the agents run
// with production liveness settings (keep-alives every 5 s, heartbeats every 10 s, the
// agent's 10 s handshake timeout): at test speed the keep-alives of the agents already
// back would cost more than the storm itself. Run it with -benchtime=1x.
func BenchmarkReconnectStorm(b *testing.B) {
	const n = 1000
	h := newHarness(b, 1, productionLiveness)
	_, ctx := h.tenant("storm")
	enr := make([]enrolled, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range enr {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			enr[i] = h.enroll(h.gw(), h.token(ctx, fmt.Sprintf("a%d", i)))
		})
	}
	wg.Wait()
	for range b.N {
		gw := h.replicas[0].gw
		addr := gw.Addr()
		var mu sync.Mutex
		var connects []time.Time
		var failedDials atomic.Int64
		stop := make(chan struct{})
		up := make(chan struct{}, n)
		// The fleet's first connections are set-up, not the storm: 32 at a time, as the
		// scale benchmark connects, so that a busy machine does not turn them into a storm
		// of their own.
		setup := make(chan struct{}, 32)
		for _, e := range enr {
			wg.Go(func() {
				first := true
				delay := 100 * time.Millisecond
				for {
					select {
					case <-stop:
						return
					default:
					}
					if first {
						setup <- struct{}{}
					}
					ag, err := connectWith(b, addr, e, agentDial, nil)
					if first {
						<-setup
					}
					if err != nil {
						if !first {
							failedDials.Add(1)
						}
						time.Sleep(time.Duration(rand.Int64N(int64(delay))))
						delay = min(2*delay, 30*time.Second)
						continue
					}
					delay = 100 * time.Millisecond
					mu.Lock()
					connects = append(connects, time.Now())
					mu.Unlock()
					if !first {
						up <- struct{}{}
					}
					first = false
					select {
					case <-ag.conn.Context().Done():
					case <-stop:
						_ = ag.conn.CloseWithError(0, "")
						return
					}
				}
			})
		}
		eventually(b, 60*time.Second, func() error {
			mu.Lock()
			defer mu.Unlock()
			if len(connects) < n {
				return fmt.Errorf("%d of %d connected", len(connects), n)
			}
			return nil
		})
		b.ResetTimer()
		cpu0 := processCPU(b)
		restart := time.Now()
		cctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		_ = gw.Close(cctx)
		cancel()
		closed := time.Now()
		cfg := fastConfig()
		productionLiveness(&cfg)
		cfg.Listen, cfg.GatewayID = addr, "gw-restarted"
		ngw, err := gateway.StartGateway(context.Background(), cfg, gateway.GatewayOptions{Store: h.store, Enroller: nil,
			ConnConfig: h.env.DB.Pool().Config().ConnConfig, Logger: testLogger()})
		if err != nil {
			b.Fatal(err)
		}
		listening := time.Now()
		h.replicas[0].gw = ngw
		b.Cleanup(func() { _ = ngw.Close(context.Background()) })
		for range n {
			select {
			case <-up:
			case <-time.After(60 * time.Second):
				b.Fatal("agents did not all come back within 60 s")
			}
		}
		back := time.Now()
		cpu := processCPU(b) - cpu0
		b.StopTimer()
		close(stop)
		mu.Lock()
		buckets := map[int64]int{}
		for _, c := range connects[n:] {
			buckets[c.UnixNano()/int64(100*time.Millisecond)]++
		}
		mu.Unlock()
		peak := 0
		for _, v := range buckets {
			peak = max(peak, v)
		}
		b.ReportMetric(back.Sub(restart).Seconds(), "all_back_s")
		b.ReportMetric(back.Sub(listening).Seconds(), "back_after_listen_s")
		b.ReportMetric(float64(peak*10), "peak_accepts/s")
		b.ReportMetric(closed.Sub(restart).Seconds(), "drain_s")
		b.ReportMetric(float64(failedDials.Load()), "failed_dials")
		b.ReportMetric(float64(cpu.Microseconds())/1000/n, "cpu_ms/reconnect")
		wg.Wait()
	}
}

// processCPU is this process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// productionLiveness sets the gateway's liveness settings to their production defaults
// (and leaves the sweep to notifications), for benchmarks.
func productionLiveness(c *gateway.Config) {
	c.Resync = time.Minute
	c.HeartbeatInterval, c.DegradedAfter, c.OfflineAfter = 0, 0, 0
	c.OwnerHeartbeat, c.ClaimCheck, c.HeartbeatFlush = 0, 0, 0
	c.KeepAlive, c.IdleTimeout = 0, 0
}
