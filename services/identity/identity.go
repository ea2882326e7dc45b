// Package identity is StreamSpace's identity service: tenant sign-up, users, sign-in,
// access JWTs and their JWKS, refresh tokens, personal API tokens, agent enrollment tokens
// and the platform operators who administer tenants.
//
// It follows go-kit's shape: this file holds the domain types and the Service and Store
// interfaces; service.go the logic; endpoints.go the go-kit endpoints; transport_http.go
// the routes and codecs; middleware.go the logging and metrics decorators; postgres/ the
// Store. Module (module.go) mounts it on a server, alone in its own binary or beside the
// other services in the all-in-one binary.
//
// # Tokens
//
// Access tokens are Ed25519-signed JWTs (alg EdDSA, kid header) valid for ten minutes,
// with the claims of auth.Claims. Every other credential is an opaque string that names
// its tenant, so a lookup knows which schema to read before anything is trusted:
//
//	ssr_<tenant id>_<base64url 32 random bytes>   refresh token
//	ssp_<tenant id>_<base64url 32 random bytes>   personal API token
//	sse_<tenant id>_<base64url 32 random bytes>   agent enrollment token
//
// Only SHA-256 digests of the secrets are stored: with 256 bits of entropy a slow hash
// buys nothing. Personal API tokens are never accepted as bearer tokens by the other
// services: a client exchanges one at POST /api/v1/auth/token (grant_type "api_token")
// for an ordinary access JWT whose scp claim carries the token's scopes. Verification so
// stays local and uniform in every service, and revoking a personal token takes effect
// within one access-token lifetime.
package identity

import (
	"context"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/tenants"
)

// Name is the service's name in logs, traces and metrics.
const Name = "identity"

// UserID identifies a user within its tenant (a UUID).
type UserID string

// UserStatus says whether a user may sign in.
type UserStatus string

// The user statuses.
const (
	UserActive   UserStatus = "active"
	UserDisabled UserStatus = "disabled"
)

// User is a tenant's user. The password hash never leaves the store.
type User struct {
	ID          UserID     `json:"id"`
	Email       string     `json:"email"`
	Role        auth.Role  `json:"role"`
	Status      UserStatus `json:"status"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	LastLoginAt *time.Time `json:"last_login_at,omitempty"`
}

// Tokens is what a successful sign-in or token grant returns. RefreshToken is empty for
// grants that do not issue one (personal API tokens, operators).
type Tokens struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int    `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
}

// Signup is a self-service sign-up: a new tenant and its owner.
type Signup struct {
	TenantName string `json:"tenant_name"`
	Slug       string `json:"slug"`
	Email      string `json:"email"`
	Password   string `json:"password"`
}

// SignupResult is the new tenant, its owner and the owner's first tokens.
type SignupResult struct {
	Tenant tenants.Tenant `json:"tenant"`
	Owner  User           `json:"owner"`
	Tokens Tokens         `json:"tokens"`
}

// Credentials sign a user in to the tenant named by its slug.
type Credentials struct {
	Tenant   string `json:"tenant"`
	Email    string `json:"email"`
	Password string `json:"password"`
}

// OperatorCredentials sign a platform operator in.
type OperatorCredentials struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// Grant types of the token endpoint.
const (
	GrantRefreshToken = "refresh_token"
	GrantAPIToken     = "api_token"
)

// TokenGrant asks the token endpoint for an access token: GrantType names which of
// RefreshToken or Token is set.
type TokenGrant struct {
	GrantType    string `json:"grant_type"`
	RefreshToken string `json:"refresh_token,omitempty"`
	Token        string `json:"token,omitempty"`
}

// NewUser is an admin's request to add a user.
type NewUser struct {
	Email    string    `json:"email"`
	Role     auth.Role `json:"role"`
	Password string    `json:"password"`
}

// UserPatch changes a user; nil fields stay as they are.
type UserPatch struct {
	Role   *auth.Role  `json:"role,omitempty"`
	Status *UserStatus `json:"status,omitempty"`
}

// TokenID identifies a personal API token or an enrollment token (a UUID).
type TokenID string

