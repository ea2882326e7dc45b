package gateway

import (
	"context"
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

// HopHeader marks a stream request that one gateway replica forwarded to another; its
// value is the forwarding replica's id. A replica never forwards a request that carries
// it: if it no longer holds the agent's tunnel it answers 503 itself, so a stale owner
// row can cost one hop but never a loop. A client that sends it only gives up forwarding.
const HopHeader = "Streamspace-Forwarded-By"

// Forwarding's limits.
const (
	// ownerStaleBeats is how many owner heartbeats a replica may miss before the others
	// stop forwarding to it: one late stamp under load is forgiven, a dead replica is not
	// dialed for longer than this.
	ownerStaleBeats = 3
	// forwardDialTimeout bounds reaching the owner replica, which is on the same network.
	forwardDialTimeout = 3 * time.Second
	// forwardAnswerTimeout bounds the owner's answer to the upgrade: it asks the sessions
	// service (10 s at most) and waits for its agent (streamAckTimeout) before it answers.
	forwardAnswerTimeout = 2 * streamAckTimeout
)

// ownerStaleAfter is the age of an owning replica's row beyond which it is not forwarded to.
func (g *Gateway) ownerStaleAfter() time.Duration { return ownerStaleBeats * g.cfg.OwnerHeartbeat }

// AdvertiseURL returns where the other replicas forward streams for this replica's
// agents; "" when it advertises none.
func (g *Gateway) AdvertiseURL() string { return g.cfg.AdvertiseURL }

// ownerKey carries the owner replica's URL from streams.forward to the proxy's Rewrite.
type ownerKey struct{}

// newForwarder returns the proxy that passes a stream request, upgrade and then bytes
// both ways, to the replica holding the agent's tunnel. httputil.ReverseProxy does the
// upgrade: it hands the WebSocket handshake on and, after the owner's 101, splices the
// two connections. The request keeps the caller's own credential (the Authorization
// header or the bearer subprotocol), so the owner authorizes it exactly as its own and
// this replica adds no trust; the owner also counts the stream's traffic, so this
// replica does not.
func newForwarder(gatewayID string, log *slog.Logger, m streamMetrics) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(pr.In.Context().Value(ownerKey{}).(*url.URL))
			pr.SetXForwarded()
			pr.Out.Header.Set(HopHeader, gatewayID)
			otel.GetTextMapPropagator().Inject(pr.In.Context(), propagation.HeaderCarrier(pr.Out.Header))
		},
		Transport: &http.Transport{
			// Replicas reach each other directly, never through the environment's proxy.
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: forwardDialTimeout, KeepAlive: 30 * time.Second}).DialContext,
			TLSHandshakeTimeout:   forwardDialTimeout,
			ResponseHeaderTimeout: forwardAnswerTimeout,
			IdleConnTimeout:       90 * time.Second,
		},
		ModifyResponse: func(*http.Response) error {
			// The owner answered: a 101 it pipes, or the problem it refused with, which
			// passes to the caller unchanged.
			m.streams.WithLabelValues("forwarded").Inc()
			return nil
		},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			m.streams.WithLabelValues("forward_failed").Inc()
			log.WarnContext(r.Context(), "forwarding a session stream to the replica holding its agent",
				"owner", r.URL.Host, "err", err)
			apperr.WriteHTTP(w, r.URL.Path, &apperr.Error{Code: apperr.Unavailable, RetryAfter: notHereRetry, Cause: err,
				Message: "the gateway replica holding the session's agent cannot be reached"})
		},
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// forward passes the stream request r to the replica at owner. It returns when the stream
// ends; the gateway closing ends it too, as it ends the streams it pipes itself.
func (s *streams) forward(w http.ResponseWriter, r *http.Request, owner *url.URL) {
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.gw.ctx, cancel)
	defer stop()
	s.m.forwarding.Inc()
	defer s.m.forwarding.Dec()
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, ownerKey{}, owner)))
}
