package identity

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/golang-jwt/jwt/v5"
	"go.opentelemetry.io/otel/trace"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/libs/tenantdb"
	"streamspace.dev/tenants"
)

// Defaults of the service's settings.
const (
	DefaultAccessTTL      = 10 * time.Minute
	DefaultRefreshTTL     = 30 * 24 * time.Hour
	DefaultEnrollmentTTL  = 24 * time.Hour
	MaxEnrollmentTTL      = 30 * 24 * time.Hour
	MaxAPITokenTTL        = 366 * 24 * time.Hour
	DefaultAccountLockout = 5
	DefaultAddressLockout = 50
	DefaultLockoutBase    = 30 * time.Second
	DefaultLockoutMax     = time.Hour
	DefaultFailureWindow  = 15 * time.Minute
	// DefaultSignupsPerHour bounds the tenants one client address may create in an hour:
	// every sign-up provisions a schema, the costliest thing an anonymous caller can ask.
	DefaultSignupsPerHour  = 20
	DefaultKeyRotation     = 7 * 24 * time.Hour
	DefaultKeyPublishDelay = 10 * time.Minute
)

// The scopes a personal API token may carry; the vocabulary lives in libs/auth because
// every service checks it.
const (
	ScopeIdentityRead  = auth.ScopeIdentityRead
	ScopeIdentityWrite = auth.ScopeIdentityWrite
)

// Scopes lists every scope a token may be granted.
var Scopes = auth.Scopes

// Throttle tunes sign-in throttling. Failures are counted per account (tenant and email)
// and per client address; past the threshold each failure locks the key for Base,
// doubling per further failure up to Max. Failures older than Window are forgotten unless
// the key is locked.
type Throttle struct {
	AccountThreshold int
	AddressThreshold int
	Base             time.Duration
	Max              time.Duration
	Window           time.Duration
	// SignupsPerHour is how many sign-ups one client address may attempt in an hour
	// before it is refused for the rest of it (doubling on each further attempt, up to a
	// day).
	SignupsPerHour int
}

// Options configure the service.
type Options struct {
	// Issuer and Audience are the iss and aud of access tokens.
	Issuer, Audience string
	// AccessTTL and RefreshTTL are token lifetimes.
	AccessTTL, RefreshTTL time.Duration
	// Throttle tunes sign-in throttling.
	Throttle Throttle
	// Logger logs what the audit log cannot hold (events of unknown tenants).
	Logger *slog.Logger
	// Forget, if set, drops a tenant's cached status after an operator changes it, so this
	// process refuses a suspended tenant at once rather than after the cache TTL.
	Forget func(tenant.ID)
}

type service struct {
	store   Store
	tenants Tenants
	keys    *Keys
	opts    Options
	now     func() time.Time
}

// NewService returns the service's logic over its store, the tenant manager and the keys.
func NewService(store Store, tm Tenants, keys *Keys, opts Options) Service {
	if opts.AccessTTL <= 0 {
		opts.AccessTTL = DefaultAccessTTL
	}
	if opts.RefreshTTL <= 0 {
		opts.RefreshTTL = DefaultRefreshTTL
	}
	if opts.Audience == "" {
		opts.Audience = auth.DefaultAudience
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	t := &opts.Throttle
	if t.AccountThreshold <= 0 {
		t.AccountThreshold = DefaultAccountLockout
	}
	if t.AddressThreshold <= 0 {
		t.AddressThreshold = DefaultAddressLockout
	}
	if t.Base <= 0 {
		t.Base = DefaultLockoutBase
	}
	if t.Max <= 0 {
		t.Max = DefaultLockoutMax
	}
	if t.Window <= 0 {
		t.Window = DefaultFailureWindow
	}
	if t.SignupsPerHour <= 0 {
		t.SignupsPerHour = DefaultSignupsPerHour
	}
	if opts.Forget == nil {
		opts.Forget = func(tenant.ID) {}
	}
	return &service{store: store, tenants: tm, keys: keys, opts: opts, now: time.Now}
}

// clientIPKey carries the caller's address from the transport to the audit log and the
// throttle.
type clientIPKey struct{}

// WithClientIP returns ctx carrying the caller's network address.
func WithClientIP(ctx context.Context, ip string) context.Context {
	return context.WithValue(ctx, clientIPKey{}, ip)
}

func clientIP(ctx context.Context) string {
	ip, _ := ctx.Value(clientIPKey{}).(string)
	return ip
}

// errInvalidCredentials is the one answer to every failed sign-in, whatever failed.
var errInvalidCredentials = apperr.New(apperr.Unauthenticated, "invalid credentials")

func (s *service) audit(ctx context.Context, actor, action, target string, ok bool, details map[string]any) {
	e := AuditEntry{Actor: actor, Action: action, Target: target, Success: ok, ClientIP: clientIP(ctx), Details: details}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		e.TraceID = sc.TraceID().String()
	}
	// The audit write must not fail the request it records, nor be cancelled with it.
	if err := s.store.Audit(context.WithoutCancel(ctx), e); err != nil {
		s.opts.Logger.ErrorContext(ctx, "writing audit log", "action", action, "err", err)
	}
}

