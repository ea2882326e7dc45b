package gateway

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Replicas reach each other only over mutual TLS: a forwarded stream carries its
// caller's token, and the pod network is not trusted with it. Each replica holds a
// short-lived certificate from the internal CA (IssueReplica) that names it by ReplicaURI;
// its peer listener accepts only such certificates, and its forwarder presents its own
// and accepts only the owner replica's. Agents' certificates come from the same CA but
// can never name a replica (ReplicaOf).

// Peer TLS timing.
const (
	// replicaCertTTL is a replica certificate's lifetime. Short, since nothing revokes
	// it: a replica's key lives in its memory only, and a copy of it is useless hours
	// later. Issuing one is local (the CA key is in memory), so renewing often is cheap.
	replicaCertTTL = 12 * time.Hour
	// peerHandshakeTimeout bounds a peer's TLS handshake on the peer listener; the
	// forwarder gives up on its side after forwardDialTimeout.
	peerHandshakeTimeout = 5 * time.Second
	// peerHandshakes bounds the peer listener's handshakes in progress; further
	// connections wait in the kernel's backlog.
	peerHandshakes = 64
	// renewRetry is how soon a failed renewal is tried again.
	renewRetry = time.Minute
)

// Peer certificate refusals, by what was wrong: the label values of peerRefused.
var (
	errNoPeerCert = errors.New("no peer certificate")
	// errWrongReplica refuses a replica certificate that names another replica than the
	// owner the forwarder meant to reach (a stale address now held by another replica).
	errWrongReplica = errors.New("the certificate names another gateway replica")
)

// peerIdentity is this replica's peer certificate, renewed while the replica runs.
type peerIdentity struct {
	ca   *CA
	id   string
	ttl  time.Duration
	cert atomic.Pointer[tls.Certificate]
}

// renew issues a fresh certificate; the next handshakes on either side present it.
func (p *peerIdentity) renew() error {
	c, err := p.ca.IssueReplica(p.id, p.ttl)
	if err != nil {
		return fmt.Errorf("issuing the replica's peer certificate: %w", err)
	}
	p.cert.Store(&c)
	return nil
}

// run renews the certificate each third of its lifetime until ctx ends, so that two
// failed renewals still leave a valid one.
func (p *peerIdentity) run(ctx context.Context, log *slog.Logger) {
	t := time.NewTimer(p.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		next := p.ttl / 3
		if err := p.renew(); err != nil {
			log.Error("renewing the replica's peer certificate", "err", err)
			next = min(next, renewRetry)
		}
		t.Reset(next)
	}
}

// serverTLS is the peer listener's configuration: TLS 1.3, and a client certificate that
// chains to the CA (crypto/tls checks that) and names a replica (VerifyConnection).
func (p *peerIdentity) serverTLS() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return p.cert.Load(), nil },
		ClientAuth:     tls.RequireAndVerifyClientCert,
		ClientCAs:      p.ca.Pool(),
		// The forwarder speaks HTTP/1.1: a WebSocket upgrade does not exist in HTTP/2.
		NextProtos: []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errNoPeerCert
			}
			_, err := ReplicaOf(cs.PeerCertificates[0])
			return err
		},
	}
}

// clientTLS is the forwarder's configuration for reaching the replica named owner. The
// owner is known by its certificate, not by its address: the chain is verified against
// the CA here, and the replica it names must be owner, whatever IPs or names the
// certificate holds (none).
func (p *peerIdentity) clientTLS(owner string) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return p.cert.Load(), nil },
		// Not skipped: VerifyConnection below verifies the chain, without the host name
		// check that replica certificates, named by URI, would fail.
		InsecureSkipVerify: true,
		NextProtos:         []string{"http/1.1"},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errNoPeerCert
			}
			leaf := cs.PeerCertificates[0]
			opts := x509.VerifyOptions{Roots: p.ca.Pool(), Intermediates: x509.NewCertPool(),
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
			for _, c := range cs.PeerCertificates[1:] {
				opts.Intermediates.AddCert(c)
			}
			if _, err := leaf.Verify(opts); err != nil {
				return &tls.CertificateVerificationError{UnverifiedCertificates: cs.PeerCertificates, Err: err}
			}
			id, err := ReplicaOf(leaf)
			if err != nil {
				return err
			}
			if id != owner {
				return fmt.Errorf("%w: %q, not the owner %q", errWrongReplica, id, owner)
			}
			return nil
		},
	}
}

