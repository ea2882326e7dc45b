// Package scheduler is StreamSpace's scheduler service: placement: choosing an agent for each session that needs one, by tenant, health, tags and free capacity.
//
// It follows go-kit's shape: the Service interface and its logic, then endpoints, then the
// HTTP transport. Module mounts it on a server, alone in its own binary or beside the
// other services in the all-in-one binary.
package scheduler

import (
	"net/http"

	"streamspace.dev/libs/server"
)

// Name is the service's name in logs, traces and metrics.
const Name = "scheduler"

// Module mounts the scheduler service on a server.
type Module struct {
	deps server.Deps
}

// New builds the scheduler service from the shared dependencies.
func New(deps server.Deps) (*Module, error) {
	return &Module{deps: deps}, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module. The service serves only the shared health and
// metrics routes until its features land.
func (m *Module) Register(*http.ServeMux) {}
