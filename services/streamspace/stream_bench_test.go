package streamspace_test

import (
	"context"
	"crypto/rand"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/coder/websocket"

	"streamspace.dev/agent/backend/memory"
	"streamspace.dev/libs/benchenv"
	"streamspace.dev/libs/wire"
	gateway "streamspace.dev/services/agent-gateway"
	"streamspace.dev/services/sessions"
)

// BenchmarkStreamPath measures a session stream through the whole path — browser
// WebSocket, gateway, QUIC tunnel, agent, session socket — against a direct TCP
// connection to the same session socket, in the same run: throughput of a bulk echo
// (STREAMSPACE_BENCH_STREAM_MIB each way, default 64) and the latency of small round
// trips (64 bytes, 2,000). It reports each figure for both paths and the ratio
// gateway/direct (throughput: direct/gateway, so both ratios read "times worse").
func BenchmarkStreamPath(b *testing.B) {
	w := newStreamWorld(b, nil)
	mem, owner := w.mem, w.owner
	s := w.running(b, owner)

	ctx := context.Background()
	direct := func() net.Conn {
		rwc, err := mem.DialSession(ctx, wire.SessionID(s.ID), "", memory.StreamPort)
		if err != nil {
			b.Fatal(err)
		}
		return rwc.(net.Conn)
	}
	mib := benchenv.Int(b, "STREAMSPACE_BENCH_STREAM_MIB", 64)
	for b.Loop() {
		gwRate, gwLat := measureStream(b, w.stream(b, s.ID, owner), int64(mib)<<20, 2000)
		tcpRate, tcpLat := measureStream(b, direct(), int64(mib)<<20, 2000)
		b.ReportMetric(gwRate, "gateway-MB/s")
		b.ReportMetric(tcpRate, "direct-MB/s")
		b.ReportMetric(tcpRate/gwRate, "throughput-ratio")
		reportQuantiles(b, "", "gateway", gwLat, "direct", tcpLat)
	}
}

// BenchmarkForwardedStream measures what the hop between gateway replicas costs a
// session stream. Two all-in-one planes share one database and the agent's tunnel is on
// the first, the owner; the same session's stream opened through the second replica is
// forwarded to the owner's peer listener over mutual TLS. Against the stream opened
// through the owner itself, in the same run, it reports the figures of
// BenchmarkStreamPath (bulk echo throughput, STREAMSPACE_BENCH_STREAM_MIB each way,
// default 64; p50/p99 of 2,000 small round trips) and the time to open a stream: the
// WebSocket upgrade, from the dial to the 101, which through the second replica also
// holds its lookup of the owner and a TCP and TLS 1.3 handshake with it (each forward
// dials its own connection). The two paths take turns so both see the same machine: the
// bytes and round trips in forwardRounds rounds, each on a fresh stream, and the opens
// one by one, STREAMSPACE_BENCH_STREAM_OPENS of each (default 200). Each ratio reads
// "times worse" than through the owner. It fails only if the path does not work: a
// stream that does not carry its bytes, or one opened through the second replica that
// was not forwarded to the owner.
func BenchmarkForwardedStream(b *testing.B) {
	w := newStreamWorld(b, nil)
	fwd := startPlaneOn(b, w.Env, nil, nil)
	s := w.running(b, w.owner)
	w.wantTunnelHereAlone(b, fwd, gateway.AgentID(s.AgentID))
	mib := benchenv.Int(b, "STREAMSPACE_BENCH_STREAM_MIB", 64)
	opens := benchenv.Int(b, "STREAMSPACE_BENCH_STREAM_OPENS", 200)
	forwarded0, ownerOpened0, fwdOpened0 := fwd.count(b, forwardedSeries), w.count(b, openedSeries), fwd.count(b, openedSeries)
	streams := 0 // through each plane
	for b.Loop() {
		// Bytes each way per round, and the seconds each path took for all of them.
		per := max(int64(mib)<<20/forwardRounds/streamBlock, 1) * streamBlock
		mb := float64(per) / 1e6
		var fwdSecs, ownSecs float64
		var fwdLat, ownLat []time.Duration
		for range forwardRounds {
			rate, lat := measureStream(b, fwd.stream(b, s.ID, w.owner), per, 2000/forwardRounds)
			fwdSecs, fwdLat = fwdSecs+mb/rate, append(fwdLat, lat...)
			rate, lat = measureStream(b, w.stream(b, s.ID, w.owner), per, 2000/forwardRounds)
			ownSecs, ownLat = ownSecs+mb/rate, append(ownLat, lat...)
		}
		slices.Sort(fwdLat)
		slices.Sort(ownLat)
		upgrades := upgradeTimes(b, s.ID, w.owner, opens, fwd, w.plane)
		streams += forwardRounds + opens
		fwdRate, ownRate := mb*forwardRounds/fwdSecs, mb*forwardRounds/ownSecs
		b.ReportMetric(fwdRate, "forwarded-MB/s")
		b.ReportMetric(ownRate, "owner-MB/s")
		b.ReportMetric(ownRate/fwdRate, "throughput-ratio")
		reportQuantiles(b, "", "forwarded", fwdLat, "owner", ownLat)
		reportQuantiles(b, "open-", "forwarded", upgrades[0], "owner", upgrades[1])
	}
	// Every stream through the second replica went to the owner, which opened them all on
	// the tunnel: the figures above are the forwarded path's.
	if got := fwd.count(b, forwardedSeries) - forwarded0; got != streams {
		b.Fatalf("the second replica forwarded %d streams, want %d", got, streams)
	}
	if got := fwd.count(b, openedSeries) - fwdOpened0; got != 0 {
		b.Fatalf("the second replica opened %d streams on a tunnel it does not hold", got)
	}
	if got := w.count(b, openedSeries) - ownerOpened0; got != 2*streams {
		b.Fatalf("the owner opened %d streams, want %d", got, 2*streams)
	}
}

