package kubernetes

import (
	"crypto/sha256"
	"encoding/base32"
	"regexp"
	"strings"

	"streamspace.dev/libs/wire"
)

// Labels and annotations the backend writes. Selecting on ManagedByLabel and AgentLabel
// is what keeps the backend away from objects that are not its own.
const (
	ManagedByLabel = "app.kubernetes.io/managed-by"
	ManagedByValue = "streamspace-agent"
	SessionLabel   = "streamspace.dev/session"
	TenantLabel    = "streamspace.dev/tenant"
	AgentLabel     = "streamspace.dev/agent"
	// ComponentLabel tells the objects of one session apart (root, home, …).
	ComponentLabel = "app.kubernetes.io/component"
	// RetainedLabel marks a home volume released from its deleted session.
	RetainedLabel = "streamspace.dev/retained"

	// SessionIDAnnotation holds the exact session id on the root, because a label value
	// cannot hold every possible id.
	SessionIDAnnotation = "streamspace.dev/session-id"
	// GenerationAnnotation and DesiredAnnotation record the applied assignment on the
	// root, so that an agent restarted from scratch reports the right observed
	// generation and hibernated sessions stay hibernated.
	GenerationAnnotation = "streamspace.dev/generation"
	DesiredAnnotation    = "streamspace.dev/desired"
	// RetainAnnotation on a home PVC ("true") keeps it when its session is deleted, whatever
	// the backend's policy.
	RetainAnnotation = "streamspace.dev/retain"

	// FieldManager is the server-side apply field manager.
	FieldManager = "streamspace-agent"

	// assignmentKey is the root ConfigMap's data key holding the assignment as JSON.
	assignmentKey = "assignment.json"
	// passwordKey is the Secret's key holding the VNC password.
	passwordKey = "vnc-password"
	// containerName is the session container's name.
	containerName = "session"
)

// Component values.
const (
	componentRoot    = "root"
	componentCreds   = "credentials"
	componentHome    = "home"
	componentStream  = "stream"
	componentSession = "session"
)

// names are the object names of one session.
type names struct {
	// key is the DNS-safe part every name shares.
	key string
	// label is the value of SessionLabel: the id itself when it is a valid label value.
	label string
}

func (n names) root() string       { return n.key }
func (n names) deployment() string { return n.key }
func (n names) service() string    { return n.key }
func (n names) secret() string     { return n.key + "-creds" }
func (n names) pvc() string        { return n.key + "-home" }

var (
	// plainID is the id shape whose names are derived by replacing "_" with "-": as the
	// input has no "-", the mapping is injective. Every sessions.ID ("ses_" + 20 base32
	// characters) has this shape.
	plainID = regexp.MustCompile(`^[a-z0-9][a-z0-9_]{0,38}[a-z0-9]$`)
	// labelValue is what Kubernetes accepts as a label value.
	labelValue = regexp.MustCompile(`^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$`)
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// hashed returns a DNS-safe digest of s. The "sh-" prefix keeps digests apart from the
// plain names, which all start "ss-", so the two schemes cannot collide.
func hashed(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sh-" + strings.ToLower(b32.EncodeToString(sum[:16]))
}

// namesFor derives the object names of session id. Names depend on the session id alone:
// two sessions of one user and template get different names, and the same session always
// gets the same ones.
func namesFor(id wire.SessionID) names {
	var n names
	if plainID.MatchString(string(id)) {
		n.key = "ss-" + strings.ReplaceAll(string(id), "_", "-")
	} else {
		n.key = hashed(string(id))
	}
	n.label = labelFor(string(id))
	return n
}

// labelFor returns s when it is a valid label value, else its digest.
func labelFor(s string) string {
	if labelValue.MatchString(s) {
		return s
	}
	return hashed(s)
}