func (s *service) platformAudit(ctx context.Context, actor, action, target string, ok bool, details map[string]any) {
	e := AuditEntry{Actor: actor, Action: action, Target: target, Success: ok, ClientIP: clientIP(ctx), Details: details}
	if sc := trace.SpanContextFromContext(ctx); sc.HasTraceID() {
		e.TraceID = sc.TraceID().String()
	}
	if err := s.store.PlatformAudit(context.WithoutCancel(ctx), e); err != nil {
		s.opts.Logger.ErrorContext(ctx, "writing platform audit log", "action", action, "err", err)
	}
}

// sign mints an access token.
func (s *service) sign(ctx context.Context, kind auth.Kind, tid tenant.ID, subject string, role auth.Role, scopes []string) (Tokens, error) {
	kid, priv, err := s.keys.Signer(ctx)
	if err != nil {
		return Tokens{}, err
	}
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return Tokens{}, err
	}
	now := s.now()
	c := auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    s.opts.Issuer,
			Subject:   subject,
			Audience:  jwt.ClaimStrings{s.opts.Audience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(s.opts.AccessTTL)),
			ID:        base64.RawURLEncoding.EncodeToString(jti),
		},
		Tenant: string(tid),
		Role:   role,
		Scopes: scopes,
		Kind:   kind,
	}
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
	t.Header["kid"] = kid
	raw, err := t.SignedString(priv)
	if err != nil {
		return Tokens{}, fmt.Errorf("signing access token: %w", err)
	}
	return Tokens{AccessToken: raw, TokenType: "Bearer", ExpiresIn: int(s.opts.AccessTTL / time.Second)}, nil
}

// issue signs a user in: an access token and a new refresh-token family. ctx is scoped to
// the user's tenant.
func (s *service) issue(ctx context.Context, tid tenant.ID, u User) (Tokens, error) {
	t, err := s.sign(ctx, auth.KindUser, tid, string(u.ID), u.Role, nil)
	if err != nil {
		return Tokens{}, err
	}
	raw, hash, err := newOpaque(prefixRefresh, tid)
	if err != nil {
		return Tokens{}, err
	}
	if err := s.store.CreateRefreshToken(ctx, u.ID, hash, s.now().Add(s.opts.RefreshTTL)); err != nil {
		return Tokens{}, fmt.Errorf("storing refresh token: %w", err)
	}
	t.RefreshToken = raw
	return t, nil
}

// Signup implements Service.
func (s *service) Signup(ctx context.Context, req Signup) (SignupResult, error) {
	email, err := ParseEmail(req.Email)
	if err != nil {
		return SignupResult{}, err
	}
	if _, err := tenant.ParseSlug(req.Slug); err != nil {
		return SignupResult{}, err
	}
	if err := CheckPassword(req.Password, email); err != nil {
		return SignupResult{}, err
	}
	if err := s.chargeSignup(ctx); err != nil {
		return SignupResult{}, err
	}
	// Hash before the tenant exists: the slow step should not widen the window in which
	// a half-made tenant is visible.
	hash, err := HashPassword(req.Password)
	if err != nil {
		return SignupResult{}, err
	}
	t, created, err := s.tenants.Create(ctx, req.Slug, req.TenantName)
	if err != nil {
		return SignupResult{}, err
	}
	if !created {
		return SignupResult{}, &apperr.Error{Code: apperr.Conflict, Message: "this slug is taken",
			Fields: []apperr.FieldError{apperr.Field("slug", "is taken")}}
	}
	res, err := s.finishSignup(auth.AsSystem(ctx, t.ID, "identity.signup"), t, email, hash)
	if err != nil {
		// All or nothing: a tenant without an owner is unreachable, so remove it. A
		// detached context, because the caller's may be what just failed.
		if derr := s.tenants.Delete(context.WithoutCancel(ctx), string(t.ID), string(t.Slug)); derr != nil {
			s.opts.Logger.ErrorContext(ctx, "removing half-made tenant after failed sign-up", "tenant", t.ID, "err", derr)
		}
		return SignupResult{}, err
	}
	return res, nil
}

