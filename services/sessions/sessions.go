// Package sessions is StreamSpace's sessions service: the session lifecycle: desired state and observed phase, quotas, idle hibernation and live status.
//
// It follows go-kit's shape: the Service interface and its logic, then endpoints, then the
// HTTP transport. Module mounts it on a server, alone in its own binary or beside the
// other services in the all-in-one binary.
package sessions

import (
	"net/http"

	"streamspace.dev/libs/server"
)

// Name is the service's name in logs, traces and metrics.
const Name = "sessions"

// Module mounts the sessions service on a server.
type Module struct {
	deps server.Deps
}

// New builds the sessions service from the shared dependencies.
func New(deps server.Deps) (*Module, error) {
	return &Module{deps: deps}, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module. The service serves only the shared health and
// metrics routes until its features land.
func (m *Module) Register(*http.ServeMux) {}
