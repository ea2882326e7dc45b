package wire

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"streamspace.dev/libs/tenant"
)

// MessageType names a message in its envelope. Values are fixed forever once published;
// a new type is a minor change (see PROTOCOL.md, "Versioning").
type MessageType string

// The message types of protocol version 1.
const (
	TypeHello               MessageType = "hello"
	TypeHelloAck            MessageType = "hello_ack"
	TypeHeartbeat           MessageType = "heartbeat"
	TypeDesiredState        MessageType = "desired_state"
	TypeAck                 MessageType = "ack"
	TypeStatusReport        MessageType = "status_report"
	TypeError               MessageType = "error"
	TypeGoodbye             MessageType = "goodbye"
	TypeCertRenewRequest    MessageType = "cert_renew_request"
	TypeCertRenewResponse   MessageType = "cert_renew_response"
	TypeSessionStreamHeader MessageType = "session_stream_header"
)

// Message is one protocol message: the body of an envelope. The set is closed (the
// unexported method): only the types of this package can be sent, so every message on
// the wire is one the specification describes. All implementations are pointers, so a
// type switch on a decoded Message uses *Hello, *Heartbeat, and so on.
type Message interface {
	Type() MessageType
	isMessage()
}

// kind describes one message type: how to make an empty one, and on which stream types it
// may appear (a bit set indexed by StreamType).
type kind struct {
	new     func() Message
	streams uint32
}

func on(ss ...StreamType) uint32 {
	var m uint32
	for _, s := range ss {
		m |= 1 << s
	}
	return m
}

// registry is the one table of message types. Reader and Writer both consult it, so a
// message can only be sent on a stream where the peer will accept it.
var registry = map[MessageType]kind{
	TypeHello:               {func() Message { return new(Hello) }, on(StreamControl)},
	TypeHelloAck:            {func() Message { return new(HelloAck) }, on(StreamControl)},
	TypeHeartbeat:           {func() Message { return new(Heartbeat) }, on(StreamControl)},
	TypeStatusReport:        {func() Message { return new(StatusReport) }, on(StreamControl)},
	TypeGoodbye:             {func() Message { return new(Goodbye) }, on(StreamControl)},
	TypeDesiredState:        {func() Message { return new(DesiredState) }, on(StreamDesiredState)},
	TypeAck:                 {func() Message { return new(Ack) }, on(StreamControl, StreamDesiredState, StreamSession)},
	TypeError:               {func() Message { return new(Error) }, on(StreamControl, StreamDesiredState, StreamSession, StreamCert)},
	TypeCertRenewRequest:    {func() Message { return new(CertRenewRequest) }, on(StreamCert)},
	TypeCertRenewResponse:   {func() Message { return new(CertRenewResponse) }, on(StreamCert)},
	TypeSessionStreamHeader: {func() Message { return new(SessionStreamHeader) }, on(StreamSession)},
}

// Types lists every message type this build knows, in a stable order, for tests and
// documentation tools.
func Types() []MessageType {
	return []MessageType{TypeHello, TypeHelloAck, TypeHeartbeat, TypeDesiredState, TypeAck,
		TypeStatusReport, TypeError, TypeGoodbye, TypeCertRenewRequest, TypeCertRenewResponse,
		TypeSessionStreamHeader}
}

// AllowedOn reports whether messages of type t may appear on a stream of type s.
func AllowedOn(t MessageType, s StreamType) bool {
	k, ok := registry[t]
	return ok && s < 32 && k.streams&(1<<s) != 0
}

// validator is implemented by messages with invariants beyond JSON syntax. The Reader
// checks them so that handlers never see, say, an assignment without a session id;
// validate may also normalise equivalent encodings (null for absent).
type validator interface{ validate() error }

// AgentID identifies an agent. The gateway takes it from the agent's client certificate;
// the copy in Hello must match it and is otherwise ignored.
type AgentID string

// GatewayID identifies one gateway replica, for logs and for the tunnel's owner row.
type GatewayID string

// SessionID identifies a session across the control plane and the agent.
type SessionID string

// Capacity is what an agent can still host. "Used" counts the resource requests of the
// agent's sessions, not live usage, because the scheduler places sessions by requests.
type Capacity struct {
	CPUAllocatableMillis   int64 `json:"cpu_allocatable_millis"`
	CPUUsedMillis          int64 `json:"cpu_used_millis"`
	MemoryAllocatableBytes int64 `json:"memory_allocatable_bytes"`
	MemoryUsedBytes        int64 `json:"memory_used_bytes"`
	// Sessions is the number of sessions the agent runs now.
	Sessions int `json:"sessions"`
	// MaxSessions is the agent's own limit; 0 means none.
	MaxSessions int `json:"max_sessions,omitempty"`
}