func (s *service) finishSignup(ctx context.Context, t tenants.Tenant, email, hash string) (SignupResult, error) {
	owner, err := s.store.CreateUser(ctx, email, hash, auth.RoleOwner)
	if err != nil {
		return SignupResult{}, fmt.Errorf("creating owner: %w", err)
	}
	tokens, err := s.issue(ctx, t.ID, owner)
	if err != nil {
		return SignupResult{}, err
	}
	s.audit(ctx, string(owner.ID), "tenant.signup", string(t.ID), true, map[string]any{"slug": t.Slug, "email": email})
	return SignupResult{Tenant: t, Owner: owner, Tokens: tokens}, nil
}

// chargeSignup counts a well-formed sign-up against its client address, refusing it while
// the address is over its hourly allowance. It is charged before the tenant exists, so
// a flood of attempts on taken slugs costs its sender as much as successes would.
func (s *service) chargeSignup(ctx context.Context) error {
	key := "signup:" + clientIP(ctx)
	until, err := s.store.Throttled(ctx, key)
	if err != nil {
		return fmt.Errorf("checking sign-up throttle: %w", err)
	}
	if !until.IsZero() {
		return &apperr.Error{Code: apperr.RateLimited, Message: "too many sign-ups from this address; try again later",
			RetryAfter: max(until.Sub(s.now()), time.Second)}
	}
	if err := s.store.RecordFailure(ctx, key, s.opts.Throttle.SignupsPerHour, time.Hour, 24*time.Hour, time.Hour); err != nil {
		return fmt.Errorf("recording sign-up: %w", err)
	}
	return nil
}

// throttleKeys names the counters a sign-in attempt is charged to.
func throttleKeys(account, ip string) (string, string) {
	return "account:" + account, "ip:" + ip
}

// checkThrottle refuses an attempt while any of its keys is locked.
func (s *service) checkThrottle(ctx context.Context, keys ...string) error {
	until, err := s.store.Throttled(ctx, keys...)
	if err != nil {
		return fmt.Errorf("checking sign-in throttle: %w", err)
	}
	if until.IsZero() {
		return nil
	}
	return &apperr.Error{Code: apperr.RateLimited, Message: "too many failed sign-ins; try again later",
		RetryAfter: max(until.Sub(s.now()), time.Second)}
}

func (s *service) recordFailure(ctx context.Context, account, address string) {
	t := s.opts.Throttle
	ctx = context.WithoutCancel(ctx)
	if err := s.store.RecordFailure(ctx, account, t.AccountThreshold, t.Base, t.Max, t.Window); err != nil {
		s.opts.Logger.ErrorContext(ctx, "recording sign-in failure", "err", err)
	}
	if err := s.store.RecordFailure(ctx, address, t.AddressThreshold, t.Base, t.Max, t.Window); err != nil {
		s.opts.Logger.ErrorContext(ctx, "recording sign-in failure", "err", err)
	}
}

