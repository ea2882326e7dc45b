package identity

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/tenant"
)

// Prefixes of the opaque token kinds; see the package documentation.
const (
	prefixRefresh    = "ssr"
	prefixAPI        = "ssp"
	prefixEnrollment = "sse"
)

// ErrTokenReused is returned when a refresh token that was already rotated is presented
// again; its whole family has been revoked by then.
var ErrTokenReused = &apperr.Error{Code: apperr.Unauthenticated, Message: "refresh token reuse detected; sign in again"}

// errBadToken is the single answer to any unusable opaque token, so callers learn nothing
// about why.
func errBadToken(kind string) error {
	return apperr.New(apperr.Unauthenticated, "invalid or expired %s", kind)
}

// newOpaque mints a token of the given kind for tenant id, returning the string to hand
// out and the digest to store.
func newOpaque(prefix string, id tenant.ID) (raw string, hash []byte, err error) {
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return "", nil, err
	}
	raw = prefix + "_" + string(id) + "_" + base64.RawURLEncoding.EncodeToString(secret)
	sum := sha256.Sum256([]byte(raw))
	return raw, sum[:], nil
}

// parseOpaque splits a presented token into its tenant and digest. Anything malformed is
// errBadToken, and a tenant id passes tenant.ParseID before it reaches SQL.
func parseOpaque(prefix, kind, raw string) (tenant.ID, []byte, error) {
	// 3 + 1 + 12 + 1 + 43 characters; anything longer is garbage, refused before hashing.
	if len(raw) != 60 {
		return "", nil, errBadToken(kind)
	}
	p, rest, ok := strings.Cut(raw, "_")
	if !ok || p != prefix {
		return "", nil, errBadToken(kind)
	}
	tid, secret, ok := strings.Cut(rest, "_")
	if !ok {
		return "", nil, errBadToken(kind)
	}
	id, err := tenant.ParseID(tid)
	if err != nil {
		return "", nil, errBadToken(kind)
	}
	if b, err := base64.RawURLEncoding.DecodeString(secret); err != nil || len(b) != 32 {
		return "", nil, errBadToken(kind)
	}
	sum := sha256.Sum256([]byte(raw))
	return id, sum[:], nil
}
