// Package auth is how every StreamSpace service knows who is calling.
//
// Identity signs short-lived access JWTs with Ed25519 and publishes its public keys as a
// JWKS. Every service verifies tokens locally (Verifier), and the HTTP middleware puts the
// verified Principal — user, tenant, role, scopes — into the request context. Only this
// package (and the test helpers) can put a principal, and so a tenant, into a context:
// tenant data access (package tenantdb) cannot run for a tenant nobody authenticated.
//
// Personal API tokens never reach this package: they are exchanged at identity's token
// endpoint for an ordinary access JWT, so verification stays local and uniform.
package auth

import (
	"context"
	"slices"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/internal/principalctx"
	"streamspace.dev/libs/tenant"
)

// Kind says what sort of caller a principal is.
type Kind string

// The kinds of principal.
const (
	// KindUser is a tenant's user, from an access JWT.
	KindUser Kind = "user"
	// KindOperator is a platform operator: no tenant, platform routes only.
	KindOperator Kind = "operator"
	// KindAgent is an enrolled agent, authenticated by its client certificate.
	KindAgent Kind = "agent"
	// KindSystem is the control plane acting for a tenant without a caller's token: a
	// sign-in being checked, a background job. See AsSystem.
	KindSystem Kind = "system"
)

// Role is a user's role in their tenant.
type Role string

// The roles, from most to least privileged.
const (
	RoleOwner  Role = "owner"
	RoleAdmin  Role = "admin"
	RoleMember Role = "member"
)

var rank = map[Role]int{RoleOwner: 3, RoleAdmin: 2, RoleMember: 1}

// Valid reports whether r is a known role.
func (r Role) Valid() bool { return rank[r] > 0 }

// AtLeast reports whether r is as privileged as min.
func (r Role) AtLeast(min Role) bool { return r.Valid() && rank[r] >= rank[min] }

// Principal is a verified caller.
type Principal struct {
	Kind    Kind
	Tenant  tenant.ID // empty for operators
	Subject string    // the user, operator or agent id
	Role    Role      // users only
	Scopes  []string  // empty means every scope the role allows
	TokenID string    // the access token's jti, for audit
}

// HasScope reports whether the principal may use scope. A token without scopes is
// unrestricted within its role; a scoped token (from a personal API token) only has the
// scopes it names.
func (p Principal) HasScope(scope string) bool {
	return len(p.Scopes) == 0 || slices.Contains(p.Scopes, scope)
}

// FromContext returns the principal of ctx.
func FromContext(ctx context.Context) (Principal, bool) {
	p, ok := principalctx.From(ctx)
	if !ok {
		return Principal{}, false
	}
	return Principal{Kind: Kind(p.Kind), Tenant: tenant.ID(p.Tenant), Subject: p.Subject, Role: Role(p.Role),
		Scopes: p.Scopes, TokenID: p.TokenID}, true
}

// withPrincipal is the only way into a context outside the test helpers.
func withPrincipal(ctx context.Context, p Principal) context.Context {
	return principalctx.With(ctx, principalctx.Principal{Kind: string(p.Kind), Tenant: string(p.Tenant),
		Subject: p.Subject, Role: string(p.Role), Scopes: p.Scopes, TokenID: p.TokenID})
}

// AsSystem returns ctx acting as the control plane itself inside tenant id, for work that
// has no caller's token: checking a password at sign-in, consuming an enrollment token,
// a scheduler pass. actor names the component, for the audit log. Use it only where the
// tenant was established by other means (a sign-in form's slug, a token's embedded tenant,
// an agent's certificate), never from an unauthenticated request's say-so alone.
func AsSystem(ctx context.Context, id tenant.ID, actor string) context.Context {
	return withPrincipal(ctx, Principal{Kind: KindSystem, Tenant: id, Subject: actor})
}

// Require returns the principal of ctx, or an unauthenticated error.
func Require(ctx context.Context) (Principal, error) {
	p, ok := FromContext(ctx)
	if !ok {
		return Principal{}, apperr.New(apperr.Unauthenticated, "authentication required")
	}
	return p, nil
}

// RequireRole checks that the caller is a user of at least role min (system actors pass).
func RequireRole(ctx context.Context, min Role) (Principal, error) {
	p, err := Require(ctx)
	if err != nil {
		return p, err
	}
	if p.Kind == KindSystem || (p.Kind == KindUser && p.Role.AtLeast(min)) {
		return p, nil
	}
	return p, apperr.New(apperr.Forbidden, "this action needs the %s role", min)
}

// RequireScope checks that the caller's token allows scope.
func RequireScope(ctx context.Context, scope string) (Principal, error) {
	p, err := Require(ctx)
	if err != nil {
		return p, err
	}
	if !p.HasScope(scope) {
		return p, apperr.New(apperr.Forbidden, "this token lacks the %q scope", scope)
	}
	return p, nil
}

// RequireOperator checks that the caller is a platform operator.
func RequireOperator(ctx context.Context) (Principal, error) {
	p, err := Require(ctx)
	if err != nil {
		return p, err
	}
	if p.Kind != KindOperator {
		// Operator routes are invisible to tenants: the same answer as an unknown route.
		return p, apperr.New(apperr.NotFound, "not found")
	}
	return p, nil
}

// Scopes a personal API token may carry, shared by identity (which grants them) and every
// service (which checks them). A token without scopes — a sign-in — may do whatever its
// role allows; a scoped one only what its scopes name, and never more than its role.
const (
	ScopeIdentityRead  = "identity:read"
	ScopeIdentityWrite = "identity:write"
	ScopeAgentsRead    = "agents:read"
	ScopeAgentsWrite   = "agents:write"
	ScopeCatalogRead   = "catalog:read"
	ScopeCatalogWrite  = "catalog:write"
	ScopeSessionsRead  = "sessions:read"
	ScopeSessionsWrite = "sessions:write"
)

// Scopes lists every scope, in a stable order.
var Scopes = []string{ScopeIdentityRead, ScopeIdentityWrite, ScopeAgentsRead, ScopeAgentsWrite,
	ScopeCatalogRead, ScopeCatalogWrite, ScopeSessionsRead, ScopeSessionsWrite}