// Login implements Service. Every failure costs one password hash and answers the same,
// whether the tenant, the user or the password was wrong.
func (s *service) Login(ctx context.Context, c Credentials) (Tokens, error) {
	if len(c.Password) > MaxPasswordLen || len(c.Email) > 254 || len(c.Tenant) > 40 {
		return Tokens{}, apperr.New(apperr.Invalid, "credentials exceed their length limits")
	}
	email := strings.ToLower(strings.TrimSpace(c.Email))
	slug := strings.ToLower(strings.TrimSpace(c.Tenant))
	account, address := throttleKeys(slug+":"+email, clientIP(ctx))
	if err := s.checkThrottle(ctx, account, address); err != nil {
		return Tokens{}, err
	}
	fail := func(ctx context.Context, tid tenant.ID, reason string) (Tokens, error) {
		s.recordFailure(ctx, account, address)
		if tid != "" {
			s.audit(ctx, email, "auth.login", email, false, map[string]any{"reason": reason})
		} else {
			s.opts.Logger.InfoContext(ctx, "sign-in to unknown tenant", "client_ip", clientIP(ctx))
		}
		return Tokens{}, errInvalidCredentials
	}
	var tid tenant.ID
	if _, err := tenant.ParseSlug(slug); err == nil {
		if t, err := s.tenants.Get(ctx, slug); err == nil && t.Status == tenants.Active {
			tid = t.ID
		} else if err != nil && !apperr.IsCode(err, apperr.NotFound) {
			return Tokens{}, err
		}
	}
	if tid == "" {
		burnPassword(c.Password)
		return fail(ctx, "", "unknown tenant")
	}
	ctx = auth.AsSystem(ctx, tid, "identity.login")
	u, hash, err := s.store.UserByEmail(ctx, email)
	switch {
	case apperr.IsCode(err, apperr.NotFound):
		burnPassword(c.Password)
		return fail(ctx, tid, "unknown user")
	case err != nil:
		return Tokens{}, err
	}
	if !VerifyPassword(hash, c.Password) {
		return fail(ctx, tid, "wrong password")
	}
	if u.Status != UserActive {
		return fail(ctx, tid, "user disabled")
	}
	if err := s.store.ResetFailures(ctx, account); err != nil {
		s.opts.Logger.ErrorContext(ctx, "resetting sign-in failures", "err", err)
	}
	if err := s.store.RecordLogin(ctx, u.ID); err != nil {
		return Tokens{}, err
	}
	t, err := s.issue(ctx, tid, u)
	if err != nil {
		return Tokens{}, err
	}
	s.audit(ctx, string(u.ID), "auth.login", string(u.ID), true, nil)
	return t, nil
}

// Token implements Service.
func (s *service) Token(ctx context.Context, g TokenGrant) (Tokens, error) {
	switch g.GrantType {
	case GrantRefreshToken:
		return s.refresh(ctx, g.RefreshToken)
	case GrantAPIToken:
		return s.exchange(ctx, g.Token)
	}
	return Tokens{}, apperr.Validation("unsupported grant type",
		apperr.Field("grant_type", "must be refresh_token or api_token"))
}

func (s *service) refresh(ctx context.Context, raw string) (Tokens, error) {
	tid, old, err := parseOpaque(prefixRefresh, "refresh token", raw)
	if err != nil {
		return Tokens{}, err
	}
	ctx = auth.AsSystem(ctx, tid, "identity.refresh")
	next, hash, err := newOpaque(prefixRefresh, tid)
	if err != nil {
		return Tokens{}, err
	}
	u, err := s.store.RotateRefreshToken(ctx, old, hash, s.now().Add(s.opts.RefreshTTL))
	switch {
	case errors.Is(err, ErrTokenReused):
		s.audit(ctx, "unknown", "auth.refresh", "", false, map[string]any{"reason": "reuse; family revoked"})
		return Tokens{}, err
	case errors.Is(err, tenantdb.ErrUnknownTenant):
		return Tokens{}, errBadToken("refresh token")
	case err != nil:
		if apperr.IsCode(err, apperr.Unauthenticated) {
			s.audit(ctx, "unknown", "auth.refresh", "", false, nil)
		}
		return Tokens{}, err
	}
	t, err := s.sign(ctx, auth.KindUser, tid, string(u.ID), u.Role, nil)
	if err != nil {
		return Tokens{}, err
	}
	t.RefreshToken = next
	s.audit(ctx, string(u.ID), "auth.refresh", string(u.ID), true, nil)
	return t, nil
}

