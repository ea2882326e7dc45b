// Package gateway is StreamSpace's agent-gateway service: the agents' outbound QUIC
// tunnels, their enrollment, the agent registry, desired-state delivery and status intake.
//
// It follows go-kit's shape: this file holds the domain types and the Service and Store
// interfaces; service.go the admin and assignment logic; endpoints.go the go-kit
// endpoints; transport_http.go the routes and codecs; postgres/ the Store. The tunnel
// itself lives in tunnel.go (the QUIC listener and one goroutine set per connection),
// hub.go (which connections this replica holds, the LISTEN loop that tells it about
// work for them, and the heartbeats it writes in batches) and enroll.go with ca.go (certificates). Module (module.go) mounts the
// whole on a server, alone in its own binary or beside the others in the all-in-one one.
//
// # Delivery
//
// session_assignments is the outbox: a row whose generation exceeds its acked_generation
// is pending work. A write commits the row and a NOTIFY on the agent's channel in one
// transaction; the replica that owns the agent's tunnel LISTENs on that channel and pushes
// the change on a stream it opens. NOTIFY is lossy (a replica may be reconnecting to
// PostgreSQL), so each replica also sweeps its agents periodically, one query per tenant
// for all of them, and wakes the tunnels of those with pending rows. On every
// (re)connect the agent gets its full set with a checksum. The agent acknowledges the
// generation it applied; acknowledgements only ever raise acked_generation, so duplicates
// and reordering are harmless.
//
// # Ownership
//
// platform.agent_directory has one owner row per agent, naming the replica and the
// connection that holds its tunnel. The newest connection claims the row; the replica
// holding an older connection learns it from a NOTIFY, or at the latest from its next
// claim check or fenced heartbeat write, and closes it. Liveness is per replica: each
// stamps its own platform.gateway_replicas row (with the address the others forward
// streams to), not the rows of its thousands of agents. Every write an agent's connection makes about the agent
// itself is fenced on still owning the row, so a superseded connection cannot overwrite
// what the newer one reported.
//
// # Session streams
//
// A browser reaches a session's stream (VNC) with a WebSocket to StreamPath (stream.go).
// The gateway authenticates the caller's access token, asks the sessions service whether
// the caller may see the session and where it runs (SessionFinder), opens a session
// stream on the agent's tunnel and, once the agent has reached the session, pipes bytes
// both ways with fixed buffers: QUIC's per-stream flow control pushes back on a slow
// viewer without stalling the tunnel's other streams. Every refusal happens before the
// upgrade, as problem+json. The bytes are counted per session in memory and recorded in
// the tenant's session_traffic table in batches (traffic.go), which the sessions
// service's idle timer reads as activity. A stream for an agent whose tunnel another
// live replica holds is forwarded to that replica's advertised URL, its peer listener,
// with the caller's own credentials, once; the owner authorizes it again, counts its
// bytes and pipes it (forward.go). Replicas reach each other only over mutual TLS with
// replica certificates of the internal CA (peer.go): the credential never crosses the
// pod network in clear text, and only a replica can hand the owner a forward.
package gateway

import (
	"context"
	"encoding/json"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/wire"
)

// Name is the service's name in logs, traces and metrics.
const Name = "agent-gateway"

// AgentID identifies an agent: "agt_" and 20 characters of a-z and 2-7, minted by the
// gateway at enrollment. It is the wire protocol's agent id.
type AgentID = wire.AgentID

// SessionID identifies a session across the control plane and the agent.
type SessionID = wire.SessionID

// State is an agent's liveness as the scheduler sees it.
type State string

// The agent states. Only online agents receive new sessions.
const (
	StateOnline   State = "online"
	StateDegraded State = "degraded"
	StateOffline  State = "offline"
)

// Capacity is what an agent reported it can host; see wire.Capacity.
type Capacity = wire.Capacity