// Hello is the agent's first message on the control stream.
type Hello struct {
	AgentID      AgentID `json:"agent_id"`
	AgentVersion string  `json:"agent_version"`
	// Protocol is the agent's own version; the gateway answers with Negotiate's result.
	Protocol Version `json:"protocol"`
	// Capabilities are optional agent features that do not depend on the protocol
	// version (for example "hibernate" or "gpu"); unknown ones are ignored.
	Capabilities []string `json:"capabilities,omitempty"`
	// Tags are the labels the agent's operator gave it (the agent's --tags), each
	// "key=value" or a plain word, which the scheduler matches like the tags an admin
	// sets. The codec does not check their syntax; the gateway drops tags it would not
	// accept from an admin. Since 1.1; a 1.0 gateway ignores them.
	Tags []string `json:"tags,omitempty"`
	// Cluster holds facts about the cluster for display and placement
	// ("kubernetes_version", "platform", "region", ...). Keys are lowercase snake_case.
	Cluster  map[string]string `json:"cluster,omitempty"`
	Capacity Capacity          `json:"capacity"`
	// AppliedChecksum is Checksum of the set the agent has applied. When it equals the
	// agent's desired checksum the gateway answers HelloAck with that checksum and skips
	// the full push. Empty means unknown, and a value the gateway cannot compare (another
	// hash) simply does not match: either way the full set is pushed. Since 1.1; a 1.0
	// gateway ignores it and always pushes.
	AppliedChecksum string `json:"applied_checksum,omitempty"`
}

// Type implements Message.
func (*Hello) Type() MessageType { return TypeHello }
func (*Hello) isMessage()        {}

func (m *Hello) validate() error {
	if m.AgentID == "" {
		return errors.New("agent_id is empty")
	}
	if m.Protocol.Major == 0 {
		return errors.New("protocol.major is 0")
	}
	return nil
}

// HelloAck is the gateway's answer to Hello. After it the gateway pushes the full desired
// set, unless Hello.AppliedChecksum already equals DesiredChecksum; DesiredChecksum lets
// the agent tell at once whether its applied set is current (and so whether a full push
// is coming).
type HelloAck struct {
	GatewayID GatewayID `json:"gateway_id"`
	// Accepted is the version both sides use from now on.
	Accepted Version `json:"accepted"`
	// HeartbeatInterval is how often the agent sends Heartbeat; the gateway marks an agent
	// degraded after missing a few. On the wire: heartbeat_interval_ms.
	HeartbeatInterval time.Duration `json:"-"`
	// DesiredChecksum is Checksum of the agent's full desired set.
	DesiredChecksum string `json:"desired_checksum"`
}

// Type implements Message.
func (*HelloAck) Type() MessageType { return TypeHelloAck }
func (*HelloAck) isMessage()        {}

type helloAckJSON struct {
	GatewayID           GatewayID `json:"gateway_id"`
	Accepted            Version   `json:"accepted"`
	HeartbeatIntervalMS int64     `json:"heartbeat_interval_ms"`
	DesiredChecksum     string    `json:"desired_checksum"`
}

// MarshalJSON encodes HeartbeatInterval as heartbeat_interval_ms.
func (m *HelloAck) MarshalJSON() ([]byte, error) {
	return json.Marshal(helloAckJSON{m.GatewayID, m.Accepted, millis(m.HeartbeatInterval), m.DesiredChecksum})
}

// UnmarshalJSON decodes heartbeat_interval_ms, rejecting negative values.
func (m *HelloAck) UnmarshalJSON(b []byte) error {
	var j helloAckJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	d, err := fromMillis("heartbeat_interval_ms", j.HeartbeatIntervalMS)
	if err != nil {
		return err
	}
	*m = HelloAck{j.GatewayID, j.Accepted, d, j.DesiredChecksum}
	return nil
}

func (m *HelloAck) validate() error {
	if m.Accepted.Major == 0 {
		return errors.New("accepted.major is 0")
	}
	return nil
}

// Heartbeat is the agent's periodic liveness and capacity report on the control stream.
type Heartbeat struct {
	// Seq increases by one per heartbeat on a connection, so gaps show lost beats.
	Seq uint64 `json:"seq"`
	// Capacity is the agent's capacity now. Nil (absent on the wire) means "unchanged
	// since the last capacity this connection reported", in Hello or a heartbeat: the
	// beat is liveness only. Since 1.2; an agent sends a heartbeat without capacity only
	// when the accepted minor is at least 2, because an older gateway reads the absence
	// as zeros. CapacityReporter decides which beats carry it.
	Capacity *Capacity `json:"capacity,omitempty"`
}

// Type implements Message.
func (*Heartbeat) Type() MessageType { return TypeHeartbeat }
func (*Heartbeat) isMessage()        {}

// Desired is the state the control plane wants a session in. The set is closed: an agent
// must not guess at a state it does not know, so a new value needs a new major version.
type Desired string

