// Package gateway is StreamSpace's agent-gateway service: the agents' outbound QUIC tunnels: enrollment, desired-state delivery, status intake and session traffic.
//
// It follows go-kit's shape: the Service interface and its logic, then endpoints, then the
// HTTP transport. Module mounts it on a server, alone in its own binary or beside the
// other services in the all-in-one binary.
package gateway

import (
	"net/http"

	"streamspace.dev/libs/server"
)

// Name is the service's name in logs, traces and metrics.
const Name = "agent-gateway"

// Module mounts the agent-gateway service on a server.
type Module struct {
	deps server.Deps
}

// New builds the agent-gateway service from the shared dependencies.
func New(deps server.Deps) (*Module, error) {
	return &Module{deps: deps}, nil
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module. The service serves only the shared health and
// metrics routes until its features land.
func (m *Module) Register(*http.ServeMux) {}