// APIToken describes a personal API token; the secret is shown only once, at creation.
type APIToken struct {
	ID         TokenID    `json:"id"`
	UserID     UserID     `json:"user_id"`
	Name       string     `json:"name"`
	Scopes     []string   `json:"scopes"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// NewAPIToken asks for a personal API token. ExpiresIn, in seconds, is optional: zero
// means the token lives until revoked.
type NewAPIToken struct {
	Name      string   `json:"name"`
	Scopes    []string `json:"scopes"`
	ExpiresIn int64    `json:"expires_in,omitempty"`
}

// CreatedAPIToken is a new personal API token with its secret, shown this once.
type CreatedAPIToken struct {
	APIToken
	Token string `json:"token"`
}

// EnrollmentToken describes an agent enrollment token.
type EnrollmentToken struct {
	ID        TokenID    `json:"id"`
	Name      string     `json:"name"`
	Tags      []string   `json:"tags"`
	CreatedBy UserID     `json:"created_by,omitempty"`
	CreatedAt time.Time  `json:"created_at"`
	ExpiresAt time.Time  `json:"expires_at"`
	UsedAt    *time.Time `json:"used_at,omitempty"`
	RevokedAt *time.Time `json:"revoked_at,omitempty"`
}

// NewEnrollmentToken asks for an enrollment token. ExpiresIn is in seconds; zero means
// DefaultEnrollmentTTL.
type NewEnrollmentToken struct {
	Name      string   `json:"name"`
	Tags      []string `json:"tags,omitempty"`
	ExpiresIn int64    `json:"expires_in,omitempty"`
}

// CreatedEnrollmentToken is a new enrollment token with its secret, shown this once.
type CreatedEnrollmentToken struct {
	EnrollmentToken
	Token string `json:"token"`
}

// Enrollment is what consuming an enrollment token yields: whom the agent belongs to and
// what to stamp on it.
type Enrollment struct {
	Tenant  tenant.ID `json:"tenant_id"`
	TokenID TokenID   `json:"token_id"`
	Name    string    `json:"name"`
	Tags    []string  `json:"tags"`
}

// Service is the identity service. Every method documents the apperr codes it returns;
// any other error is internal.
type Service interface {
	// Signup creates a tenant and its owner in one step and signs the owner in. Invalid:
	// bad name, slug, email or password. Conflict: the slug is taken. Nothing is left
	// behind on failure.
	Signup(ctx context.Context, s Signup) (SignupResult, error)
	// Login signs a user in. Unauthenticated: unknown tenant, unknown user, disabled user
	// or wrong password, indistinguishably. RateLimited: too many failures.
	Login(ctx context.Context, c Credentials) (Tokens, error)
	// Token exchanges a refresh token (rotating it) or a personal API token for an access
	// token. Unauthenticated: the token is unknown, expired, revoked, or was reused.
	Token(ctx context.Context, g TokenGrant) (Tokens, error)
	// Logout revokes a refresh token and its family. It never reveals whether the token
	// existed.
	Logout(ctx context.Context, refreshToken string) error
	// JWKS returns the published signing keys as a JWK Set document.
	JWKS(ctx context.Context) ([]byte, error)

	// Me returns the calling user.
	Me(ctx context.Context) (User, error)
	// ListUsers lists the tenant's users (admin). Forbidden: not an admin.
	ListUsers(ctx context.Context) ([]User, error)
	// GetUser returns one user (admin, or the user themself). NotFound otherwise.
	GetUser(ctx context.Context, id UserID) (User, error)
	// CreateUser adds a user (admin; owners only may add owners). Conflict: email taken.
	CreateUser(ctx context.Context, u NewUser) (User, error)
	// UpdateUser changes a user's role or status (admin). PreconditionFailed: it would
	// leave the tenant without an active owner.
	UpdateUser(ctx context.Context, id UserID, p UserPatch) (User, error)
	// DeleteUser deletes a user (admin). PreconditionFailed: the last active owner.
	DeleteUser(ctx context.Context, id UserID) error

	// CreateAPIToken creates a personal API token for the caller. Forbidden: the caller
	// itself uses a scoped token.
	CreateAPIToken(ctx context.Context, t NewAPIToken) (CreatedAPIToken, error)
	// ListAPITokens lists the caller's personal API tokens.
	ListAPITokens(ctx context.Context) ([]APIToken, error)
	// RevokeAPIToken revokes one of the caller's tokens. NotFound: not the caller's.
	RevokeAPIToken(ctx context.Context, id TokenID) error

	// CreateEnrollmentToken creates an agent enrollment token (admin).
	CreateEnrollmentToken(ctx context.Context, t NewEnrollmentToken) (CreatedEnrollmentToken, error)
	// ListEnrollmentTokens lists the tenant's enrollment tokens (admin).
	ListEnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error)
	// RevokeEnrollmentToken revokes an enrollment token (admin). NotFound: no such token.
	RevokeEnrollmentToken(ctx context.Context, id TokenID) error
	// ConsumeEnrollmentToken validates and consumes a raw enrollment token atomically.
	// Unauthenticated: unknown, expired, revoked or already used, indistinguishably.
	ConsumeEnrollmentToken(ctx context.Context, raw string) (Enrollment, error)

	// OperatorLogin signs a platform operator in (no refresh token: operators sign in
	// again). Unauthenticated, RateLimited as for Login.
	OperatorLogin(ctx context.Context, c OperatorCredentials) (Tokens, error)
	// ListTenants lists every tenant (operator). NotFound: not an operator.
	ListTenants(ctx context.Context) ([]tenants.Tenant, error)
	// SetTenantStatus suspends or resumes a tenant (operator).
	SetTenantStatus(ctx context.Context, id tenant.ID, status tenants.Status) error
	// DeleteTenant deletes a tenant and all its data (operator); confirm repeats its slug.
	DeleteTenant(ctx context.Context, id tenant.ID, confirm string) error
	// RotateSigningKey makes a new signing key active now (operator) and returns its kid.
	RotateSigningKey(ctx context.Context) (string, error)
}

// Tenants is the part of tenants.Manager the service uses.
type Tenants interface {
	Create(ctx context.Context, slug, name string) (tenants.Tenant, bool, error)
	Get(ctx context.Context, idOrSlug string) (tenants.Tenant, error)
	List(ctx context.Context) ([]tenants.Tenant, error)
	SetStatus(ctx context.Context, id tenant.ID, status tenants.Status) error
	Delete(ctx context.Context, idOrSlug, confirm string) error
}

// AuditEntry is one line of an audit log.
type AuditEntry struct {
	Actor    string
	Action   string
	Target   string
	Success  bool
	ClientIP string
	TraceID  string
	Details  map[string]any
}

// Operator is a platform operator.
type Operator struct {
	ID     string
	Email  string
	Status UserStatus
}

// SigningKey is a stored signing key. PrivateKey is sealed under the key-encryption key.
type SigningKey struct {
	KID         string
	PublicKey   []byte
	PrivateKey  []byte
	CreatedAt   time.Time
	ActivatesAt time.Time
	RetiredAt   *time.Time
}

// Store is identity's persistence. Methods marked tenant-scoped read the tenant from ctx
// (an authenticated principal or auth.AsSystem) and can run for no other; the rest touch
// only the platform schema.
type Store interface {
	// CreateUser adds a user (tenant-scoped). Conflict: the email is taken.
	CreateUser(ctx context.Context, email, passwordHash string, role auth.Role) (User, error)
	// UserByEmail returns a user and their password hash (tenant-scoped). NotFound.
	UserByEmail(ctx context.Context, email string) (User, string, error)
	// User returns a user (tenant-scoped). NotFound.
	User(ctx context.Context, id UserID) (User, error)
	// Users lists users by email (tenant-scoped).
	Users(ctx context.Context) ([]User, error)
	// UpdateUser applies p after check approves the current row, keeping at least one
	// active owner (tenant-scoped). NotFound, PreconditionFailed, or check's error.
	UpdateUser(ctx context.Context, id UserID, p UserPatch, check func(User) error) (User, error)
	// DeleteUser deletes a user after check approves, keeping at least one active owner
	// (tenant-scoped). NotFound, PreconditionFailed, or check's error.
	DeleteUser(ctx context.Context, id UserID, check func(User) error) error
	// RecordLogin stamps a successful sign-in (tenant-scoped).
	RecordLogin(ctx context.Context, id UserID) error
	// Audit appends to the tenant's audit log (tenant-scoped).
	Audit(ctx context.Context, e AuditEntry) error

	// CreateRefreshToken stores a refresh token; an empty family starts a new one
	// (tenant-scoped).
	CreateRefreshToken(ctx context.Context, user UserID, hash []byte, expires time.Time) error
	// RotateRefreshToken marks the token with hash old as used and stores its successor
	// with hash next, returning the token's user (tenant-scoped). A token already rotated
	// revokes its whole family, committed, then returns ErrTokenReused. Unauthenticated:
	// unknown, expired, revoked token or inactive user.
	RotateRefreshToken(ctx context.Context, old, next []byte, expires time.Time) (User, error)
	// RevokeRefreshFamily revokes the family of the token with hash (tenant-scoped); an
	// unknown token is not an error.
	RevokeRefreshFamily(ctx context.Context, hash []byte) error
	// RevokeUserRefreshTokens revokes every refresh token of a user (tenant-scoped).
	RevokeUserRefreshTokens(ctx context.Context, user UserID) error

	// CreateAPIToken stores a personal API token (tenant-scoped).
	CreateAPIToken(ctx context.Context, t APIToken, hash []byte) (APIToken, error)
	// APITokens lists a user's tokens (tenant-scoped).
	APITokens(ctx context.Context, user UserID) ([]APIToken, error)
	// RevokeAPIToken revokes a user's token (tenant-scoped). NotFound.
	RevokeAPIToken(ctx context.Context, user UserID, id TokenID) error
	// UseAPIToken finds a live token by hash, records its use and returns it with its
	// active user (tenant-scoped). Unauthenticated otherwise.
	UseAPIToken(ctx context.Context, hash []byte) (APIToken, User, error)

	// CreateEnrollmentToken stores an enrollment token (tenant-scoped).
	CreateEnrollmentToken(ctx context.Context, t EnrollmentToken, hash []byte) (EnrollmentToken, error)
	// EnrollmentTokens lists the tenant's enrollment tokens (tenant-scoped).
	EnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error)
	// RevokeEnrollmentToken revokes an unused token (tenant-scoped). NotFound.
	RevokeEnrollmentToken(ctx context.Context, id TokenID) error
	// ConsumeEnrollmentToken marks a live token used, atomically, and returns it
	// (tenant-scoped). Unauthenticated: unknown, expired, revoked or used.
	ConsumeEnrollmentToken(ctx context.Context, hash []byte) (EnrollmentToken, error)

	// Throttled returns the latest lock among keys, zero when none is locked.
	Throttled(ctx context.Context, keys ...string) (time.Time, error)
	// RecordFailure counts a failed attempt against key and, from the threshold-th
	// failure on, locks it for base doubled per extra failure, at most max.
	RecordFailure(ctx context.Context, key string, threshold int, base, max, window time.Duration) error
	// ResetFailures forgets key's failures.
	ResetFailures(ctx context.Context, key string) error

	// EnsureOperator creates an operator unless one with the email exists.
	EnsureOperator(ctx context.Context, email, passwordHash string) (created bool, err error)
	// OperatorByEmail returns an operator and their password hash. NotFound.
	OperatorByEmail(ctx context.Context, email string) (Operator, string, error)
	// PlatformAudit appends to the platform audit log.
	PlatformAudit(ctx context.Context, e AuditEntry) error

	// SigningKeys returns every key not yet pruned, newest activation first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// RotateSigningKey asks plan, under a lock shared by every replica, for a key to add
	// given the newest stored one (nil when none exists). If plan says so it inserts the
	// key and retires every earlier key as of the new key's activation, returning true.
	RotateSigningKey(ctx context.Context, plan func(newest *SigningKey) (SigningKey, bool)) (bool, error)
	// PruneSigningKeys deletes keys retired before cutoff.
	PruneSigningKeys(ctx context.Context, cutoff time.Time) error
}
