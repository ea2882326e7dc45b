// Package agent is the StreamSpace agent that customers install in their own cluster. It
// dials the control plane's gateway over an outbound-only QUIC tunnel, receives the
// desired set of sessions, applies it through a Backend (Kubernetes first; Docker and VMs
// later) and reports what it observes. Its own module keeps client-go out of the services.
package agent
