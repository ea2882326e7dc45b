package gateway_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/quic-go/quic-go"

	"streamspace.dev/libs/benchenv"
	"streamspace.dev/libs/wire"
)

// BenchmarkCommandRoundTrip measures a command's round trip over a stream that the
// gateway side opens on the agent's dialled QUIC connection (as the gateway does for
// every desired-state push), against a plain TCP round trip on one persistent
// connection, measured in the same run with the two interleaved so both see the same
// machine noise. Both carry the same bytes: a wire preamble and a one-assignment
// DesiredState out, a preamble and an Ack back, framed by libs/wire; so the ratio is the
// cost of QUIC (TLS 1.3, userspace UDP) plus opening a stream per command.
//
// The QUIC side uses the gateway's transport settings (mTLS with ECDSA P-256, the
// wire ALPN) but not the Gateway type: the gateway offers no command API to call, and its
// push path starts at a PostgreSQL commit, which BenchmarkDeliveryLatency measures.
// Samples: 10,000 of each (STREAMSPACE_BENCH_RTT_SAMPLES overrides). Run with
// -benchtime=1x.
func BenchmarkCommandRoundTrip(b *testing.B) {
	samples := benchenv.Int(b, "STREAMSPACE_BENCH_RTT_SAMPLES", 10000)
	gwTLS, agentTLS := rttTLS(b)

	// The gateway side: accept the agent's connection, then open streams on it.
	ln, err := quic.ListenAddr("127.0.0.1:0", gwTLS, &quic.Config{KeepAlivePeriod: 5 * time.Second, MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	agentConn, err := quic.DialAddr(ctx, ln.Addr().String(), agentTLS, &quic.Config{KeepAlivePeriod: 5 * time.Second, MaxIdleTimeout: 30 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	defer agentConn.CloseWithError(0, "")
	gwConn, err := ln.Accept(ctx)
	if err != nil {
		b.Fatal(err)
	}
	// The agent answers every gateway-opened stream with an Ack, as it does for pushes.
	go func() {
		for {
			st, err := agentConn.AcceptStream(context.Background())
			if err != nil {
				return
			}
			go func() {
				defer st.Close()
				if err := answer(wire.NewReader(st, 0), wire.NewWriter(st), true); err != nil {
					st.CancelRead(0)
					return
				}
				// Both directions must finish before the stream's slot is freed for the
				// gateway's next one.
				_, _ = io.Copy(io.Discard, st)
			}()
		}
	}()

	// The TCP baseline: one persistent connection, the same framing, an echoing peer.
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer tl.Close()
	go func() {
		c, err := tl.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r, w := wire.NewReader(c, 0), wire.NewWriter(c)
		for first := true; answer(r, w, first) == nil; first = false {
		}
	}()
	tc, err := net.Dial("tcp", tl.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer tc.Close()
	tr, tw := wire.NewReader(tc, 0), wire.NewWriter(tc)
	tcpStarted := false

	quicRT := func(i int) time.Duration {
		began := time.Now()
		st, err := gwConn.OpenStreamSync(context.Background())
		if err != nil {
			b.Fatal(err)
		}
		if err := command(wire.NewWriter(st), i, true); err != nil {
			b.Fatal(err)
		}
		if err := readAck(wire.NewReader(st, 0), true); err != nil {
			b.Fatal(err)
		}
		d := time.Since(began)
		// Reading to the agent's FIN completes the stream and returns its credit; the
		// agent allows only so many open streams.
		_ = st.Close()
		_, _ = io.Copy(io.Discard, st)
		return d
	}
	tcpRT := func(i int) time.Duration {
		began := time.Now()
		if err := command(tw, i, !tcpStarted); err != nil {
			b.Fatal(err)
		}
		if err := readAck(tr, !tcpStarted); err != nil {
			b.Fatal(err)
		}
		tcpStarted = true
		return time.Since(began)
	}
	// Warm both paths (TLS session state, congestion windows, the scheduler) first.
	for i := range 200 {
		quicRT(i)
		tcpRT(i)
	}
	b.ResetTimer()
	for range b.N {
		q := make([]time.Duration, 0, samples)
		t := make([]time.Duration, 0, samples)
		for i := range samples {
			q = append(q, quicRT(i))
			t = append(t, tcpRT(i))
		}
		b.StopTimer()
		slices.Sort(q)
		slices.Sort(t)
		qp50, qp99 := q[len(q)/2], q[len(q)*99/100]
		tp50, tp99 := t[len(t)/2], t[len(t)*99/100]
		b.ReportMetric(us(qp50), "quic_p50_us")
		b.ReportMetric(us(qp99), "quic_p99_us")
		b.ReportMetric(us(tp50), "tcp_p50_us")
		b.ReportMetric(us(tp99), "tcp_p99_us")
		b.ReportMetric(float64(qp50)/float64(tp50), "p50_ratio")
		b.ReportMetric(float64(qp99)/float64(tp99), "p99_ratio")
		b.StartTimer()
	}
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1000 }

// command writes a one-assignment desired-state command, after the preamble if the
// stream is new (the TCP connection carries one preamble, then every command).
func command(w *wire.Writer, i int, first bool) error {
	if first {
		if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
			return err
		}
	}
	return w.Write(&wire.DesiredState{Assignments: []wire.Assignment{{
		SessionID: wire.SessionID("sess-" + strconv.Itoa(i)), TenantID: "aaaaaaaaaaaa", Generation: int64(i + 1), Desired: wire.DesiredRunning}}})
}

// answer reads one command and acknowledges its assignment; first says whether the
// stream's preambles are still to come.
func answer(r *wire.Reader, w *wire.Writer, first bool) error {
	if first {
		if _, err := r.ReadPreamble(); err != nil {
			return err
		}
	}
	m, err := r.Read()
	if err != nil {
		return err
	}
	ds, ok := m.(*wire.DesiredState)
	if !ok || len(ds.Assignments) != 1 {
		return fmt.Errorf("got %T", m)
	}
	if first {
		if err := w.WritePreamble(wire.StreamDesiredState); err != nil {
			return err
		}
	}
	return w.Write(&wire.Ack{SessionID: ds.Assignments[0].SessionID, Generation: ds.Assignments[0].Generation})
}

func readAck(r *wire.Reader, first bool) error {
	if first {
		if _, err := r.ReadPreamble(); err != nil {
			return err
		}
	}
	m, err := r.Read()
	if err != nil {
		return err
	}
	if _, ok := m.(*wire.Ack); !ok {
		return fmt.Errorf("got %T, want ack", m)
	}
	return nil
}

// rttTLS returns mutually authenticated TLS 1.3 configurations for the two ends, with
// ECDSA P-256 keys like the gateway's CA issues.
func rttTLS(b *testing.B) (server, client *tls.Config) {
	b.Helper()
	cert := func(name string) tls.Certificate {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			b.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			b.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(der)
		return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	}
	gw, ag := cert("localhost"), cert("agent")
	gwPool, agPool := x509.NewCertPool(), x509.NewCertPool()
	gwPool.AddCert(gw.Leaf)
	agPool.AddCert(ag.Leaf)
	server = &tls.Config{Certificates: []tls.Certificate{gw}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: agPool,
		NextProtos: wire.SupportedALPNs(), MinVersion: tls.VersionTLS13}
	client = &tls.Config{Certificates: []tls.Certificate{ag}, RootCAs: gwPool, ServerName: "localhost",
		NextProtos: wire.SupportedALPNs(), MinVersion: tls.VersionTLS13}
	return server, client
}
