package agent

import (
	"context"
	"io"

	"streamspace.dev/libs/wire"
)

// Backend runs sessions somewhere: Kubernetes first, Docker or VMs later. The reconcile
// loop (package reconcile) is the only caller; it owns generations, acks and reporting, so
// a backend only has to make the world match what it is given and say what it sees.
//
// Every method must be safe for concurrent use. Errors should be *apperr.Error or
// *wire.Error values when the backend knows whether a retry can help (a spec the cluster
// rejects is permanent; an unreachable API server is not); any other error is sent to the
// gateway as a retryable internal error.
type Backend interface {
	// Apply brings each assignment about, idempotently: applying the same assignment twice
	// must leave the world as applying it once. It returns one error per assignment, in
	// the order given (nil for success); a nil slice means all succeeded. Apply returns
	// once the backend has accepted the change (for Kubernetes: objects written), not when
	// the session is Running; Watch reports progress from there. DesiredDeleted means the
	// session and everything it owns go away.
	Apply(ctx context.Context, set []wire.Assignment) []error

	// Remove deletes a session the backend owns but the control plane no longer wants
	// (an orphan). Removing a session that does not exist is not an error.
	Remove(ctx context.Context, id wire.SessionID) error

	// Observe returns the current status of every session the backend owns. The reconcile
	// loop uses it to find orphans and lost sessions after a reconnect, and for the full
	// status report.
	Observe(ctx context.Context) ([]wire.SessionStatus, error)

	// Watch starts watching status changes and returns once the watch is established:
	// every change after Watch returns is delivered on the channel, in order per session.
	// A removed session is reported once with PhaseDeleted. The channel is closed when ctx
	// is done or the watch breaks; the caller then calls Watch again and Observe to catch
	// up. The backend buffers as needed: a slow reader must not block the backend.
	Watch(ctx context.Context) (<-chan wire.SessionStatus, error)

	// Capacity reports what the backend can still host, for Hello and every Heartbeat.
	Capacity(ctx context.Context) (wire.Capacity, error)

	// Info reports the backend's capabilities and cluster facts for Hello.
	Info(ctx context.Context) (Info, error)
}

// Info describes a backend for the gateway's agent registry and the scheduler.
type Info struct {
	// Capabilities are optional features ("hibernate", "gpu").
	Capabilities []string
	// Cluster holds facts with lowercase snake_case keys ("kubernetes_version",
	// "platform", "region").
	Cluster map[string]string
}

// SessionDialer is implemented by backends that can carry session traffic: it connects
// to a session's in-cluster endpoint for a gateway-opened session stream. A backend
// without it refuses session streams, and the tunnel tells the gateway so.
type SessionDialer interface {
	// DialSession connects to port (by name, else by number) of session id. A
	// *wire.Error or *apperr.Error tells the gateway whether trying again can help
	// (not_found for an unknown session; unavailable while it is starting).
	DialSession(ctx context.Context, id wire.SessionID, portName string, port int) (io.ReadWriteCloser, error)
}
