// Package sessions is StreamSpace's sessions service: the session lifecycle (desired
// state and observed phase), quotas, idle hibernation, maximum duration and live status.
//
// It follows go-kit's shape: this file holds the domain types and the Service and Store
// interfaces; state.go the state machine (pure functions, table-tested); service.go the
// logic and authorisation; endpoints.go the go-kit endpoints; transport_http.go the routes
// and codecs (and the server-sent events stream); middleware.go the logging and metrics
// decorators; live.go the in-process fan-out of change notices. postgres/ is the Store and
// the background loops' SQL; module/ wires everything into a server.Module (it lives apart
// because it imports postgres/, which imports this package).
//
// # Desired and observed
//
// A user (or a timer) changes what a session should be — running, hibernated or
// stopped — and every change bumps the session's generation. The scheduler (a separate
// service) places the session on an agent and writes the generation to the gateway's
// assignment outbox. The agent reports what it sees; the gateway stores it and announces
// it; this service folds each report into the session's phase with Fold, which only ever
// moves along the legal edges of the phase graph. Running means the agent reported the
// session running at the current generation with a stream endpoint: the agent reports
// that only once the pod is Ready and the endpoint answers.
//
// # Errors
//
// Every method reports failures as *apperr.Error values with these codes:
//
//   - invalid: the input breaks a rule; Fields names each offending field.
//   - unauthenticated: the context carries no caller.
//   - forbidden: the caller's role is too low (a member changing quotas).
//   - not_found: no such session in the caller's view — also another user's session
//     (for members) and another tenant's, exactly as for a missing one.
//   - conflict: the action is illegal in the session's state (waking a stopped session),
//     or an Idempotency-Key was reused with another request.
//   - quota_exceeded: the create or wake would exceed a user or tenant quota.
package sessions

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"regexp"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/services/catalog"
)

// Name is the service's name in logs, traces and metrics.
const Name = "sessions"

// ID identifies a session: "ses_" and 20 characters of a-z and 2-7. It is also the
// session id of the agent protocol and of the gateway's assignment.
type ID string

var idPattern = regexp.MustCompile(`^ses_[a-z2-7]{20}$`)

// NewID returns a fresh random session ID (100 bits).
func NewID() ID {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	var b [20]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[b[i]&31]
	}
	return ID("ses_" + string(b[:]))
}

// ParseID validates s as a session ID. A malformed id is reported as not_found: to the
// caller it is simply a session that does not exist.
func ParseID(s string) (ID, error) {
	if !idPattern.MatchString(s) {
		return "", notFound()
	}
	return ID(s), nil
}

func notFound() error { return apperr.New(apperr.NotFound, "session not found") }

// Desired is the state a session should be in.
type Desired string

// The desired states.
const (
	DesiredRunning    Desired = "running"
	DesiredHibernated Desired = "hibernated"
	DesiredStopped    Desired = "stopped"
)

// Phase is a session's observed state.
type Phase string

// The phases. Pending: accepted, not yet considered by the scheduler. Scheduling: no
// agent chosen yet (the reason says why). Starting: placed, not yet ready. Running: the
// pod is Ready and the stream endpoint answers. Hibernated: scaled to zero, home volume
// kept. Stopping: on its way to Hibernated or Stopped. Stopped: gone, final. Failed: it
// cannot make progress (the reason says why); only stop and delete remain.
const (
	PhasePending    Phase = "Pending"
	PhaseScheduling Phase = "Scheduling"
	PhaseStarting   Phase = "Starting"
	PhaseRunning    Phase = "Running"
	PhaseHibernated Phase = "Hibernated"
	PhaseStopping   Phase = "Stopping"
	PhaseStopped    Phase = "Stopped"
	PhaseFailed     Phase = "Failed"
)

// Phases lists every phase, in lifecycle order.
var Phases = []Phase{PhasePending, PhaseScheduling, PhaseStarting, PhaseRunning, PhaseHibernated,
	PhaseStopping, PhaseStopped, PhaseFailed}

// Reasons are short CamelCase words that say why a session is in its phase or why an event
// happened. Agents add their own (ImagePullBackOff…); these are the control plane's.
const (
	ReasonCreated            = "Created"
	ReasonPlaced             = "Placed"
	ReasonNoAgentFits        = "NoAgentFits"
	ReasonWaitingForAgent    = "WaitingForAgent"
	ReasonEndpointNotReady   = "EndpointNotReady"
	ReasonHibernating        = "Hibernating"
	ReasonStopping           = "Stopping"
	ReasonWaking             = "Waking"
	ReasonIdleTimeout        = "IdleTimeout"
	ReasonMaxDuration        = "MaxDurationExceeded"
	ReasonProgressDeadline   = "ProgressDeadlineExceeded"
	ReasonAgentLost          = "AgentLost"
	ReasonAgentReturned      = "AgentReturned"
	ReasonRescheduled        = "Rescheduled"
	ReasonAgentFailed        = "AgentReportedFailure"
	ReasonUserRequest        = "UserRequest"
	ReasonHomeAgentUnusable  = "HomeAgentUnavailable"
	ReasonAssignmentRejected = "AssignmentRejected"
)

