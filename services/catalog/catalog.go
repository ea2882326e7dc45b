// Package catalog is StreamSpace's catalog service: the application templates a tenant can
// launch. There are two levels: a platform-wide catalog, managed by platform operators and
// visible to every tenant, and each tenant's own templates, managed by that tenant's
// admins and visible only to it. A tenant template shadows the platform template of the
// same name, so a tenant can customise a platform entry without affecting anyone else.
//
// It follows go-kit's shape: this file holds the domain types and the Service and Store
// interfaces; validate.go and quantity.go the model's rules; service.go the logic and
// authorisation; endpoints.go the go-kit endpoints; transport_http.go the routes and
// codecs; middleware.go the logging and metrics decorators. postgres/ is the Store,
// manifest/ parses StreamSpace v1 Template manifests, and module/ wires everything into a
// server.Module (it lives apart because it imports postgres/, which imports this package).
//
// # Errors
//
// Every method reports failures as *apperr.Error values with these codes:
//
//   - invalid: the input breaks a rule; Fields names each offending field.
//   - unauthenticated: the context carries no caller.
//   - forbidden: the caller's role is too low (a member writing).
//   - not_found: no such template in the caller's view — also for another tenant's
//     template, and for platform routes called by anyone but an operator.
//   - conflict: a create hit an existing name, or an update's version field is stale.
//   - precondition_failed: an update's If-Match ETag is stale.
package catalog

import (
	"context"
	"slices"
	"time"

	"streamspace.dev/libs/spec"
)

// Name is the service's name in logs, traces and metrics.
const Name = "catalog"

// TemplateName is a template's handle: 2–63 lowercase letters, digits and single hyphens,
// starting with a letter (a DNS label, so it can name Kubernetes objects).
type TemplateName string

// Scope says which catalog a template belongs to.
type Scope string

// The scopes.
const (
	// ScopePlatform is the platform-wide catalog.
	ScopePlatform Scope = "platform"
	// ScopeTenant is the calling tenant's own catalog.
	ScopeTenant Scope = "tenant"
)

// The parts a template is made of are the session spec's (libs/spec): a session's spec is
// rendered from its template, so the two cannot drift apart.
type (
	// StreamKind says how the streaming port is spoken to.
	StreamKind = spec.StreamKind
	// Protocol is a port's transport protocol.
	Protocol = spec.Protocol
	// Capability is a v1 session capability a template asks for.
	Capability = spec.Capability
	// EnvVar is one environment variable of the session container.
	EnvVar = spec.EnvVar
	// ResourceList is a cpu and a memory quantity in Kubernetes syntax ("500m", "2Gi"); an
	// empty string leaves that resource unset.
	ResourceList = spec.ResourceList
	// Resources are a session's default requests and limits.
	Resources = spec.Resources
	// Home is the persistent home volume kept across sessions (and hibernation).
	Home = spec.Home
	// Volume is a scratch volume mounted into the session, emptied when it ends.
	Volume = spec.Volume
	// Port is a container port. Exactly one port of a template carries the stream, and
	// says how in Stream.
	Port = spec.Port
)

// The stream kinds, protocols and capabilities, as spec defines them.
const (
	StreamVNCWeb = spec.StreamVNCWeb
	StreamRFB    = spec.StreamRFB
	StreamHTTP   = spec.StreamHTTP
	TCP          = spec.TCP
	UDP          = spec.UDP
	CapNetwork   = spec.CapNetwork
	CapAudio     = spec.CapAudio
	CapClipboard = spec.CapClipboard
	CapUSB       = spec.CapUSB
	CapPrinting  = spec.CapPrinting
)

// Spec is everything about a template that its editors set.
type Spec struct {
	DisplayName  string       `json:"display_name"`
	Description  string       `json:"description"`
	Category     string       `json:"category"`
	IconURL      string       `json:"icon_url"`
	Tags         []string     `json:"tags"`
	Image        string       `json:"image"`
	Env          []EnvVar     `json:"env"`
	Resources    Resources    `json:"resources"`
	Home         *Home        `json:"home,omitempty"`
	Volumes      []Volume     `json:"volumes"`
	Ports        []Port       `json:"ports"`
	Capabilities []Capability `json:"capabilities"`
	// AgentTags are "key=value" labels an agent must carry to run this template.
	AgentTags []string `json:"agent_tags"`
	// IdleTimeoutSeconds hibernates an idle session after this long; 0 means the tenant's default.
	IdleTimeoutSeconds int `json:"idle_timeout_seconds"`
	// MaxDurationSeconds stops a session after this long; 0 means the tenant's default.
	MaxDurationSeconds int `json:"max_duration_seconds"`
}