// Agent is an enrolled agent as the registry knows it.
type Agent struct {
	ID     AgentID   `json:"id"`
	Tenant tenant.ID `json:"tenant_id"`
	Name   string    `json:"name"`
	// Tags come from the enrollment token and may be changed by an admin.
	Tags []string `json:"tags"`
	// ReportedTags are what the agent announces about itself (its capabilities).
	ReportedTags []string `json:"reported_tags"`
	Version      string   `json:"version"`
	// Facts are the cluster facts of the agent's last Hello (kubernetes_version, region…).
	Facts    map[string]string `json:"facts"`
	Capacity Capacity          `json:"capacity"`
	State    State             `json:"state"`
	// Draining agents keep their sessions but get no new ones.
	Draining bool       `json:"draining"`
	LastSeen *time.Time `json:"last_seen,omitempty"`
	// Gateway is the replica that holds (or last held) the agent's tunnel.
	Gateway      string     `json:"gateway_id,omitempty"`
	CertSerial   string     `json:"cert_serial,omitempty"`
	CertNotAfter *time.Time `json:"cert_not_after,omitempty"`
	CreatedAt    time.Time  `json:"created_at"`
	UpdatedAt    time.Time  `json:"updated_at"`
}

// AgentPatch changes an agent; nil fields stay as they are.
type AgentPatch struct {
	Name     *string   `json:"name,omitempty"`
	Tags     *[]string `json:"tags,omitempty"`
	Draining *bool     `json:"draining,omitempty"`
}

// Desired is the state the control plane wants a session in; see wire.Desired.
type Desired = wire.Desired

// AssignmentInput asks for a session to be in state Desired with Spec on agent AgentID.
type AssignmentInput struct {
	SessionID SessionID       `json:"session_id"`
	AgentID   AgentID         `json:"agent_id"`
	Desired   Desired         `json:"desired"`
	Spec      json.RawMessage `json:"spec,omitempty"`
	// Move allows the session to leave the agent it is assigned to: that agent is told to
	// delete it (a retirement), and AgentID gets it at the next generation. Without Move,
	// an assignment to another agent is a conflict.
	Move bool `json:"move,omitempty"`
}

// AssignResult is the outcome of one input of a batch: the assignment as stored, or the
// apperr error that input alone met (the others are applied regardless).
type AssignResult struct {
	Assignment Assignment
	Err        error
}

// Assignment is a session's desired state at a generation, and how far the agent got.
type Assignment struct {
	SessionID       SessionID       `json:"session_id"`
	AgentID         AgentID         `json:"agent_id"`
	Generation      int64           `json:"generation"`
	Desired         Desired         `json:"desired"`
	Spec            json.RawMessage `json:"spec"`
	AckedGeneration int64           `json:"acked_generation"`
	// AckError is the agent's last failure to apply, if any.
	AckError  *wire.Error `json:"ack_error,omitempty"`
	CreatedAt time.Time   `json:"created_at"`
	UpdatedAt time.Time   `json:"updated_at"`
	// TraceParent is the W3C trace context of the write that set this generation.
	TraceParent string `json:"-"`
}

// Pending reports whether the agent has not yet acknowledged the current generation.
func (a Assignment) Pending() bool { return a.Generation > a.AckedGeneration }

// SessionStatus is a session's observed state, as its agent last reported it.
type SessionStatus struct {
	SessionID          SessionID      `json:"session_id"`
	AgentID            AgentID        `json:"agent_id"`
	Phase              wire.Phase     `json:"phase"`
	Reason             string         `json:"reason,omitempty"`
	Message            string         `json:"message,omitempty"`
	ObservedGeneration int64          `json:"observed_generation"`
	Endpoint           *wire.Endpoint `json:"endpoint,omitempty"`
	LastTransition     *time.Time     `json:"last_transition,omitempty"`
	ObservedAt         time.Time      `json:"observed_at"`
	UpdatedAt          time.Time      `json:"updated_at"`
}

// StatusChannel is the PostgreSQL NOTIFY channel on which the gateway announces every
// stored session status change, with payload "<tenant id>:<session id>", for other
// services (sessions' live view). Like every NOTIFY it is lossy; listeners re-read.
const StatusChannel = "streamspace_session_status"

// AgentsChannel is the PostgreSQL NOTIFY channel on which the gateway announces a change
// of what placement sees of an agent (it came online, went offline, its capacity, tags or
// draining changed), with the tenant id as payload, so that the scheduler places at once.
// An agent that falls silent is aged by readers, unannounced; they re-read on a timer.
const AgentsChannel = "streamspace_agents"

// Enrollment is what consuming an enrollment token yields: whom the agent belongs to and
// what to call it. Identity's token is the only source of these names.
type Enrollment struct {
	Tenant  tenant.ID `json:"tenant_id"`
	TokenID string    `json:"token_id"`
	Name    string    `json:"name"`
	Tags    []string  `json:"tags"`
}

