package gateway

import (
	"context"
	"errors"
	"net/http"
	"time"

	"streamspace.dev/libs/server"
)

// Module mounts the agent-gateway on a server: the admin API on the shared mux, the
// tunnel and enrollment listeners on the agents' address.
type Module struct {
	gw     *Gateway
	svc    Service
	routes []Route
}

// New builds the gateway from the shared dependencies: store is its Store (package
// postgres), enroller consumes enrollment tokens (identity in-process, or
// NewHTTPEnroller). It starts listening at once; Close drains it.
func New(d server.Deps, cfg Config, store Store, enroller Enroller) (*Module, error) {
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
	return &Module{gw: gw, svc: svc, routes: Routes(eps, d.Verifier, d.Logger)}, nil
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

// Close implements server.Closer: agents are told to reconnect elsewhere.
func (m *Module) Close(ctx context.Context) error { return m.gw.Close(ctx) }
