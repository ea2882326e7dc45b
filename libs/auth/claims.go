package auth

import (
	"github.com/golang-jwt/jwt/v5"
)

// Claims are the claims of a StreamSpace access JWT. iss, aud, sub, jti, iat, nbf and exp
// are the registered ones; tid, role, scp and knd are StreamSpace's.
type Claims struct {
	jwt.RegisteredClaims
	// Tenant is the tenant id (empty for operators).
	Tenant string `json:"tid,omitempty"`
	// Role is the user's role in the tenant.
	Role Role `json:"role,omitempty"`
	// Scopes restrict a token minted from a personal API token.
	Scopes []string `json:"scp,omitempty"`
	// Kind is "user" or "operator".
	Kind Kind `json:"knd"`
}

// Well-known values shared by identity (which signs) and every verifier.
const (
	// Algorithm is the only JWS algorithm StreamSpace signs with or accepts.
	Algorithm = "EdDSA"
	// DefaultAudience is the audience of access tokens for the public API.
	DefaultAudience = "streamspace-api"
	// JWKSPath is where identity publishes its keys.
	JWKSPath = "/.well-known/jwks.json"
	// MaxLeeway bounds clock skew tolerance.
	MaxLeeway = 60
)