func (s *service) exchange(ctx context.Context, raw string) (Tokens, error) {
	tid, hash, err := parseOpaque(prefixAPI, "API token", raw)
	if err != nil {
		return Tokens{}, err
	}
	ctx = auth.AsSystem(ctx, tid, "identity.token")
	tok, u, err := s.store.UseAPIToken(ctx, hash)
	switch {
	case errors.Is(err, tenantdb.ErrUnknownTenant):
		return Tokens{}, errBadToken("API token")
	case err != nil:
		if apperr.IsCode(err, apperr.Unauthenticated) {
			s.audit(ctx, "unknown", "auth.api_token", "", false, nil)
		}
		return Tokens{}, err
	}
	t, err := s.sign(ctx, auth.KindUser, tid, string(u.ID), u.Role, tok.Scopes)
	if err != nil {
		return Tokens{}, err
	}
	s.audit(ctx, string(u.ID), "auth.api_token", string(tok.ID), true, nil)
	return t, nil
}

// Logout implements Service.
func (s *service) Logout(ctx context.Context, raw string) error {
	tid, hash, err := parseOpaque(prefixRefresh, "refresh token", raw)
	if err != nil {
		return nil // nothing to revoke, and nothing to reveal
	}
	ctx = auth.AsSystem(ctx, tid, "identity.logout")
	if err := s.store.RevokeRefreshFamily(ctx, hash); err != nil {
		if apperr.CodeOf(err) != apperr.Internal {
			return nil
		}
		return err
	}
	s.audit(ctx, "unknown", "auth.logout", "", true, nil)
	return nil
}

// JWKS implements Service.
func (s *service) JWKS(ctx context.Context) ([]byte, error) { return s.keys.JWKS(ctx) }

// requireUser returns the calling user's principal, refusing operators and agents: the user
// routes belong to tenants.
func requireUser(ctx context.Context, scope string) (auth.Principal, error) {
	p, err := auth.Require(ctx)
	if err != nil {
		return p, err
	}
	if p.Kind != auth.KindUser {
		return p, apperr.New(apperr.NotFound, "not found")
	}
	if scope != "" && !p.HasScope(scope) {
		return p, apperr.New(apperr.Forbidden, "this token lacks the %q scope", scope)
	}
	return p, nil
}

func requireAdmin(ctx context.Context, scope string) (auth.Principal, error) {
	p, err := requireUser(ctx, scope)
	if err != nil {
		return p, err
	}
	return auth.RequireRole(ctx, auth.RoleAdmin)
}

// Me implements Service.
func (s *service) Me(ctx context.Context) (User, error) {
	p, err := requireUser(ctx, ScopeIdentityRead)
	if err != nil {
		return User{}, err
	}
	return s.store.User(ctx, UserID(p.Subject))
}

// ListUsers implements Service.
func (s *service) ListUsers(ctx context.Context) ([]User, error) {
	if _, err := requireAdmin(ctx, ScopeIdentityRead); err != nil {
		return nil, err
	}
	return s.store.Users(ctx)
}

// GetUser implements Service.
func (s *service) GetUser(ctx context.Context, id UserID) (User, error) {
	p, err := requireUser(ctx, ScopeIdentityRead)
	if err != nil {
		return User{}, err
	}
	if p.Subject != string(id) {
		if _, err := auth.RequireRole(ctx, auth.RoleAdmin); err != nil {
			return User{}, err
		}
	}
	return s.store.User(ctx, id)
}

func validRole(r auth.Role) error {
	if !r.Valid() {
		return apperr.Validation("invalid role", apperr.Field("role", "must be owner, admin or member"))
	}
	return nil
}

// CreateUser implements Service.
func (s *service) CreateUser(ctx context.Context, req NewUser) (User, error) {
	p, err := requireAdmin(ctx, ScopeIdentityWrite)
	if err != nil {
		return User{}, err
	}
	email, err := ParseEmail(req.Email)
	if err != nil {
		return User{}, err
	}
	if err := validRole(req.Role); err != nil {
		return User{}, err
	}
	if req.Role == auth.RoleOwner && p.Role != auth.RoleOwner {
		return User{}, apperr.New(apperr.Forbidden, "only an owner may add owners")
	}
	if err := CheckPassword(req.Password, email); err != nil {
		return User{}, err
	}
	hash, err := HashPassword(req.Password)
	if err != nil {
		return User{}, err
	}
	u, err := s.store.CreateUser(ctx, email, hash, req.Role)
	if err != nil {
		return User{}, err
	}
	s.audit(ctx, p.Subject, "user.create", string(u.ID), true, map[string]any{"role": u.Role})
	return u, nil
}

