// Package module mounts the catalog service on a server: it builds the onion — the
// PostgreSQL store, the service, its logging and metrics decorators, the endpoints and the
// HTTP routes behind the authentication middleware — and applies the built-in platform
// catalog on start.
//
// It lives apart from package catalog because it imports catalog/postgres, which imports
// catalog; the single-service binary and the all-in-one binary both build it from
// server.Deps with New.
package module

import (
	"context"
	"errors"
	"net/http"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/server"
	"streamspace.dev/services/catalog"
	"streamspace.dev/services/catalog/manifest"
	"streamspace.dev/services/catalog/postgres"
)

// Module mounts the catalog service on a server.
type Module struct {
	routes []catalog.Route
	auth   func(http.Handler) http.Handler
}

var _ server.Module = (*Module)(nil)

// seedTimeout bounds the built-in catalog's application at start.
const seedTimeout = 30 * time.Second

// New builds the catalog service from the shared dependencies and applies the built-in
// platform catalog (once per catalog.SeedID). It needs deps.Verifier: without one no
// request could be authenticated, and serving anyway would fail every call.
func New(deps server.Deps) (*Module, error) {
	if deps.Verifier == nil {
		return nil, errors.New("catalog: no access-token verifier; set --jwks-url (the all-in-one binary supplies identity's keys)")
	}
	store := postgres.New(deps.DB)
	ctx, cancel := context.WithTimeout(context.Background(), seedTimeout)
	defer cancel()
	if applied, err := catalog.Seed(ctx, store); err != nil {
		return nil, err
	} else if applied {
		deps.Logger.Info("applied the built-in platform catalog", "seed", catalog.SeedID)
	}
	var svc catalog.Service = catalog.NewService(store, manifest.Parse, deps.Logger)
	svc = catalog.Logging(deps.Logger)(svc)
	svc = catalog.Instrumenting(deps.Registry)(svc)
	return &Module{
		routes: catalog.MakeRoutes(catalog.MakeEndpoints(svc), deps.Logger),
		auth:   auth.Middleware(deps.Verifier),
	}, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return catalog.Name }

// Register implements server.Module.
func (m *Module) Register(mux *http.ServeMux) {
	kitx.Mount(mux, m.routes, m.auth)
}

// Routes returns the patterns Register serves ("GET /api/v1/templates/{name}"), for the
// test that holds them and the OpenAPI document together.
func (m *Module) Routes() []string {
	return kitx.Patterns(m.routes)
}
