// Package spec is the session spec: what the control plane renders from a catalog template
// (plus the user's overrides) and every backend reads to run a session. It travels inside
// an assignment as wire.Assignment.Spec, which the wire protocol keeps opaque so that
// backends other than Kubernetes can be added without a protocol change; this package is
// that payload's one definition, shared by the catalog (templates are made of these parts),
// the sessions service (which renders a Session) and the agent's backends (which decode it).
//
// Decoders must ignore unknown fields: the control plane may add fields before every agent
// in the field understands them.
package spec

// Session is the spec of one session as an agent receives it.
type Session struct {
	// SessionID is the session's id (sess_…), also in the assignment.
	SessionID string `json:"session_id"`
	// Owner is the id of the user the session belongs to.
	Owner string `json:"owner_id"`
	// Template names the catalog template the session was created from.
	Template string `json:"template"`
	// Image is the container image.
	Image string   `json:"image"`
	Env   []EnvVar `json:"env"`
	// Resources are the template's, with the requests replaced by any override.
	Resources Resources `json:"resources"`
	// CPUMillis and MemoryBytes are the resolved requests the scheduler placed the session
	// by; they win over Resources.Requests.
	CPUMillis    int64        `json:"cpu_millis"`
	MemoryBytes  int64        `json:"memory_bytes"`
	Home         *Home        `json:"home,omitempty"`
	Volumes      []Volume     `json:"volumes"`
	Ports        []Port       `json:"ports"`
	Capabilities []Capability `json:"capabilities"`
}

// StreamKind says how the streaming port is spoken to.
type StreamKind string

// The stream kinds.
const (
	// StreamVNCWeb is a VNC server with its own web client served over HTTP (KasmVNC, noVNC).
	StreamVNCWeb StreamKind = "vnc-web"
	// StreamRFB is a raw RFB (VNC) server; the portal's noVNC speaks to it over a WebSocket bridge.
	StreamRFB StreamKind = "rfb"
	// StreamHTTP is a plain HTTP application (code-server, Jupyter).
	StreamHTTP StreamKind = "http"
)

// Protocol is a port's transport protocol.
type Protocol string

// The protocols.
const (
	TCP Protocol = "TCP"
	UDP Protocol = "UDP"
)

// Capability is a v1 session capability a template asks for.
type Capability string

// The capabilities StreamSpace v1 defined.
const (
	CapNetwork   Capability = "Network"
	CapAudio     Capability = "Audio"
	CapClipboard Capability = "Clipboard"
	CapUSB       Capability = "USB"
	CapPrinting  Capability = "Printing"
)

// EnvVar is one environment variable of the session container.
type EnvVar struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// ResourceList is a cpu and a memory quantity in Kubernetes syntax ("500m", "2Gi"); an
// empty string leaves that resource unset.
type ResourceList struct {
	CPU    string `json:"cpu,omitempty"`
	Memory string `json:"memory,omitempty"`
}

// Resources are a session's requests and limits.
type Resources struct {
	Requests ResourceList `json:"requests"`
	Limits   ResourceList `json:"limits"`
}

// Home is the persistent home volume kept across sessions (and hibernation).
type Home struct {
	MountPath string `json:"mount_path"`
	// Size is a memory-style quantity ("10Gi").
	Size string `json:"size"`
}

// Volume is a scratch volume mounted into the session, emptied when it ends.
type Volume struct {
	Name      string `json:"name"`
	MountPath string `json:"mount_path"`
}

// Port is a container port. Exactly one port of a session carries the stream, and says
// how in Stream.
type Port struct {
	Name     string   `json:"name"`
	Port     int      `json:"port"`
	Protocol Protocol `json:"protocol"`
	// Stream is empty on ordinary ports and names the stream kind on the streaming port.
	Stream StreamKind `json:"stream,omitempty"`
}
