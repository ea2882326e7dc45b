package gateway

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the tunnel's Prometheus series. Labels are fixed small sets, never ids.
type metrics struct {
	tunnels       prometheus.Gauge
	pushes        *prometheus.CounterVec
	acks          *prometheus.CounterVec
	refused       prometheus.Counter
	protocolFails prometheus.Counter
	// heartbeatBatches counts batched heartbeat writes (one per tenant per flush).
	heartbeatBatches prometheus.Counter
	// sweeps counts pending-work sweeps.
	sweeps prometheus.Counter
	// busy counts connections refused at their first packet because
	// HandshakeConcurrency handshakes were already in progress.
	busy prometheus.Counter
	// peerRefused counts replica-to-replica connections refused for their certificate
	// (or their handshake), by side (server: the peer listener; client: the forwarder)
	// and reason.
	peerRefused *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		tunnels: prometheus.NewGauge(prometheus.GaugeOpts{Name: "agent_gateway_tunnels",
			Help: "Agent tunnels held by this replica."}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agent_gateway_pushes_total",
			Help: "Desired-state pushes, by kind (full, partial) and result (ok, error)."}, []string{"kind", "result"}),
		acks: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agent_gateway_acks_total",
			Help: "Acknowledgements from agents, by result (applied, retryable, permanent, refused)."}, []string{"result"}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_status_refused_total",
			Help: "Session statuses refused because the session is not the reporting agent's in its tenant."}),
		protocolFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_protocol_errors_total",
			Help: "Tunnels closed because the agent broke the protocol."}),
		heartbeatBatches: prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_heartbeat_batches_total",
			Help: "Batched heartbeat writes: one statement per tenant per flush."}),
		sweeps: prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_sweeps_total",
			Help: "Sweeps for pending work that wake the tunnels of agents with unacknowledged assignments."}),
		busy: prometheus.NewCounter(prometheus.CounterOpts{Name: "agent_gateway_handshakes_refused_total",
			Help: "New connections refused (QUIC CONNECTION_REFUSED, retried by the agent) because the handshake limit was reached."}),
		peerRefused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "agent_gateway_peer_refused_total",
			Help: "Replica-to-replica connections refused, by side (server: the peer listener refused a client; client: a forward refused the owner's certificate) and reason (untrusted: not from the CA; not_replica: from the CA but not a replica's, e.g. an agent's; wrong_replica: another replica than the owner; handshake: no certificate or a failed handshake)."},
			[]string{"side", "reason"}),
	}
	if reg == nil {
		return m
	}
	m.tunnels = reuse(reg, m.tunnels)
	m.pushes = reuse(reg, m.pushes)
	m.acks = reuse(reg, m.acks)
	m.refused = reuse(reg, m.refused)
	m.protocolFails = reuse(reg, m.protocolFails)
	m.heartbeatBatches = reuse(reg, m.heartbeatBatches)
	m.sweeps = reuse(reg, m.sweeps)
	m.busy = reuse(reg, m.busy)
	m.peerRefused = reuse(reg, m.peerRefused)
	return m
}

// reuse registers c, or returns the equal collector already registered (two replicas in
// one test process share a registry).
func reuse[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if reg == nil {
		return c
	}
	err := reg.Register(c)
	var are prometheus.AlreadyRegisteredError
	if errors.As(err, &are) {
		if existing, ok := are.ExistingCollector.(C); ok {
			return existing
		}
	}
	return c
}