// StreamPort returns the streaming port, if the spec has exactly one.
func (s Spec) StreamPort() (Port, bool) {
	var found Port
	n := 0
	for _, p := range s.Ports {
		if p.Stream != "" {
			found = p
			n++
		}
	}
	return found, n == 1
}

// Clone returns a deep copy of s, so a copy can be changed without touching the original.
func (s Spec) Clone() Spec {
	c := s
	c.Tags = slices.Clone(s.Tags)
	c.Env = slices.Clone(s.Env)
	c.Volumes = slices.Clone(s.Volumes)
	c.Ports = slices.Clone(s.Ports)
	c.Capabilities = slices.Clone(s.Capabilities)
	c.AgentTags = slices.Clone(s.AgentTags)
	if s.Home != nil {
		h := *s.Home
		c.Home = &h
	}
	return c
}

// Template is a stored template as a caller sees it.
type Template struct {
	Name  TemplateName `json:"name"`
	Scope Scope        `json:"scope"`
	Spec
	// Version grows by one with every change; it is the ETag and the optimistic-
	// concurrency token of updates.
	Version   int64     `json:"version"`
	Enabled   bool      `json:"enabled"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// NewTemplate is a template to create.
type NewTemplate struct {
	Name TemplateName `json:"name"`
	Spec
	// Enabled defaults to true.
	Enabled *bool `json:"enabled,omitempty"`
}

// Precondition guards a write with the version the caller last saw.
type Precondition struct {
	// Version, when positive, must equal the stored version.
	Version int64
	// FromIfMatch says Version came from an If-Match header: a mismatch is then
	// precondition_failed (412) rather than conflict (409).
	FromIfMatch bool
}

// Update replaces a template's spec (and optionally its enabled flag).
type Update struct {
	Spec
	Enabled *bool
	If      Precondition
}

// Query filters and pages a list.
type Query struct {
	// Category, when set, keeps templates of exactly this category.
	Category string
	// Tag, when set, keeps templates carrying this tag.
	Tag string
	// Text, when set, keeps templates whose name, display name or description contain it
	// (case-insensitively).
	Text string
	// Cursor continues a previous page; it is opaque to callers.
	Cursor string
	// Limit is the page size: default DefaultLimit, at most MaxLimit.
	Limit int
	// IncludeDisabled lists disabled templates too (admins only; ignored for members).
	IncludeDisabled bool
}

// Page sizes.
const (
	DefaultLimit = 50
	MaxLimit     = 500
)

// Page is one page of a list.
type Page struct {
	Items []Template `json:"items"`
	// NextCursor continues the list; empty on the last page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// ImportOutcome says what an import did with one document.
type ImportOutcome string

// The outcomes.
const (
	OutcomeCreated   ImportOutcome = "created"
	OutcomeUpdated   ImportOutcome = "updated"
	OutcomeUnchanged ImportOutcome = "unchanged"
	OutcomeRejected  ImportOutcome = "rejected"
)

// ImportResult reports one document of an import.
type ImportResult struct {
	// Source names the file the document came from (the command line's imports); empty
	// for a request body.
	Source string `json:"source,omitempty"`
	// Document is the document's 1-based position in its stream.
	Document int `json:"document"`
	// Line is the line the document starts on.
	Line    int           `json:"line"`
	Name    TemplateName  `json:"name,omitempty"`
	Outcome ImportOutcome `json:"outcome"`
	// Version is the template's version after the import (not for rejected documents).
	Version int64 `json:"version,omitempty"`
	// Reason says why a document was rejected.
	Reason string `json:"reason,omitempty"`
	// Errors lists the offending fields of a rejected document.
	Errors []FieldError `json:"errors,omitempty"`
}

// FieldError names one invalid field of an imported document.
type FieldError struct {
	Field  string `json:"field"`
	Reason string `json:"reason"`
}

// ImportReport is the outcome of an import, one result per document, in order.
type ImportReport struct {
	Results   []ImportResult `json:"results"`
	Created   int            `json:"created"`
	Updated   int            `json:"updated"`
	Unchanged int            `json:"unchanged"`
	Rejected  int            `json:"rejected"`
}

// Add appends a result and counts it.
func (r *ImportReport) Add(res ImportResult) {
	r.Results = append(r.Results, res)
	switch res.Outcome {
	case OutcomeCreated:
		r.Created++
	case OutcomeUpdated:
		r.Updated++
	case OutcomeUnchanged:
		r.Unchanged++
	case OutcomeRejected:
		r.Rejected++
	}
}

// Service is the catalog. Methods with a Scope act on the platform catalog (operators
// only) or on the calling tenant's catalog; tenant-scope reads see the merged view —
// tenant templates plus the platform templates they do not shadow — while tenant-scope
// writes touch only the tenant's own templates. Members read; admins and owners write.
// See the package documentation for the error codes.
type Service interface {
	// List returns a page of templates, ordered by name. Members never see disabled ones.
	List(ctx context.Context, scope Scope, q Query) (Page, error)
	// Get returns one template: not_found when absent, or disabled and the caller a member.
	Get(ctx context.Context, scope Scope, name TemplateName) (Template, error)
	// Create stores a new template at version 1: invalid, conflict (name taken in scope).
	Create(ctx context.Context, scope Scope, t NewTemplate) (Template, error)
	// Update replaces a template's spec: invalid, not_found, conflict or
	// precondition_failed (stale version; see Precondition).
	Update(ctx context.Context, scope Scope, name TemplateName, u Update) (Template, error)
	// SetEnabled enables or disables a template: not_found, conflict, precondition_failed.
	SetEnabled(ctx context.Context, scope Scope, name TemplateName, enabled bool, pre Precondition) (Template, error)
	// Delete removes a template: not_found, conflict, precondition_failed.
	Delete(ctx context.Context, scope Scope, name TemplateName, pre Precondition) error
	// Import creates or updates templates from StreamSpace v1 Template manifests (YAML,
	// one or more documents). Each document succeeds or is rejected on its own; only an
	// oversized or unreadable stream fails the whole call (invalid).
	Import(ctx context.Context, scope Scope, yaml []byte) (ImportReport, error)
}

// ManifestDocument is one document of an import stream after parsing: a template to store,
// or the reason it was rejected.
type ManifestDocument struct {
	// Index is the document's 1-based position among the stream's non-empty documents.
	Index int
	// Line is the 1-based line the document starts on.
	Line int
	// Name and Spec are the mapped template when Err is nil; Name is also set on a
	// rejected document when it could be read.
	Name TemplateName
	Spec Spec
	// Err says why the document was rejected (an *apperr.Error of code invalid).
	Err error
}

// ParseFunc parses an import stream: manifest.Parse. Service takes it as a dependency
// because the manifest package builds on this one's types.
type ParseFunc func(data []byte) ([]ManifestDocument, error)

// UpsertOutcome is what Store.Upsert did.
type UpsertOutcome = ImportOutcome

// Store persists templates. Tenant-scope methods run inside the context's tenant (through
// tenantdb) and cannot run without one; platform-scope methods touch only the platform
// schema. Store methods do no authorisation: Service does.
type Store interface {
	// List returns up to q.Limit+1 templates after q.Cursor's name, ordered by name; the
	// tenant scope merges in the unshadowed platform templates.
	List(ctx context.Context, scope Scope, q StoreQuery) ([]Template, error)
	// Get returns a template; in the tenant scope a tenant template wins over a platform
	// one (merged is true), or only the tenant's own (merged false). not_found.
	Get(ctx context.Context, scope Scope, name TemplateName, merged bool) (Template, error)
	// Create inserts a template at version 1: conflict when the name is taken in scope.
	Create(ctx context.Context, scope Scope, name TemplateName, spec Spec, enabled bool) (Template, error)
	// Update replaces spec and enabled when the stored version equals version (or version
	// is 0): not_found, conflict (stale version).
	Update(ctx context.Context, scope Scope, name TemplateName, spec Spec, enabled *bool, version int64) (Template, error)
	// SetEnabled sets the enabled flag under the same version check as Update.
	SetEnabled(ctx context.Context, scope Scope, name TemplateName, enabled bool, version int64) (Template, error)
	// Delete removes a template when the stored version equals version (or version is 0):
	// not_found, conflict.
	Delete(ctx context.Context, scope Scope, name TemplateName, version int64) error
	// Upsert creates the template, or replaces its spec when it differs (keeping enabled),
	// in one transaction of its own: created, updated or unchanged.
	Upsert(ctx context.Context, scope Scope, name TemplateName, spec Spec) (Template, UpsertOutcome, error)
	// Seed creates the given platform templates in one transaction, once per seed id: it
	// reports false when the seed had already been applied. Existing names are left alone.
	Seed(ctx context.Context, id string, templates []NewTemplate) (bool, error)
}

// StoreQuery is a Query with its cursor decoded.
type StoreQuery struct {
	Category        string
	Tag             string
	Text            string
	After           TemplateName
	Limit           int
	IncludeDisabled bool
}