// peerRefusal names what was wrong with a peer's certificate, "" when err is not about
// one (a refused dial, a timeout).
func peerRefusal(err error) string {
	var cve *tls.CertificateVerificationError
	switch {
	case errors.Is(err, errWrongReplica):
		return "wrong_replica"
	case errors.Is(err, errNotReplica), errors.Is(err, errNoPeerCert):
		return "not_replica"
	case errors.As(err, &cve):
		return "untrusted"
	}
	return ""
}

// peerListener completes each connection's TLS handshake before the HTTP server sees it:
// http.Server would only write a refused handshake to its error log, and a refused peer
// must be logged and counted.
type peerListener struct {
	net.Listener
	conf    *tls.Config
	log     *slog.Logger
	refused *prometheus.CounterVec

	conns chan net.Conn
	slots chan struct{}
	// ctx ends at Close, ending handshakes in progress with it.
	ctx       context.Context
	cancel    context.CancelFunc
	failed    chan struct{} // closed when the TCP listener's Accept failed
	err       error         // why, set before failed closes
	closeOnce sync.Once
	closeErr  error
}

func newPeerListener(ln net.Listener, conf *tls.Config, log *slog.Logger, refused *prometheus.CounterVec) *peerListener {
	ctx, cancel := context.WithCancel(context.Background())
	l := &peerListener{Listener: ln, conf: conf, log: log, refused: refused, conns: make(chan net.Conn),
		slots: make(chan struct{}, peerHandshakes), ctx: ctx, cancel: cancel, failed: make(chan struct{})}
	go l.acceptLoop()
	return l
}

func (l *peerListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			l.err = err
			close(l.failed)
			return
		}
		select {
		case l.slots <- struct{}{}:
		case <-l.ctx.Done():
			c.Close()
			continue
		}
		go l.handshake(c)
	}
}

func (l *peerListener) handshake(c net.Conn) {
	defer func() { <-l.slots }()
	tc := tls.Server(c, l.conf)
	ctx, cancel := context.WithTimeout(l.ctx, peerHandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		c.Close()
		if l.ctx.Err() != nil {
			return
		}
		reason := peerRefusal(err)
		if reason == "" {
			reason = "handshake"
		}
		l.refused.WithLabelValues("server", reason).Inc()
		l.log.Warn("refused a connection on the peer listener", "remote", c.RemoteAddr().String(), "reason", reason, "err", err)
		return
	}
	select {
	case l.conns <- tc:
	case <-l.ctx.Done():
		tc.Close()
	}
}

// Accept returns the next connection whose peer proved to be a replica.
func (l *peerListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	case <-l.failed:
		return nil, l.err
	}
}

// Close stops accepting and ends the handshakes in progress.
func (l *peerListener) Close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		l.closeErr = l.Listener.Close()
	})
	return l.closeErr
}

// peerServer is the HTTP server of the peer listener; ServePeers gives it its handler.
func (g *Gateway) peerServer() *http.Server {
	return &http.Server{ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		ErrorLog: slog.NewLogLogger(g.log.Handler(), slog.LevelWarn)}
}

// ServePeers serves h, the streams other replicas forward here, on the peer listener.
// Module calls it once, right after StartGateway; until then the peers' connections wait.
func (g *Gateway) ServePeers(h http.Handler) {
	g.peerSrv.Handler = h
	g.wg.Go(func() {
		// Close closes the listener before it shuts the server down, so a clean stop may
		// surface as the closed listener rather than as http.ErrServerClosed.
		err := g.peerSrv.Serve(g.peerLn)
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			g.log.Error("peer listener failed", "err", err)
		}
	})
}

// PeerAddr returns the address the peer listener is bound to.
func (g *Gateway) PeerAddr() string { return g.peerLn.Addr().String() }