// guardOwner refuses an admin who is not an owner touching an owner.
func guardOwner(p auth.Principal) func(User) error {
	return func(cur User) error {
		if cur.Role == auth.RoleOwner && p.Role != auth.RoleOwner {
			return apperr.New(apperr.Forbidden, "only an owner may change an owner")
		}
		return nil
	}
}

// UpdateUser implements Service.
func (s *service) UpdateUser(ctx context.Context, id UserID, patch UserPatch) (User, error) {
	p, err := requireAdmin(ctx, ScopeIdentityWrite)
	if err != nil {
		return User{}, err
	}
	if patch.Role != nil {
		if err := validRole(*patch.Role); err != nil {
			return User{}, err
		}
		if *patch.Role == auth.RoleOwner && p.Role != auth.RoleOwner {
			return User{}, apperr.New(apperr.Forbidden, "only an owner may make owners")
		}
	}
	if patch.Status != nil && *patch.Status != UserActive && *patch.Status != UserDisabled {
		return User{}, apperr.Validation("invalid status", apperr.Field("status", "must be active or disabled"))
	}
	u, err := s.store.UpdateUser(ctx, id, patch, guardOwner(p))
	if err != nil {
		return User{}, err
	}
	if u.Status == UserDisabled {
		// A disabled user's sessions end at the next refresh, not at the next sign-in.
		if err := s.store.RevokeUserRefreshTokens(ctx, u.ID); err != nil {
			return User{}, err
		}
	}
	s.audit(ctx, p.Subject, "user.update", string(u.ID), true, map[string]any{"role": u.Role, "status": u.Status})
	return u, nil
}

// DeleteUser implements Service.
func (s *service) DeleteUser(ctx context.Context, id UserID) error {
	p, err := requireAdmin(ctx, ScopeIdentityWrite)
	if err != nil {
		return err
	}
	if err := s.store.DeleteUser(ctx, id, guardOwner(p)); err != nil {
		return err
	}
	s.audit(ctx, p.Subject, "user.delete", string(id), true, nil)
	return nil
}