// Enroller consumes one-time enrollment tokens: identity's service in-process, or
// identity's HTTP API (NewHTTPEnroller). It returns apperr Unauthenticated for a token
// that is unknown, expired, revoked or used.
type Enroller interface {
	ConsumeEnrollmentToken(ctx context.Context, raw string) (Enrollment, error)
}

// EnrollerFunc adapts a function to Enroller.
type EnrollerFunc func(ctx context.Context, raw string) (Enrollment, error)

// ConsumeEnrollmentToken implements Enroller.
func (f EnrollerFunc) ConsumeEnrollmentToken(ctx context.Context, raw string) (Enrollment, error) {
	return f(ctx, raw)
}

// EnrollRequest is an agent's first contact: its token and a PKCS #10 CSR for its own key.
type EnrollRequest struct {
	Token  string `json:"token"`
	CSRPEM string `json:"csr_pem"`
}

// EnrollResponse is the agent's identity: the names the gateway chose (from the token),
// its client certificate and the CA that the gateway's server certificate chains to.
type EnrollResponse struct {
	AgentID        AgentID   `json:"agent_id"`
	TenantID       tenant.ID `json:"tenant_id"`
	CertificatePEM string    `json:"certificate_pem"`
	CAPEM          string    `json:"ca_pem"`
	NotAfter       time.Time `json:"not_after"`
}

// Service is the gateway's API for admins and for other services. Every method
// documents the apperr codes it returns; any other error is internal. Methods read the
// tenant from ctx.
type Service interface {
	// Agents lists the tenant's agents (admin).
	Agents(ctx context.Context) ([]Agent, error)
	// Agent returns one agent (admin). NotFound.
	Agent(ctx context.Context, id AgentID) (Agent, error)
	// UpdateAgent renames, retags or drains an agent (admin). NotFound, Invalid.
	UpdateAgent(ctx context.Context, id AgentID, p AgentPatch) (Agent, error)
	// DeleteAgent deletes an agent and revokes its certificate: its tunnel closes within
	// a second and the certificate is refused from then on (admin). NotFound.
	DeleteAgent(ctx context.Context, id AgentID) error

	// Assign sets a session's desired state, bumping its generation when desired or spec
	// change (an identical write is a no-op), and announces it to the agent (admin or
	// system). Invalid; NotFound: no such agent; Conflict: the session belongs to another
	// agent.
	Assign(ctx context.Context, in AssignmentInput) (Assignment, error)
	// AssignMany applies a batch of inputs (each as Assign would, Move included) in one
	// transaction, announcing each changed agent once, and returns one result per input,
	// in order (admin or system). Invalid for the whole batch: an input that fails
	// validation, a session named twice, more than MaxAssignBatch inputs. Per input:
	// NotFound (no such agent), Conflict (another agent, without Move).
	AssignMany(ctx context.Context, ins []AssignmentInput) ([]AssignResult, error)
	// Unassign takes a session off its agent, which is told to delete it; afterwards the
	// session has no assignment, and a later Assign may name any agent. Unassigning a
	// session without an assignment changes nothing (admin or system).
	Unassign(ctx context.Context, id SessionID) error
	// Assignment returns a session's assignment. NotFound.
	Assignment(ctx context.Context, id SessionID) (Assignment, error)
	// AgentAssignments lists an agent's assignments, and the retirements (desired
	// deleted) of sessions that left it and are not yet acknowledged. NotFound: no such
	// agent.
	AgentAssignments(ctx context.Context, id AgentID) ([]Assignment, error)
	// SessionStatus returns a session's observed state. NotFound: nothing reported yet.
	SessionStatus(ctx context.Context, id SessionID) (SessionStatus, error)
	// AgentSessionStatus lists the observed state of an agent's sessions.
	AgentSessionStatus(ctx context.Context, id AgentID) ([]SessionStatus, error)
}

// Hello is what the store records from an agent's Hello.
type Hello struct {
	Version      string
	ReportedTags []string
	Facts        map[string]string
	Capacity     Capacity
}

// Owner names the connection that holds an agent's tunnel.
type Owner struct {
	Gateway string
	Conn    string
}