// The desired states.
const (
	DesiredRunning    Desired = "running"
	DesiredHibernated Desired = "hibernated"
	DesiredStopped    Desired = "stopped"
	DesiredDeleted    Desired = "deleted"
)

// Valid reports whether d is one of the defined states.
func (d Desired) Valid() bool {
	switch d {
	case DesiredRunning, DesiredHibernated, DesiredStopped, DesiredDeleted:
		return true
	}
	return false
}

// Assignment is one session's desired state at one generation. Generation grows with
// every change of Spec or Desired, so applying an assignment is idempotent and an agent
// ignores one whose generation is below what it has already applied.
type Assignment struct {
	SessionID  SessionID `json:"session_id"`
	TenantID   tenant.ID `json:"tenant_id"`
	Generation int64     `json:"generation"`
	Desired    Desired   `json:"desired"`
	// Spec is the session's rendered spec (opaque to this package). It may be omitted when
	// Desired is stopped or deleted.
	Spec json.RawMessage `json:"spec,omitempty"`
}

// DesiredState pushes assignments to the agent. A push is either partial (Full false:
// apply these, leave everything else alone) or the agent's full set (Full true: anything
// the agent owns that is not in the set is an orphan to remove). A full set larger than
// one frame is split into parts sent in order on one stream, all but the last with More
// set; the agent reconciles only after the last part, whose Checksum covers the whole set.
type DesiredState struct {
	Full        bool         `json:"full"`
	More        bool         `json:"more,omitempty"`
	Checksum    string       `json:"checksum,omitempty"`
	Assignments []Assignment `json:"assignments"`
}

// Type implements Message.
func (*DesiredState) Type() MessageType { return TypeDesiredState }
func (*DesiredState) isMessage()        {}

func (m *DesiredState) validate() error {
	for i, a := range m.Assignments {
		if a.SessionID == "" {
			return fmt.Errorf("assignments[%d].session_id is empty", i)
		}
		if a.TenantID == "" {
			return fmt.Errorf("assignments[%d].tenant_id is empty", i)
		}
		if a.Generation < 0 {
			return fmt.Errorf("assignments[%d].generation is negative", i)
		}
		if !a.Desired.Valid() {
			return fmt.Errorf("assignments[%d].desired %q is not a known state", i, a.Desired)
		}
		// Other encoders write null for an absent field; normalise it to absent.
		if string(a.Spec) == "null" {
			m.Assignments[i].Spec = nil
		} else if len(a.Spec) > 0 && a.Spec[0] != '{' {
			return fmt.Errorf("assignments[%d].spec is not a JSON object", i)
		}
	}
	if m.More && !m.Full {
		return errors.New("more is set on a partial push")
	}
	return nil
}

// Ack reports that the agent applied SessionID at Generation, or failed to (Error set).
// On a session stream it answers the SessionStreamHeader: Error nil means the agent
// reached the session's endpoint and raw bytes follow.
type Ack struct {
	SessionID  SessionID `json:"session_id"`
	Generation int64     `json:"generation"`
	Error      *Error    `json:"error,omitempty"`
}

// Type implements Message.
func (*Ack) Type() MessageType { return TypeAck }
func (*Ack) isMessage()        {}

func (m *Ack) validate() error {
	if m.SessionID == "" {
		return errors.New("session_id is empty")
	}
	if m.Generation < 0 {
		return errors.New("generation is negative")
	}
	if m.Error != nil {
		return m.Error.validate()
	}
	return nil
}

// Phase is a session's observed state. Unlike Desired the set is open: a receiver maps a
// phase it does not know to "unknown" for display, so an agent may add phases in a
// minor version.
type Phase string

// The phases of protocol version 1.
const (
	PhasePending     Phase = "pending"
	PhaseStarting    Phase = "starting"
	PhaseRunning     Phase = "running"
	PhaseHibernating Phase = "hibernating"
	PhaseHibernated  Phase = "hibernated"
	PhaseStopping    Phase = "stopping"
	PhaseStopped     Phase = "stopped"
	PhaseFailed      Phase = "failed"
	// PhaseDeleted says the agent removed the session and holds nothing of it.
	PhaseDeleted Phase = "deleted"
)

// Endpoint is where the agent reaches a session inside its cluster.
type Endpoint struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// SessionStatus is one session as the agent observes it. It carries no tenant id on
// purpose: the gateway derives the tenant from the agent's certificate and its own
// records, never from what an agent claims.
type SessionStatus struct {
	SessionID SessionID `json:"session_id"`
	Phase     Phase     `json:"phase"`
	// Reason is a short CamelCase machine word ("ImagePullBackOff"); Message is for people.
	Reason  string `json:"reason,omitempty"`
	Message string `json:"message,omitempty"`
	// ObservedGeneration is the highest generation the agent has applied.
	ObservedGeneration int64     `json:"observed_generation"`
	Endpoint           *Endpoint `json:"endpoint,omitempty"`
	// LastTransition is when the session entered Phase.
	LastTransition time.Time `json:"last_transition,omitzero"`
	// ObservedAt is when the agent took this observation.
	ObservedAt time.Time `json:"observed_at,omitzero"`
}

