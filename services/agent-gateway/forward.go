package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"

	"streamspace.dev/libs/apperr"
)

// HopHeader names, on a stream request one gateway replica forwarded to another, the
// forwarding replica (for the owner's logs). What makes a request a forward is the
// listener it arrives on, the peer listener, whose clients are replicas proven by their
// certificates; the header grants nothing, and the public listener ignores it. The owner
// never forwards a request that reached it there: if it no longer holds the agent's
// tunnel it answers 503 itself, so a stale owner row can cost one hop but never a loop.
const HopHeader = "Streamspace-Forwarded-By"

// Forwarding's limits.
const (
	// ownerStaleBeats is how many owner heartbeats a replica may miss before the others
	// stop forwarding to it: one late stamp under load is forgiven, a dead replica is not
	// dialed for longer than this.
	ownerStaleBeats = 3
	// forwardDialTimeout bounds reaching the owner replica, which is on the same network,
	// and proving each other replicas (the TLS handshake).
	forwardDialTimeout = 3 * time.Second
	// forwardAnswerTimeout bounds the owner's answer to the upgrade: it asks the sessions
	// service (10 s at most) and waits for its agent (streamAckTimeout) before it answers.
	forwardAnswerTimeout = 2 * streamAckTimeout
)

// ownerStaleAfter is the age of an owning replica's row beyond which it is not forwarded to.
func (g *Gateway) ownerStaleAfter() time.Duration { return ownerStaleBeats * g.cfg.OwnerHeartbeat }

// AdvertiseURL returns where the other replicas forward streams for this replica's
// agents (its peer listener); "" when it advertises none.
func (g *Gateway) AdvertiseURL() string { return g.cfg.AdvertiseURL }

// owner is the replica holding an agent's tunnel, as its rows name it.
type owner struct {
	// ID is the replica's id, which its peer certificate must name.
	ID string
	// URL is its peer listener.
	URL *url.URL
}

// ownerKey carries the owner from streams.forward to the proxy's Rewrite and to the
// dial of its connection.
type ownerKey struct{}

// newForwarder returns the proxy that passes a stream request, upgrade and then bytes
// both ways, to the replica holding the agent's tunnel. httputil.ReverseProxy does the
// upgrade: it hands the WebSocket handshake on and, after the owner's 101, splices the
// two connections. The request keeps the caller's own credential (the Authorization
// header or the bearer subprotocol), so the owner authorizes it exactly as its own and
// this replica adds no trust; the owner also counts the stream's traffic, so this
// replica does not.
//
// The hop is mutual TLS (peer.go): the credential is sent only once the owner's
// certificate proved it the owner replica, and the owner only serves a replica. Each
// forward dials its own connection (no keep-alive): the owner is checked per request, at
// the dial, and a stream holds its connection for its whole life anyway.
func newForwarder(g *Gateway, m streamMetrics) *httputil.ReverseProxy {
	log := g.log
	dialer := &net.Dialer{Timeout: forwardDialTimeout, KeepAlive: 30 * time.Second}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(ownerKey{}).(owner).URL)
			pr.SetXForwarded()
			pr.Out.Header.Set(HopHeader, g.id)
			otel.GetTextMapPropagator().Inject(pr.In.Context(), propagation.HeaderCarrier(pr.Out.Header))
		},
		Transport: &http.Transport{
			// Replicas reach each other directly, never through the environment's proxy.
			Proxy: nil,
			DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				// The transport dials with the request's context values: its owner.
				o, ok := ctx.Value(ownerKey{}).(owner)
				if !ok {
					return nil, errors.New("forwarding without an owner")
				}
				// The deadline covers the TLS handshake too (the transport's own
				// TLSHandshakeTimeout does not apply to a DialTLSContext).
				ctx, cancel := context.WithTimeout(ctx, forwardDialTimeout)
				defer cancel()
				d := &tls.Dialer{NetDialer: dialer, Config: g.peer.clientTLS(o.ID)}
				return d.DialContext(ctx, network, addr)
			},
			DisableKeepAlives:     true,
			ResponseHeaderTimeout: forwardAnswerTimeout,
		},
		ModifyResponse: func(*http.Response) error {
			// The owner answered: a 101 it pipes, or the problem it refused with, which
			// passes to the caller unchanged.
			m.streams.WithLabelValues("forwarded").Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			m.streams.WithLabelValues("forward_failed").Inc()
			o, _ := r.Context().Value(ownerKey{}).(owner)
			msg := "the gateway replica holding the session's agent cannot be reached"
			if reason := peerRefusal(err); reason != "" {
				// Nothing was sent: the request, and its credential, leave only after the
				// owner's certificate passed.
				g.metrics.peerRefused.WithLabelValues("client", reason).Inc()
				log.WarnContext(r.Context(), "refused the certificate of the replica at the session's agent's owner address",
					"owner", o.ID, "owner_url", r.URL.Host, "reason", reason, "err", err)
				msg = "the gateway replica at the address of the one holding the session's agent failed to prove itself"
			} else {
				log.WarnContext(r.Context(), "forwarding a session stream to the replica holding its agent",
					"owner", o.ID, "owner_url", r.URL.Host, "err", err)
			}
			apperr.WriteHTTP(w, r.URL.Path, &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Cause: err, Message: msg})
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// forward passes the stream request r to the replica o. It returns when the stream ends;
// the gateway closing ends it too, as it ends the streams it pipes itself.
func (s *streams) forward(w http.ResponseWriter, r *http.Request, o owner) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.gw.ctx, cancel)
	defer stop()
	s.m.forwarding.Inc()
	defer s.m.forwarding.Dec()
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ownerKey{}, o)))
}
