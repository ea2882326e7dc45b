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
	viaGateway := func() net.Conn {
		ws, err := w.dial(b, s.ID, owner, "")
		if err != nil {
			b.Fatal(err)
		}
		return websocket.NetConn(ctx, ws, websocket.MessageBinary)
	}
	mib := benchenv.Int(b, "STREAMSPACE_BENCH_STREAM_MIB", 64)
	for b.Loop() {
		gwRate, gwLat := measureStream(b, viaGateway(), mib)
		tcpRate, tcpLat := measureStream(b, direct(), mib)
		b.ReportMetric(gwRate, "gateway-MB/s")
		b.ReportMetric(tcpRate, "direct-MB/s")
		b.ReportMetric(tcpRate/gwRate, "throughput-ratio")
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		for _, q := range []struct {
			name string
			at   int
		}{{"p50", len(gwLat) / 2}, {"p99", len(gwLat) * 99 / 100}} {
			b.ReportMetric(us(gwLat[q.at]), "gateway-"+q.name+"-µs")
			b.ReportMetric(us(tcpLat[q.at]), "direct-"+q.name+"-µs")
			b.ReportMetric(float64(gwLat[q.at])/float64(tcpLat[q.at]), q.name+"-ratio")
		}
	}
}

// measureStream reads the greeting off c, echoes mib MiB through it (writing and reading
// at once) and times 2,000 small round trips; it returns MB/s each way and the sorted
// latencies, and closes c.
func measureStream(b *testing.B, c net.Conn, mib int) (float64, []time.Duration) {
	b.Helper()
	defer c.Close()
	greeted(b, c)
	block := make([]byte, 256<<10)
	_, _ = rand.Read(block)
	total := int64(mib) << 20
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
	lat := make([]time.Duration, 0, 2000)
	for range 2000 {
		t0 := time.Now()
		if err := roundTrip(c, msg); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return rate, lat
}