// Ownership is an agent's owner row as another replica sees it: who holds the tunnel,
// where to forward its streams, and how long ago the owning replica last stamped its
// replica row (platform.gateway_replicas).
type Ownership struct {
	// Gateway is the owning replica; empty when no replica holds the tunnel.
	Gateway string
	// URL is the owner's advertised peer listener; empty when it advertises none.
	URL string
	// Age is the time since the owning replica's last heartbeat, measured by the
	// database's clock; Live is false when the replica has no row (it stopped cleanly, or
	// never stamped one).
	Age  time.Duration
	Live bool
}

// Beat is the latest heartbeat of one agent's connection, as a batch records it.
type Beat struct {
	Agent AgentID
	Conn  string
	// Capacity is the newest capacity the connection reported since the last batch; nil
	// when none of its beats since carried one (wire 1.2): the stored capacity stays.
	Capacity *Capacity
}

// Store is the gateway's persistence. Tenant-scoped methods read the tenant from ctx (a
// principal, or auth.AsSystem for an agent identified by its certificate); the others
// touch only the platform schema. Methods taking an Owner are fenced: they change nothing
// and return ErrNotOwner unless that connection still owns the agent.
type Store interface {
	// CreateAgent stores a new agent and its directory row (tenant-scoped).
	CreateAgent(ctx context.Context, a Agent, tokenID string) error
	// SetCert records the agent's newest certificate (tenant-scoped). NotFound.
	SetCert(ctx context.Context, id AgentID, serial string, notAfter time.Time) error
	// Agent returns an agent (tenant-scoped). NotFound.
	Agent(ctx context.Context, id AgentID) (Agent, error)
	// Agents lists the tenant's agents by name (tenant-scoped).
	Agents(ctx context.Context) ([]Agent, error)
	// UpdateAgent applies p (tenant-scoped). NotFound.
	UpdateAgent(ctx context.Context, id AgentID, p AgentPatch) (Agent, error)
	// DeleteAgent deletes the agent, its directory row and its assignments, and
	// announces the revocation on the agent's channel, in one transaction
	// (tenant-scoped). NotFound.
	DeleteAgent(ctx context.Context, id AgentID) error

	// DirectoryTenant returns the tenant of a live agent of an active tenant
	// (platform). NotFound otherwise: unknown, deleted, or its tenant is not active.
	DirectoryTenant(ctx context.Context, id AgentID) (tenant.ID, error)
	// Claim makes o the agent's owner and announces it on the agent's channel (platform).
	// NotFound: the agent was deleted.
	Claim(ctx context.Context, id AgentID, o Owner) error
	// Ownership returns the owner row of an agent of the context's tenant (platform, one
	// statement). NotFound: no such agent in the tenant.
	Ownership(ctx context.Context, id AgentID) (Ownership, error)
	// RegisterReplica creates or replaces replica gateway's row, alive now, with the
	// address at which the other replicas reach its peer listener (advertiseURL, "" for none)
	// (platform). The row's heartbeat is the liveness of every owner row naming it.
	RegisterReplica(ctx context.Context, gateway, advertiseURL string) error
	// StampReplica records that replica gateway is alive now: one row per replica,
	// however many agents it holds. The row keeps its address; one that was removed
	// meanwhile is registered again with advertiseURL (platform).
	StampReplica(ctx context.Context, gateway, advertiseURL string) error
	// RemoveReplica deletes replica gateway's row when it stops cleanly (platform).
	RemoveReplica(ctx context.Context, gateway string) error
	// LostClaims returns those of the listed agents that their connection (the map's
	// value) no longer owns: superseded, released or deleted (platform, read-only).
	LostClaims(ctx context.Context, owned map[AgentID]string) (lost []AgentID, err error)
	// Release clears o's ownership and marks the agent offline (tenant-scoped, fenced).
	Release(ctx context.Context, id AgentID, o Owner) error
	// ReleaseMany is Release for many agents of the context's tenant in one transaction,
	// each fenced by its connection (the map's value); agents no longer owned by theirs
	// are left alone (tenant-scoped).
	ReleaseMany(ctx context.Context, owned map[AgentID]string) error
	// RecordHello stores the agent's facts and marks it online (tenant-scoped, fenced).
	RecordHello(ctx context.Context, id AgentID, o Owner, h Hello) error
	// Connect is a connection's start in one transaction: Claim, RecordHello and
	// DesiredSet (tenant-scoped). NotFound: the agent was deleted.
	Connect(ctx context.Context, id AgentID, o Owner, h Hello) ([]Assignment, error)
	// RecordHeartbeats marks each beat's agent online, seen now, and stores its capacity
	// unless it has none (then the stored one stays), in one statement (tenant-scoped,
	// fenced per beat). It returns the agents whose beat was refused because its
	// connection no longer owns the agent.
	RecordHeartbeats(ctx context.Context, beats []Beat) (lost []AgentID, err error)

	// Assign upserts an assignment and announces it (tenant-scoped). See Service.Assign.
	Assign(ctx context.Context, in AssignmentInput, traceParent string) (Assignment, error)
	// AssignMany is Assign for a batch, in one transaction with one announcement per
	// changed agent (tenant-scoped). See Service.AssignMany; inputs are already valid and
	// name distinct sessions.
	AssignMany(ctx context.Context, ins []AssignmentInput, traceParent string) ([]AssignResult, error)
	// Unassign retires a session's assignment from its agent and announces it
	// (tenant-scoped). See Service.Unassign.
	Unassign(ctx context.Context, id SessionID, traceParent string) error
	// Assignment returns one assignment (tenant-scoped). NotFound.
	Assignment(ctx context.Context, id SessionID) (Assignment, error)
	// DesiredSet returns the agent's full desired set: every assignment except deleted
	// ones already acknowledged, and every unacknowledged retirement as desired deleted
	// (tenant-scoped).
	DesiredSet(ctx context.Context, id AgentID) ([]Assignment, error)
	// AgentAssignments lists every assignment of an agent, and its unacknowledged
	// retirements (tenant-scoped).
	AgentAssignments(ctx context.Context, id AgentID) ([]Assignment, error)
	// PendingAgents returns which of ids have unacknowledged assignments or retirements
	// (tenant-scoped).
	PendingAgents(ctx context.Context, ids []AgentID) ([]AgentID, error)
	// Pending returns the agent's unacknowledged assignments and retirements
	// (tenant-scoped).
	Pending(ctx context.Context, id AgentID) ([]Assignment, error)
	// Ack records that the agent applied session at generation (raising
	// acked_generation, never lowering it), or failed to (tenant-scoped); for a session
	// that left the agent, the acknowledgement is its retirement's. A permanent failure
	// counts as acknowledged, with its error kept. NotFound: the session is neither
	// assigned to this agent nor retired from it.
	Ack(ctx context.Context, id AgentID, session SessionID, generation int64, failure *wire.Error) error

	// ReportStatus stores statuses of sessions assigned to the agent and announces each on
	// StatusChannel (tenant-scoped, fenced). It returns the ids it refused because they
	// are not assigned to this agent in this tenant.
	ReportStatus(ctx context.Context, id AgentID, o Owner, ss []wire.SessionStatus) (refused []SessionID, err error)
	// SessionStatus returns one session's status (tenant-scoped). NotFound.
	SessionStatus(ctx context.Context, id SessionID) (SessionStatus, error)
	// AgentSessionStatus lists an agent's sessions' statuses (tenant-scoped).
	AgentSessionStatus(ctx context.Context, id AgentID) ([]SessionStatus, error)
	// RecordTraffic adds each session's bytes to its traffic record and stamps its last
	// traffic time, in one statement (tenant-scoped).
	RecordTraffic(ctx context.Context, ts []Traffic) error

	// CA returns the newest stored CA (platform). NotFound when there is none.
	CA(ctx context.Context) (StoredCA, error)
	// CreateCA stores ca unless another replica stored one first, and returns the newest
	// (platform).
	CreateCA(ctx context.Context, ca StoredCA) (StoredCA, error)
}

// StoredCA is a CA row: its certificate and its sealed private key.
type StoredCA struct {
	ID        string
	CertPEM   string
	SealedKey []byte
	NotAfter  time.Time
	CreatedAt time.Time
}

// AgentChannel is the NOTIFY channel of one agent: work, ownership and revocation news.
// Agent ids are lowercase and short, so the name stays within PostgreSQL's 63 bytes.
func AgentChannel(id AgentID) string { return "ss_agent_" + string(id) }

// Payloads on an agent's channel. An ownership claim is ownerPrefix + the connection id.
const (
	NotifyWork    = "work"
	NotifyRevoked = "revoked"
	NotifyOwner   = "owner:"
)

// ErrNotOwner is returned by fenced Store methods when the connection no longer owns the
// agent: a newer connection took over, or the agent was deleted.
var ErrNotOwner = &apperr.Error{Code: apperr.Conflict, Message: "this connection no longer owns the agent"}