// forwardRounds is how many turns each path of BenchmarkForwardedStream takes at the bulk
// echo and the round trips: enough that a burst of the machine's other load does not
// land on one path alone.
const forwardRounds = 8

// stream opens a stream to session id as token through p, as a browser does, and returns
// it as a net.Conn.
func (p *plane) stream(b *testing.B, id sessions.ID, token string) net.Conn {
	b.Helper()
	ws, err := p.dial(b, id, token, "")
	if err != nil {
		b.Fatal(err)
	}
	return websocket.NetConn(context.Background(), ws, websocket.MessageBinary)
}

// upgradeTimes opens n streams to session id as token through each of planes in turn,
// timing each upgrade from the dial to the 101; each stream must greet before it is
// closed. It returns each plane's times, sorted.
func upgradeTimes(b *testing.B, id sessions.ID, token string, n int, planes ...*plane) [][]time.Duration {
	b.Helper()
	times := make([][]time.Duration, len(planes))
	for range n {
		for i, p := range planes {
			start := time.Now()
			ws, err := p.dial(b, id, token, "")
			took := time.Since(start)
			if err != nil {
				b.Fatal(err)
			}
			greeted(b, websocket.NetConn(context.Background(), ws, websocket.MessageBinary))
			if err := ws.Close(websocket.StatusNormalClosure, ""); err != nil {
				b.Fatalf("closing: %v", err)
			}
			times[i] = append(times[i], took)
		}
	}
	for _, t := range times {
		slices.Sort(t)
	}
	return times
}

// reportQuantiles reports the p50 and p99 of two sorted samples of the same size, in
// µs, as "<name>-<what>p50-µs" and so on (what, if not empty, ends in "-"), and the
// ratio of each quantile, name over base, as "<what>p50-ratio": "times worse".
func reportQuantiles(b *testing.B, what, name string, lat []time.Duration, base string, baseLat []time.Duration) {
	b.Helper()
	us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
	for _, q := range []struct {
		name string
		at   int
	}{{"p50", len(lat) / 2}, {"p99", len(lat) * 99 / 100}} {
		b.ReportMetric(us(lat[q.at]), name+"-"+what+q.name+"-µs")
		b.ReportMetric(us(baseLat[q.at]), base+"-"+what+q.name+"-µs")
		b.ReportMetric(float64(lat[q.at])/float64(baseLat[q.at]), what+q.name+"-ratio")
	}
}

// streamBlock is the size of measureStream's writes.
const streamBlock = 256 << 10

// measureStream reads the greeting off c, echoes total bytes through it (a multiple of
// streamBlock; writing and reading at once) and times trips small round trips; it returns
// MB/s each way and the sorted latencies, and closes c.
func measureStream(b *testing.B, c net.Conn, total int64, trips int) (float64, []time.Duration) {
	b.Helper()
	defer c.Close()
	greeted(b, c)
	block := make([]byte, streamBlock)
	_, _ = rand.Read(block)
	start := time.Now()
	wrote := make(chan error, 1)
	go func() {
		for n := int64(0); n < total; n += int64(len(block)) {
			if _, err := c.Write(block); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	if _, err := io.CopyN(io.Discard, c, total); err != nil {
		b.Fatal(err)
	}
	if err := <-wrote; err != nil {
		b.Fatal(err)
	}
	rate := float64(total) / 1e6 / time.Since(start).Seconds()
	msg := make([]byte, 64)
	lat := make([]time.Duration, 0, trips)
	for range trips {
		t0 := time.Now()
		if err := roundTrip(c, msg); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return rate, lat
}
