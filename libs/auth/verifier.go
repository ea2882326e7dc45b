package auth

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
)

// MaxTokenBytes bounds the length of a token Verify will look at. StreamSpace's access
// tokens are well under 1 KiB; anything near the limit is an attack on the parser.
const MaxTokenBytes = 8 << 10

// DefaultLeeway is the clock skew a Verifier tolerates unless told otherwise.
const DefaultLeeway = 30 * time.Second

// VerifierConfig configures a Verifier.
type VerifierConfig struct {
	// Keys finds the public key a token's kid names. Required.
	Keys KeySource
	// Issuer is the required iss: identity's public base URL. Required.
	Issuer string
	// Audience is the required aud (default DefaultAudience).
	Audience string
	// Leeway is the tolerated clock skew for exp, nbf and iat (default DefaultLeeway,
	// capped at MaxLeeway seconds).
	Leeway time.Duration
	// Now is the clock, for tests (default time.Now).
	Now func() time.Time
}

// Verifier checks access JWTs locally. It is safe for concurrent use.
//
// It remembers the tokens it accepted (up to maxVerified of them), because a client sends
// the same token with every request until it expires, and checking the signature again
// is most of the cost of authenticating a request. A remembered token is accepted again
// only while it has not expired (with the leeway) and while the key source still returns
// the very key that verified it, so a key withdrawn from identity's JWKS stops its tokens
// as promptly as without the memory. Tokens that failed are not remembered.
type Verifier struct {
	keys   KeySource
	parser *jwt.Parser
	now    func() time.Time
	leeway time.Duration

	mu       sync.Mutex
	verified map[string]verified
}

// verified is what Verify remembers of a token it accepted.
type verified struct {
	p   Principal
	kid string
	key ed25519.PublicKey
	exp time.Time
}

// maxVerified bounds the tokens a Verifier remembers: about 1 KiB each in practice, at
// most MaxTokenBytes.
const maxVerified = 4096

// NewVerifier returns a Verifier. It fails if Keys or Issuer is missing or Leeway is
// negative.
func NewVerifier(cfg VerifierConfig) (*Verifier, error) {
	switch {
	case cfg.Keys == nil:
		return nil, errors.New("auth: verifier needs a key source")
	case cfg.Issuer == "":
		return nil, errors.New("auth: verifier needs an issuer")
	case cfg.Leeway < 0:
		return nil, fmt.Errorf("auth: verifier leeway %v is negative", cfg.Leeway)
	}
	if cfg.Audience == "" {
		cfg.Audience = DefaultAudience
	}
	if cfg.Leeway == 0 {
		cfg.Leeway = DefaultLeeway
	}
	cfg.Leeway = min(cfg.Leeway, MaxLeeway*time.Second)
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Verifier{
		keys: cfg.Keys, now: cfg.Now, leeway: cfg.Leeway, verified: map[string]verified{},
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{Algorithm}),
			jwt.WithIssuer(cfg.Issuer),
			jwt.WithAudience(cfg.Audience),
			jwt.WithLeeway(cfg.Leeway),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithTimeFunc(cfg.Now),
			// One token, one spelling: no padding, no stray bits in the last character.
			jwt.WithStrictDecoding(),
		),
	}, nil
}

// Errors that Verify keeps as causes, for logs and tests; callers see only the apperr.
var (
	errTooLarge   = errors.New("token exceeds the size limit")
	errNoKid      = errors.New(`token header has no "kid"`)
	errCrit       = errors.New(`token header has "crit" extensions`)
	errBadClaims  = errors.New("token claims do not describe a StreamSpace principal")
	errMissingTok = errors.New("no token")
)