var (
	tagPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]{0,62})(=[A-Za-z0-9._-]{0,63})?$`)
)

func validName(name string) error {
	if strings.TrimSpace(name) == "" || len(name) > 100 || strings.ContainsFunc(name, unicode.IsControl) {
		return apperr.Validation("invalid name", apperr.Field("name", "must be 1 to 100 characters without control characters"))
	}
	return nil
}

// CreateAPIToken implements Service.
func (s *service) CreateAPIToken(ctx context.Context, req NewAPIToken) (CreatedAPIToken, error) {
	p, err := requireUser(ctx, "")
	if err != nil {
		return CreatedAPIToken{}, err
	}
	if len(p.Scopes) > 0 {
		// A token minting tokens would let a narrow scope escape its limits.
		return CreatedAPIToken{}, apperr.New(apperr.Forbidden, "personal API tokens are created by a signed-in user, not by another token")
	}
	if err := validName(req.Name); err != nil {
		return CreatedAPIToken{}, err
	}
	if len(req.Scopes) == 0 || len(req.Scopes) > len(Scopes) {
		return CreatedAPIToken{}, apperr.Validation("invalid scopes", apperr.Field("scopes", "must name at least one scope: "+strings.Join(Scopes, ", ")))
	}
	scopes := slices.Clone(req.Scopes)
	slices.Sort(scopes)
	scopes = slices.Compact(scopes)
	for i, sc := range scopes {
		if !slices.Contains(Scopes, sc) {
			return CreatedAPIToken{}, apperr.Validation("invalid scopes", apperr.Field(fmt.Sprintf("scopes/%d", i), "unknown scope; known: "+strings.Join(Scopes, ", ")))
		}
	}
	t := APIToken{UserID: UserID(p.Subject), Name: req.Name, Scopes: scopes}
	if req.ExpiresIn != 0 {
		d := time.Duration(req.ExpiresIn) * time.Second
		if req.ExpiresIn < 60 || d > MaxAPITokenTTL {
			return CreatedAPIToken{}, apperr.Validation("invalid expiry", apperr.Field("expires_in", "must be 60 seconds to 366 days, or omitted"))
		}
		at := s.now().Add(d)
		t.ExpiresAt = &at
	}
	raw, hash, err := newOpaque(prefixAPI, p.Tenant)
	if err != nil {
		return CreatedAPIToken{}, err
	}
	t, err = s.store.CreateAPIToken(ctx, t, hash)
	if err != nil {
		return CreatedAPIToken{}, err
	}
	s.audit(ctx, p.Subject, "api_token.create", string(t.ID), true, map[string]any{"name": t.Name, "scopes": t.Scopes})
	return CreatedAPIToken{APIToken: t, Token: raw}, nil
}

// ListAPITokens implements Service.
func (s *service) ListAPITokens(ctx context.Context) ([]APIToken, error) {
	p, err := requireUser(ctx, ScopeIdentityRead)
	if err != nil {
		return nil, err
	}
	return s.store.APITokens(ctx, UserID(p.Subject))
}

// RevokeAPIToken implements Service.
func (s *service) RevokeAPIToken(ctx context.Context, id TokenID) error {
	p, err := requireUser(ctx, ScopeIdentityWrite)
	if err != nil {
		return err
	}
	if err := s.store.RevokeAPIToken(ctx, UserID(p.Subject), id); err != nil {
		return err
	}
	s.audit(ctx, p.Subject, "api_token.revoke", string(id), true, nil)
	return nil
}

// CreateEnrollmentToken implements Service.
func (s *service) CreateEnrollmentToken(ctx context.Context, req NewEnrollmentToken) (CreatedEnrollmentToken, error) {
	p, err := requireAdmin(ctx, auth.ScopeAgentsWrite)
	if err != nil {
		return CreatedEnrollmentToken{}, err
	}
	if err := validName(req.Name); err != nil {
		return CreatedEnrollmentToken{}, err
	}
	if len(req.Tags) > 32 {
		return CreatedEnrollmentToken{}, apperr.Validation("too many tags", apperr.Field("tags", "at most 32"))
	}
	for i, tag := range req.Tags {
		if !tagPattern.MatchString(tag) {
			return CreatedEnrollmentToken{}, apperr.Validation("invalid tag", apperr.Field(fmt.Sprintf("tags/%d", i),
				"must be a lowercase name, optionally =value, such as gpu or region=eu-west"))
		}
	}
	ttl := DefaultEnrollmentTTL
	if req.ExpiresIn != 0 {
		ttl = time.Duration(req.ExpiresIn) * time.Second
		if req.ExpiresIn < 60 || ttl > MaxEnrollmentTTL {
			return CreatedEnrollmentToken{}, apperr.Validation("invalid expiry", apperr.Field("expires_in", "must be 60 seconds to 30 days"))
		}
	}
	tags := req.Tags
	if tags == nil {
		tags = []string{}
	}
	raw, hash, err := newOpaque(prefixEnrollment, p.Tenant)
	if err != nil {
		return CreatedEnrollmentToken{}, err
	}
	t, err := s.store.CreateEnrollmentToken(ctx, EnrollmentToken{Name: req.Name, Tags: tags, CreatedBy: UserID(p.Subject),
		ExpiresAt: s.now().Add(ttl)}, hash)
	if err != nil {
		return CreatedEnrollmentToken{}, err
	}
	s.audit(ctx, p.Subject, "enrollment_token.create", string(t.ID), true, map[string]any{"name": t.Name, "tags": t.Tags})
	return CreatedEnrollmentToken{EnrollmentToken: t, Token: raw}, nil
}

// ListEnrollmentTokens implements Service.
func (s *service) ListEnrollmentTokens(ctx context.Context) ([]EnrollmentToken, error) {
	if _, err := requireAdmin(ctx, auth.ScopeAgentsRead); err != nil {
		return nil, err
	}
	return s.store.EnrollmentTokens(ctx)
}

// RevokeEnrollmentToken implements Service.
func (s *service) RevokeEnrollmentToken(ctx context.Context, id TokenID) error {
	p, err := requireAdmin(ctx, auth.ScopeAgentsWrite)
	if err != nil {
		return err
	}
	if err := s.store.RevokeEnrollmentToken(ctx, id); err != nil {
		return err
	}
	s.audit(ctx, p.Subject, "enrollment_token.revoke", string(id), true, nil)
	return nil
}

// ConsumeEnrollmentToken implements Service.
func (s *service) ConsumeEnrollmentToken(ctx context.Context, raw string) (Enrollment, error) {
	tid, hash, err := parseOpaque(prefixEnrollment, "enrollment token", raw)
	if err != nil {
		return Enrollment{}, err
	}
	ctx = auth.AsSystem(ctx, tid, "identity.enroll")
	t, err := s.store.ConsumeEnrollmentToken(ctx, hash)
	switch {
	case errors.Is(err, tenantdb.ErrUnknownTenant):
		return Enrollment{}, errBadToken("enrollment token")
	case err != nil:
		if apperr.IsCode(err, apperr.Unauthenticated) {
			s.audit(ctx, "agent", "agent.enroll", "", false, nil)
		}
		return Enrollment{}, err
	}
	s.audit(ctx, "agent", "agent.enroll", string(t.ID), true, map[string]any{"name": t.Name, "tags": t.Tags})
	return Enrollment{Tenant: tid, TokenID: t.ID, Name: t.Name, Tags: t.Tags}, nil
}

// OperatorLogin implements Service.
func (s *service) OperatorLogin(ctx context.Context, c OperatorCredentials) (Tokens, error) {
	if len(c.Password) > MaxPasswordLen || len(c.Email) > 254 {
		return Tokens{}, apperr.New(apperr.Invalid, "credentials exceed their length limits")
	}
	email := strings.ToLower(strings.TrimSpace(c.Email))
	account, address := throttleKeys("operator:"+email, clientIP(ctx))
	if err := s.checkThrottle(ctx, account, address); err != nil {
		return Tokens{}, err
	}
	o, hash, err := s.store.OperatorByEmail(ctx, email)
	switch {
	case apperr.IsCode(err, apperr.NotFound):
		burnPassword(c.Password)
	case err != nil:
		return Tokens{}, err
	}
	if err != nil || !VerifyPassword(hash, c.Password) || o.Status != UserActive {
		s.recordFailure(ctx, account, address)
		s.platformAudit(ctx, email, "operator.login", email, false, nil)
		return Tokens{}, errInvalidCredentials
	}
	if err := s.store.ResetFailures(ctx, account); err != nil {
		s.opts.Logger.ErrorContext(ctx, "resetting sign-in failures", "err", err)
	}
	s.platformAudit(ctx, o.ID, "operator.login", o.ID, true, nil)
	return s.sign(ctx, auth.KindOperator, "", o.ID, "", nil)
}

// ListTenants implements Service.
func (s *service) ListTenants(ctx context.Context) ([]tenants.Tenant, error) {
	if _, err := auth.RequireOperator(ctx); err != nil {
		return nil, err
	}
	ts, err := s.tenants.List(ctx)
	if ts == nil {
		ts = []tenants.Tenant{}
	}
	return ts, err
}

// SetTenantStatus implements Service. Suspension needs no token bookkeeping: tenantdb
// refuses a suspended tenant's every transaction, so refreshes fail at once and access
// tokens stop working within their ten minutes.
func (s *service) SetTenantStatus(ctx context.Context, id tenant.ID, status tenants.Status) error {
	p, err := auth.RequireOperator(ctx)
	if err != nil {
		return err
	}
	if err := s.tenants.SetStatus(ctx, id, status); err != nil {
		return err
	}
	s.opts.Forget(id)
	s.platformAudit(ctx, p.Subject, "tenant."+string(status), string(id), true, nil)
	return nil
}

// DeleteTenant implements Service.
func (s *service) DeleteTenant(ctx context.Context, id tenant.ID, confirm string) error {
	p, err := auth.RequireOperator(ctx)
	if err != nil {
		return err
	}
	if err := s.tenants.Delete(ctx, string(id), confirm); err != nil {
		return err
	}
	s.opts.Forget(id)
	s.platformAudit(ctx, p.Subject, "tenant.delete", string(id), true, nil)
	return nil
}

// RotateSigningKey implements Service.
func (s *service) RotateSigningKey(ctx context.Context) (string, error) {
	p, err := auth.RequireOperator(ctx)
	if err != nil {
		return "", err
	}
	kid, err := s.keys.Rotate(ctx)
	if err != nil {
		return "", err
	}
	s.platformAudit(ctx, p.Subject, "signing_key.rotate", kid, true, nil)
	return kid, nil
}