// Endpoint is where the agent reaches the session's stream inside its cluster.
type Endpoint struct {
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// Session is a session as its owner and the tenant's admins see it.
type Session struct {
	ID    ID     `json:"id"`
	Owner string `json:"owner_id"`
	Name  string `json:"name"`
	// Template is the catalog template it was created from, with the scope and version
	// that were resolved at the time.
	Template        string   `json:"template"`
	TemplateScope   string   `json:"template_scope"`
	TemplateVersion int64    `json:"template_version"`
	Tags            []string `json:"tags"`
	// CPUMillis and MemoryBytes are the session's resource requests: what quotas and
	// placement count.
	CPUMillis   int64 `json:"cpu_millis"`
	MemoryBytes int64 `json:"memory_bytes"`
	// AgentTags are the tags an agent must carry to run the session.
	AgentTags  []string `json:"agent_tags"`
	Desired    Desired  `json:"desired"`
	Generation int64    `json:"generation"`
	Phase      Phase    `json:"phase"`
	Reason     string   `json:"reason,omitempty"`
	Message    string   `json:"message,omitempty"`
	// PhaseSince is when the session last made progress (entered its phase).
	PhaseSince time.Time `json:"phase_since"`
	// AgentID is the agent the session is placed on, if any.
	AgentID string `json:"agent_id,omitempty"`
	// AgentLost says the agent stopped reporting while the session was running there.
	AgentLost          bool      `json:"agent_lost,omitempty"`
	Endpoint           *Endpoint `json:"endpoint,omitempty"`
	IdleTimeoutSeconds int       `json:"idle_timeout_seconds"`
	MaxDurationSeconds int       `json:"max_duration_seconds"`
	// LastActivity is what the idle timeout counts from: the later of the last heartbeat,
	// wake or start and the last stream traffic the gateway recorded. Reads (Get, List)
	// and the answers of writes show it so; a session read only for the scheduler may
	// carry the heartbeat alone.
	LastActivity time.Time `json:"last_activity"`
	// StartedAt is when the session first became Running.
	StartedAt *time.Time `json:"started_at,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	UpdatedAt time.Time  `json:"updated_at"`

	// Internal bookkeeping, not shown: what the scheduler last wrote to the gateway.
	LastAgentID          string     `json:"-"`
	DispatchedGeneration int64      `json:"-"`
	AssignmentGeneration int64      `json:"-"`
	StatusObservedAt     *time.Time `json:"-"`
	AgentLostAt          *time.Time `json:"-"`
}

// Placed reports whether the session has an agent.
func (s Session) Placed() bool { return s.AgentID != "" }

// Event is one step of a session's history.
type Event struct {
	ID         int64     `json:"id"`
	SessionID  ID        `json:"session_id"`
	At         time.Time `json:"at"`
	Kind       string    `json:"kind"`
	Phase      Phase     `json:"phase,omitempty"`
	Desired    Desired   `json:"desired,omitempty"`
	Generation int64     `json:"generation,omitempty"`
	Reason     string    `json:"reason,omitempty"`
	Message    string    `json:"message,omitempty"`
	Actor      string    `json:"actor,omitempty"`
}

// The kinds of event.
const (
	EventCreated  = "created"
	EventDesired  = "desired"
	EventPhase    = "phase"
	EventPlaced   = "placed"
	EventAgent    = "agent"
	EventDeleted  = "deleted"
	EventTags     = "tags"
	EventRejected = "rejected"
)

// ResourceOverride asks for other requests than the template's, in Kubernetes quantity
// syntax. They may not exceed the template's limits (or, without limits, the tenant's
// per-session maximum).
type ResourceOverride struct {
	CPU    string `json:"cpu,omitempty"`
	Memory string `json:"memory,omitempty"`
}

// NewSession is a create request.
type NewSession struct {
	// Template names a catalog template visible to the caller (the tenant's own shadows
	// the platform's of the same name).
	Template string `json:"template"`
	// Name is a display name; the template's display name when empty.
	Name      string            `json:"name,omitempty"`
	Tags      []string          `json:"tags,omitempty"`
	Resources *ResourceOverride `json:"resources,omitempty"`
	// IdleTimeoutSeconds may shorten (never lengthen) the template's idle timeout.
	IdleTimeoutSeconds *int `json:"idle_timeout_seconds,omitempty"`
}

// Query filters and pages a list.
type Query struct {
	// Mine limits an admin's list to their own sessions (members always get only theirs).
	Mine bool
	// Owner, for admins, keeps one user's sessions.
	Owner string
	// Phase keeps sessions in this phase.
	Phase Phase
	// Tag keeps sessions carrying this tag.
	Tag string
	// Cursor continues a previous page.
	Cursor string
	// Limit is the page size: default DefaultLimit, at most MaxLimit.
	Limit int
}

// Page sizes.
const (
	DefaultLimit = 50
	MaxLimit     = 200
)

// Page is one page of a list.
type Page struct {
	Items      []Session `json:"items"`
	NextCursor string    `json:"next_cursor,omitempty"`
}

// Quota bounds what running sessions may hold. A nil field is unlimited.
type Quota struct {
	MaxSessions    *int64 `json:"max_sessions,omitempty"`
	MaxCPUMillis   *int64 `json:"max_cpu_millis,omitempty"`
	MaxMemoryBytes *int64 `json:"max_memory_bytes,omitempty"`
}

// Settings are a tenant's session settings, stored in its settings table under key
// SettingsKey. Absent values take the built-in defaults (DefaultSettings).
type Settings struct {
	// Tenant bounds the whole tenant's running sessions.
	Tenant Quota `json:"tenant"`
	// User is every user's default quota; per-user overrides replace single fields.
	User Quota `json:"user"`
	// IdleTimeoutSeconds applies when the template sets none.
	IdleTimeoutSeconds int `json:"idle_timeout_seconds,omitempty"`
	// MaxDurationSeconds applies when the template sets none.
	MaxDurationSeconds int `json:"max_duration_seconds,omitempty"`
	// MaxSessionCPUMillis and MaxSessionMemoryBytes bound a resource override of a
	// template without limits.
	MaxSessionCPUMillis   int64 `json:"max_session_cpu_millis,omitempty"`
	MaxSessionMemoryBytes int64 `json:"max_session_memory_bytes,omitempty"`
}

// SettingsKey is the settings table's key for Settings.
const SettingsKey = "sessions"

// Built-in defaults.
const (
	DefaultIdleTimeoutSeconds = 30 * 60
	DefaultMaxDurationSeconds = 12 * 3600
	DefaultUserMaxSessions    = 10
	DefaultMaxSessionCPU      = 8000
	DefaultMaxSessionMemory   = 32 << 30
	// DefaultCPUMillis and DefaultMemoryBytes are the requests of a template that sets none.
	DefaultCPUMillis   = 500
	DefaultMemoryBytes = 1 << 30
)

// WithDefaults fills unset settings with the built-in defaults.
func (s Settings) WithDefaults() Settings {
	if s.IdleTimeoutSeconds <= 0 {
		s.IdleTimeoutSeconds = DefaultIdleTimeoutSeconds
	}
	if s.MaxDurationSeconds <= 0 {
		s.MaxDurationSeconds = DefaultMaxDurationSeconds
	}
	if s.User.MaxSessions == nil {
		n := int64(DefaultUserMaxSessions)
		s.User.MaxSessions = &n
	}
	if s.MaxSessionCPUMillis <= 0 {
		s.MaxSessionCPUMillis = DefaultMaxSessionCPU
	}
	if s.MaxSessionMemoryBytes <= 0 {
		s.MaxSessionMemoryBytes = DefaultMaxSessionMemory
	}
	return s
}

// Merge returns q with every field set in override replaced.
func (q Quota) Merge(override Quota) Quota {
	if override.MaxSessions != nil {
		q.MaxSessions = override.MaxSessions
	}
	if override.MaxCPUMillis != nil {
		q.MaxCPUMillis = override.MaxCPUMillis
	}
	if override.MaxMemoryBytes != nil {
		q.MaxMemoryBytes = override.MaxMemoryBytes
	}
	return q
}

// Usage is what running sessions hold.
type Usage struct {
	Sessions    int64 `json:"sessions"`
	CPUMillis   int64 `json:"cpu_millis"`
	MemoryBytes int64 `json:"memory_bytes"`
}

// Exceeds names the first limit of q that u breaks, or "".
func (u Usage) Exceeds(q Quota) string {
	switch {
	case q.MaxSessions != nil && u.Sessions > *q.MaxSessions:
		return "running sessions"
	case q.MaxCPUMillis != nil && u.CPUMillis > *q.MaxCPUMillis:
		return "CPU"
	case q.MaxMemoryBytes != nil && u.MemoryBytes > *q.MaxMemoryBytes:
		return "memory"
	}
	return ""
}

// Service is the sessions API. Members see and act on their own sessions; admins and
// owners on every session of the tenant. See the package documentation for error codes.
type Service interface {
	// Create starts a session from a template. With an idempotency key, a retry of the
	// same request returns the first result (replayed true): invalid, not_found (no such
	// template), conflict (key reused with another request), quota_exceeded.
	Create(ctx context.Context, in NewSession, idempotencyKey string) (s Session, replayed bool, err error)
	// List returns a page of sessions, newest first.
	List(ctx context.Context, q Query) (Page, error)
	// Get returns one session: not_found.
	Get(ctx context.Context, id ID) (Session, error)
	// Hibernate scales a running session to zero, keeping its home volume: not_found,
	// conflict.
	Hibernate(ctx context.Context, id ID) (Session, error)
	// Wake asks a hibernated session to run again: not_found, conflict, quota_exceeded.
	Wake(ctx context.Context, id ID) (Session, error)
	// Stop ends a session for good: not_found.
	Stop(ctx context.Context, id ID) (Session, error)
	// Delete stops the session if needed and removes it from every view: not_found.
	Delete(ctx context.Context, id ID) error
	// SetTags replaces a session's tags: invalid, not_found.
	SetTags(ctx context.Context, id ID, tags []string) (Session, error)
	// Events returns the session's history, oldest first: not_found.
	Events(ctx context.Context, id ID) ([]Event, error)
	// Heartbeat records client activity, postponing idle hibernation: not_found.
	Heartbeat(ctx context.Context, id ID) error
	// Settings returns the tenant's session settings (admins).
	Settings(ctx context.Context) (Settings, error)
	// SetSettings replaces the tenant's session settings (admins): invalid, forbidden.
	SetSettings(ctx context.Context, s Settings) (Settings, error)
	// SetUserQuota replaces one user's quota override (admins): invalid, forbidden.
	SetUserQuota(ctx context.Context, user string, q Quota) error
}

// Templates resolves catalog templates in the caller's view: catalog.Service.
type Templates interface {
	Get(ctx context.Context, scope catalog.Scope, name catalog.TemplateName) (catalog.Template, error)
}

// Record is a session to insert, fully resolved by the service.
type Record struct {
	Session Session
	// Spec is what the agent receives (a spec.Session, encoded).
	Spec json.RawMessage
}

// Idempotency is a create's Idempotency-Key and the hash of its request.
type Idempotency struct {
	Key         string
	RequestHash string
}

// Scope limits a store read or change to one owner ("" for any owner: admins).
type Scope struct {
	Owner string
}

// Store persists sessions. Every method runs in the context's tenant (tenantdb) and cannot
// run without one; it does no authorisation beyond the owner scope it is given.
type Store interface {
	// Create inserts rec and its created event and audit entry, charging the owner's and
	// the tenant's usage within the current settings, all in one transaction. With idem,
	// a key already used by the owner returns the stored session instead (replayed), or
	// conflict when the request hash differs. quota_exceeded.
	Create(ctx context.Context, rec Record, idem *Idempotency, actor string) (Session, bool, error)
	// Get returns one session that is not deleted: not_found.
	Get(ctx context.Context, id ID, scope Scope) (Session, error)
	// List returns up to q.Limit+1 sessions older than the cursor, newest first.
	List(ctx context.Context, scope Scope, q StoreQuery) ([]Session, error)
	// Transition locks the session, asks decide what to do, and applies the decision with
	// its event, audit entry and usage change in one transaction: not_found, plus
	// whatever decide returns. quota_exceeded when a wake does not fit.
	Transition(ctx context.Context, id ID, scope Scope, actor string, decide func(Session) (Decision, error)) (Session, error)
	// SetTags replaces tags: not_found.
	SetTags(ctx context.Context, id ID, scope Scope, tags []string, actor string) (Session, error)
	// Events lists a session's events: not_found.
	Events(ctx context.Context, id ID, scope Scope) ([]Event, error)
	// Touch sets last_activity to now for live sessions: not_found.
	Touch(ctx context.Context, id ID, scope Scope) error
	// Settings reads the tenant's settings (defaults applied).
	Settings(ctx context.Context) (Settings, error)
	// SetSettings stores the tenant's settings.
	SetSettings(ctx context.Context, s Settings, actor string) error
	// SetUserQuota stores a user's override.
	SetUserQuota(ctx context.Context, user string, q Quota, actor string) error
}

// StoreQuery is a Query with its cursor decoded.
type StoreQuery struct {
	Phase  Phase
	Tag    string
	Owner  string
	Before *Cursor
	Limit  int
}

// Cursor is the position of the last session of a page.
type Cursor struct {
	CreatedAt time.Time
	ID        ID
}

// Notification channels (PostgreSQL LISTEN/NOTIFY). Like every NOTIFY they are lossy:
// listeners also re-read periodically.
const (
	// ChangeChannel announces every change of a session a user may see, with payload
	// "<tenant id>:<session id>:<owner id>", for the live stream.
	ChangeChannel = "streamspace_sessions"
	// WorkChannel announces that a tenant has sessions for the scheduler, with payload
	// "<tenant id>".
	WorkChannel = "streamspace_session_work"
)