// Verify checks raw — signature (EdDSA only, key by kid), iss, aud, exp, nbf and iat (with
// the leeway) — and returns the principal it names. Users must name a valid tenant and
// role, operators no tenant; other kinds are never accepted from a token.
//
// Errors: unauthenticated for any token that fails, with a message that never repeats the
// token (the cause says more, for logs); unavailable when the key source cannot provide
// keys at all, so that clients retry rather than discard a token that may be good.
func (v *Verifier) Verify(ctx context.Context, raw string) (Principal, error) {
	if raw == "" {
		return Principal{}, apperr.Wrap(errMissingTok, apperr.Unauthenticated, "authentication required")
	}
	if len(raw) > MaxTokenBytes {
		return Principal{}, apperr.Wrap(errTooLarge, apperr.Unauthenticated, "invalid token")
	}
	if p, ok := v.remembered(ctx, raw); ok {
		return p, nil
	}
	var keyErr error
	var c Claims
	var used verified
	_, err := v.parser.ParseWithClaims(raw, &c, func(t *jwt.Token) (any, error) {
		if _, ok := t.Header["crit"]; ok {
			// RFC 7515 §4.1.11: extensions we do not understand make the token invalid.
			return nil, errCrit
		}
		kid, _ := t.Header["kid"].(string)
		if kid == "" {
			return nil, errNoKid
		}
		k, err := v.keys.Key(ctx, kid)
		if err != nil {
			keyErr = err
			return nil, err
		}
		used.kid, used.key = kid, k
		return k, nil
	})
	if err != nil {
		switch {
		case keyErr != nil && !errors.Is(keyErr, ErrUnknownKey):
			e := apperr.Wrap(err, apperr.Unavailable, "token keys are unavailable; try again")
			e.RetryAfter = 5 * time.Second
			return Principal{}, e
		case errors.Is(err, jwt.ErrTokenExpired):
			return Principal{}, apperr.Wrap(err, apperr.Unauthenticated, "token expired")
		}
		return Principal{}, apperr.Wrap(err, apperr.Unauthenticated, "invalid token")
	}
	p, err := principalOf(&c)
	if err != nil {
		return Principal{}, apperr.Wrap(err, apperr.Unauthenticated, "invalid token")
	}
	if c.ExpiresAt != nil { // required by the parser; checked for safety
		used.p, used.exp = p, c.ExpiresAt.Time
		used.p.Scopes = slices.Clone(p.Scopes) // p is the caller's to keep
		v.remember(raw, used)
	}
	return p, nil
}

// remembered returns the principal of raw if Verify accepted it before, it has not
// expired since, and its key is still the one that verified it.
func (v *Verifier) remembered(ctx context.Context, raw string) (Principal, bool) {
	v.mu.Lock()
	e, ok := v.verified[raw]
	v.mu.Unlock()
	if !ok {
		return Principal{}, false
	}
	if !v.now().Before(e.exp.Add(v.leeway)) {
		v.mu.Lock()
		delete(v.verified, raw)
		v.mu.Unlock()
		return Principal{}, false // the full check says why
	}
	if k, err := v.keys.Key(ctx, e.kid); err != nil || !k.Equal(e.key) {
		return Principal{}, false
	}
	p := e.p
	p.Scopes = slices.Clone(p.Scopes) // the caller's to keep
	return p, true
}

// remember records an accepted token. When full it forgets an arbitrary token: the
// memory only saves work, so which one goes does not matter.
func (v *Verifier) remember(raw string, e verified) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.verified) >= maxVerified {
		for k := range v.verified {
			delete(v.verified, k)
			break
		}
	}
	v.verified[raw] = e
}

// principalOf checks StreamSpace's own claims, which the signature vouches for but which a
// buggy signer could still get wrong.
func principalOf(c *Claims) (Principal, error) {
	if c.Subject == "" {
		return Principal{}, fmt.Errorf("%w: no sub", errBadClaims)
	}
	// An explicitly empty scope list would read as "every scope"; a signer that meant to
	// restrict a token and got it wrong must fail closed.
	if c.Scopes != nil && len(c.Scopes) == 0 || slices.Contains(c.Scopes, "") {
		return Principal{}, fmt.Errorf("%w: empty scp", errBadClaims)
	}
	p := Principal{Kind: c.Kind, Subject: c.Subject, Scopes: slices.Clone(c.Scopes), TokenID: c.ID}
	switch c.Kind {
	case KindUser:
		id, err := tenant.ParseID(c.Tenant)
		if err != nil {
			return Principal{}, fmt.Errorf("%w: user token has no valid tid: %w", errBadClaims, err)
		}
		if !c.Role.Valid() {
			return Principal{}, fmt.Errorf("%w: user token has no valid role", errBadClaims)
		}
		p.Tenant, p.Role = id, c.Role
	case KindOperator:
		if c.Tenant != "" {
			return Principal{}, fmt.Errorf("%w: operator token names a tenant", errBadClaims)
		}
		// A role means nothing outside a tenant; it is dropped rather than carried.
	default:
		// Agents authenticate with certificates and system actors never hold tokens.
		return Principal{}, fmt.Errorf("%w: knd %q is not accepted in a token", errBadClaims, c.Kind)
	}
	return p, nil
}
