// Package catalog is StreamSpace's catalog service: application templates: a platform-wide catalog and each tenant's own, with import of StreamSpace v1 Template manifests.
//
// It follows go-kit's shape: the Service interface and its logic, then endpoints, then the
// HTTP transport. Module mounts it on a server, alone in its own binary or beside the
// other services in the all-in-one binary.
package catalog

import (
	"net/http"

	"streamspace.dev/libs/server"
)

// Name is the service's name in logs, traces and metrics.
const Name = "catalog"

// Module mounts the catalog service on a server.
type Module struct {
	deps server.Deps
}

// New builds the catalog service from the shared dependencies.
func New(deps server.Deps) (*Module, error) {
	return &Module{deps: deps}, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module. The service serves only the shared health and
// metrics routes until its features land.
func (m *Module) Register(*http.ServeMux) {}
