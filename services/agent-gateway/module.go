package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/server"
	"streamspace.dev/libs/telemetry"
)

// Module mounts the agent-gateway on a server: the admin API on the shared mux, the
// tunnel and enrollment listeners on the agents' address.
type Module struct {
	gw      *Gateway
	svc     Service
	routes  []Route
	streams *streams
	// stopMeter ends the traffic meter's loop (after a last flush); meterDone closes then.
	stopMeter context.CancelFunc
	meterDone chan struct{}
}

// New builds the gateway from the shared dependencies: store is its Store (package
// postgres), enroller consumes enrollment tokens (identity in-process, or
// NewHTTPEnroller), sessions finds the sessions browsers stream (the sessions service
// in-process, or NewHTTPSessions; nil refuses streams). It starts listening at once;
// Close drains it.
func New(d server.Deps, cfg Config, store Store, enroller Enroller, sessions SessionFinder) (*Module, error) {
	if d.Verifier == nil {
		return nil, errors.New("agent-gateway: no token verifier (set --jwks-url)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gw, err := StartGateway(ctx, cfg, GatewayOptions{Store: store, Enroller: enroller,
		ConnConfig: d.DB.Pool().Config().ConnConfig, Logger: d.Logger, Registry: d.Registry})
	if err != nil {
		return nil, err
	}
	svc := NewService(store, gw.Revoke)
	eps := MakeEndpoints(svc, Logging(d.Logger), Metrics(d.Registry))
	sm := newStreamMetrics(d.Registry)
	st := &streams{gw: gw, sessions: sessions, verifier: d.Verifier, log: gw.log, m: sm,
		meter: newMeter(store, gw.log, sm.bytes), proxy: newForwarder(gw, sm)}
	gw.ServePeers(telemetry.Middleware(d.Registry, Name+"-peer")(peerRoutes(st)))
	mctx, stop := context.WithCancel(context.Background())
	m := &Module{gw: gw, svc: svc, routes: Routes(eps, d.Verifier, d.Logger), streams: st, stopMeter: stop, meterDone: make(chan struct{})}
	go func() {
		defer close(m.meterDone)
		st.meter.run(mctx, gw.cfg.TrafficFlush)
	}()
	return m, nil
}

// peerRoutes is all the peer listener serves: the streams other replicas forward here.
func peerRoutes(st *streams) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+StreamPath, st.serveForwarded)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apperr.WriteHTTP(w, r.URL.Path, apperr.New(apperr.NotFound, "no route for %s %s", r.Method, r.URL.Path))
	})
	return mux
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module: the admin API, the CA certificate and, for edges that
// terminate TLS themselves, the enrollment endpoint.
func (m *Module) Register(mux *http.ServeMux) {
	for _, r := range m.routes {
		mux.Handle(r.Pattern, r.handler)
	}
	mux.Handle("POST "+EnrollPath, m.gw.EnrollHTTP())
	mux.Handle("GET "+StreamPath, m.streams)
	// The CA is public: the portal shows it, and agents need it to trust the enrollment
	// listener before they hold any credential.
	mux.HandleFunc("GET "+CAPath, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write([]byte(m.gw.CA().PEM()))
	})
}

// Service returns the service, for in-process callers (sessions will write assignments
// through it).
func (m *Module) Service() Service { return m.svc }

// Gateway returns the tunnel endpoint.
func (m *Module) Gateway() *Gateway { return m.gw }

// FlushTraffic records the session traffic counted so far now, instead of at the next
// interval: for tests that drive the idle timer.
func (m *Module) FlushTraffic(ctx context.Context) error { return m.streams.meter.flush(ctx) }

// Close implements server.Closer: agents are told to reconnect elsewhere, which ends
// their session streams, and the traffic they carried is recorded.
func (m *Module) Close(ctx context.Context) error {
	err := m.gw.Close(ctx)
	m.stopMeter()
	select {
	case <-m.meterDone:
	case <-ctx.Done():
	}
	return err
}