// StatusReport carries session statuses on the control stream. After (re)connecting the
// agent sends one with Full set, listing every session it owns; later reports carry
// changes only.
type StatusReport struct {
	Full     bool            `json:"full,omitempty"`
	Sessions []SessionStatus `json:"sessions"`
}

// Type implements Message.
func (*StatusReport) Type() MessageType { return TypeStatusReport }
func (*StatusReport) isMessage()        {}

func (m *StatusReport) validate() error {
	for i, s := range m.Sessions {
		if s.SessionID == "" {
			return fmt.Errorf("sessions[%d].session_id is empty", i)
		}
		if s.ObservedGeneration < 0 {
			return fmt.Errorf("sessions[%d].observed_generation is negative", i)
		}
		if s.Endpoint != nil && (s.Endpoint.Port < 0 || s.Endpoint.Port > 65535) {
			return fmt.Errorf("sessions[%d].endpoint.port out of range", i)
		}
	}
	return nil
}

// Type implements Message: an Error is also the message that reports it.
func (*Error) Type() MessageType { return TypeError }
func (*Error) isMessage()        {}

func (e *Error) validate() error {
	if e.Code == "" {
		return errors.New("code is empty")
	}
	return nil
}

// GoodbyeReason says why a peer is closing the tunnel.
type GoodbyeReason string

// The goodbye reasons. Receivers treat unknown ones like GoodbyeShutdown.
const (
	// GoodbyeShutdown: the sender is stopping (agent uninstall, gateway shutdown).
	GoodbyeShutdown GoodbyeReason = "shutdown"
	// GoodbyeDrain: the gateway replica is draining for a deploy; reconnect at once.
	GoodbyeDrain GoodbyeReason = "drain"
	// GoodbyeSuperseded: a newer connection of the same agent took over this one.
	GoodbyeSuperseded GoodbyeReason = "superseded"
)

// Goodbye announces an orderly close of the tunnel, so the receiver can tell it from a
// failure: it neither counts it against the peer's health nor backs off.
type Goodbye struct {
	Reason  GoodbyeReason `json:"reason"`
	Message string        `json:"message,omitempty"`
	// ReconnectElsewhere asks the agent to reconnect immediately, and not to this replica
	// (the load balancer will pick another), instead of backing off.
	ReconnectElsewhere bool `json:"reconnect_elsewhere,omitempty"`
}

// Type implements Message.
func (*Goodbye) Type() MessageType { return TypeGoodbye }
func (*Goodbye) isMessage()        {}

// CertRenewRequest asks the gateway to sign a new client certificate before the current
// one expires. The request rides the tunnel, so it is authenticated by the current
// certificate; first enrollment happens over HTTPS to identity, not here.
type CertRenewRequest struct {
	CSRPEM string `json:"csr_pem"`
}

// Type implements Message.
func (*CertRenewRequest) Type() MessageType { return TypeCertRenewRequest }
func (*CertRenewRequest) isMessage()        {}

func (m *CertRenewRequest) validate() error {
	if m.CSRPEM == "" {
		return errors.New("csr_pem is empty")
	}
	return nil
}

// CertRenewResponse returns the signed certificate: the leaf first, then any
// intermediates, as concatenated PEM blocks.
type CertRenewResponse struct {
	CertificatePEM string `json:"certificate_pem"`
}

// Type implements Message.
func (*CertRenewResponse) Type() MessageType { return TypeCertRenewResponse }
func (*CertRenewResponse) isMessage()        {}

func (m *CertRenewResponse) validate() error {
	if m.CertificatePEM == "" {
		return errors.New("certificate_pem is empty")
	}
	return nil
}

// SessionStreamHeader opens a session stream: which session, and which of its ports
// (by name, by number, or both; the name wins when both are given and it exists).
type SessionStreamHeader struct {
	SessionID SessionID `json:"session_id"`
	PortName  string    `json:"port_name,omitempty"`
	Port      int       `json:"port,omitempty"`
}

// Type implements Message.
func (*SessionStreamHeader) Type() MessageType { return TypeSessionStreamHeader }
func (*SessionStreamHeader) isMessage()        {}

func (m *SessionStreamHeader) validate() error {
	if m.SessionID == "" {
		return errors.New("session_id is empty")
	}
	if m.Port < 0 || m.Port > 65535 {
		return errors.New("port out of range")
	}
	if m.PortName == "" && m.Port == 0 {
		return errors.New("neither port_name nor port is set")
	}
	return nil
}
