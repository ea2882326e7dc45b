// Package authtest stands in for identity in tests: it signs access tokens with a fresh
// Ed25519 key and places principals in contexts. Production code must not import it.
package authtest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/internal/principalctx"
	"streamspace.dev/libs/tenant"
)

// Issuer is the iss of the tokens Token and OperatorToken make.
const Issuer = "https://issuer.test"

// Signer signs tokens with one key. It is safe for concurrent use.
type Signer struct {
	kid  string
	priv ed25519.PrivateKey
}

// NewSigner returns a signer with a fresh key and kid.
func NewSigner(t testing.TB) *Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("authtest: generating key: %v", err)
	}
	var b [9]byte
	_, _ = rand.Read(b[:])
	return &Signer{kid: "test-" + base64.RawURLEncoding.EncodeToString(b[:]), priv: priv}
}

// Kid returns the key id the signer puts in token headers.
func (s *Signer) Kid() string { return s.kid }

// PublicKey returns the signer's public key.
func (s *Signer) PublicKey() ed25519.PublicKey { return s.priv.Public().(ed25519.PublicKey) }

// PrivateKey returns the signer's private key, for tests that craft tokens by hand.
func (s *Signer) PrivateKey() ed25519.PrivateKey { return s.priv }

// Keys returns a KeySource holding the signer's public key.
func (s *Signer) Keys() auth.KeySource {
	return auth.StaticKeys(map[string]ed25519.PublicKey{s.kid: s.PublicKey()})
}

// JWKS returns the signer's public key as a JWKS document.
func (s *Signer) JWKS() []byte {
	b, err := auth.MarshalJWKS(map[string]ed25519.PublicKey{s.kid: s.PublicKey()})
	if err != nil {
		panic(fmt.Sprintf("authtest: marshalling JWKS: %v", err))
	}
	return b
}

// Sign signs claims exactly as given, with alg EdDSA and the signer's kid.
func (s *Signer) Sign(claims auth.Claims) string {
	t := jwt.NewWithClaims(jwt.SigningMethodEdDSA, claims)
	t.Header["kid"] = s.kid
	raw, err := t.SignedString(s.priv)
	if err != nil {
		// Ed25519 signing with a well-formed key cannot fail; claims that do not marshal
		// are a bug in the test.
		panic(fmt.Sprintf("authtest: signing: %v", err))
	}
	return raw
}

// Token returns a valid 10-minute access token for subject, a user of tenant id with
// role, issued by Issuer for auth.DefaultAudience.
func (s *Signer) Token(t testing.TB, id tenant.ID, subject string, role auth.Role) string {
	t.Helper()
	return s.Sign(s.claims(auth.KindUser, string(id), subject, role))
}

// ScopedToken is Token restricted to scopes, as identity mints from a personal API token.
func (s *Signer) ScopedToken(t testing.TB, id tenant.ID, subject string, role auth.Role, scopes ...string) string {
	t.Helper()
	c := s.claims(auth.KindUser, string(id), subject, role)
	c.Scopes = scopes
	return s.Sign(c)
}

// OperatorToken returns a valid 10-minute access token for platform operator subject.
func (s *Signer) OperatorToken(t testing.TB, subject string) string {
	t.Helper()
	return s.Sign(s.claims(auth.KindOperator, "", subject, ""))
}

func (s *Signer) claims(kind auth.Kind, tid, subject string, role auth.Role) auth.Claims {
	now := time.Now()
	var jti [12]byte
	_, _ = rand.Read(jti[:])
	return auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    Issuer,
			Subject:   subject,
			Audience:  jwt.ClaimStrings{auth.DefaultAudience},
			IssuedAt:  jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now),
			ExpiresAt: jwt.NewNumericDate(now.Add(10 * time.Minute)),
			ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		},
		Tenant: tid,
		Role:   role,
		Kind:   kind,
	}
}

// Verifier returns a verifier that accepts the signer's tokens from Token and
// OperatorToken.
func (s *Signer) Verifier(t testing.TB) *auth.Verifier {
	t.Helper()
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: s.Keys(), Issuer: Issuer})
	if err != nil {
		t.Fatalf("authtest: %v", err)
	}
	return v
}

// Context returns ctx authenticated as p, standing in for auth.Middleware in unit tests
// of services.
func Context(ctx context.Context, p auth.Principal) context.Context {
	return principalctx.With(ctx, principalctx.Principal{Kind: string(p.Kind), Tenant: string(p.Tenant),
		Subject: p.Subject, Role: string(p.Role), Scopes: p.Scopes, TokenID: p.TokenID})
}
