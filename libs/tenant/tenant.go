// Package tenant defines the typed identity of a tenant and how it travels in a context.
//
// A tenant has two names: an ID, fixed for life, that names its schema and appears in
// tokens; and a Slug, chosen by people, that appears in URLs and sign-in forms. Both are
// validated on parse, so a value of either type is always safe to use as (part of) an SQL
// identifier — but the SQL layer still quotes it.
//
// The tenant reaches a context only through the authentication middleware (package auth)
// or, in tests, through package tenanttest. Nothing else can put one there, so code that
// reads tenant data cannot run on a tenant nobody authenticated.
package tenant

import (
	"context"
	"crypto/rand"
	"fmt"
	"regexp"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/internal/principalctx"
)

// ID is a tenant's permanent identifier: 12 lowercase base-32 characters.
type ID string

// Slug is a tenant's human-chosen handle: 3–40 characters of lowercase letters, digits and
// single hyphens, starting with a letter.
type Slug string

var (
	idPattern   = regexp.MustCompile(`^[a-z2-7]{12}$`)
	slugPattern = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)*$`)
)

// reservedSlugs are names that would be confusing or dangerous as tenant handles.
var reservedSlugs = map[string]bool{
	"admin": true, "api": true, "platform": true, "public": true, "system": true,
	"streamspace": true, "www": true, "root": true, "postgres": true,
}

// ParseID validates s as a tenant ID.
func ParseID(s string) (ID, error) {
	if !idPattern.MatchString(s) {
		return "", apperr.Validation("invalid tenant id", apperr.Field("tenant_id", "must be 12 characters of a-z and 2-7"))
	}
	return ID(s), nil
}

// NewID returns a fresh random tenant ID (60 bits).
func NewID() ID {
	const alphabet = "abcdefghijklmnopqrstuvwxyz234567"
	var b [12]byte
	_, _ = rand.Read(b[:])
	for i := range b {
		b[i] = alphabet[b[i]&31]
	}
	return ID(b[:])
}

// Schema returns the name of the tenant's PostgreSQL schema. Callers must still quote it.
func (id ID) Schema() string { return "t_" + string(id) }

// String implements fmt.Stringer.
func (id ID) String() string { return string(id) }

// ParseSlug validates s as a tenant slug.
func ParseSlug(s string) (Slug, error) {
	reason := ""
	switch {
	case len(s) < 3 || len(s) > 40:
		reason = "must be 3 to 40 characters long"
	case !slugPattern.MatchString(s):
		reason = "must be lowercase letters, digits and single hyphens, starting with a letter"
	case reservedSlugs[s]:
		reason = fmt.Sprintf("%q is reserved", s)
	}
	if reason != "" {
		return "", apperr.Validation("invalid tenant slug", apperr.Field("slug", reason))
	}
	return Slug(s), nil
}

// String implements fmt.Stringer.
func (s Slug) String() string { return string(s) }

// FromContext returns the authenticated tenant of ctx.
func FromContext(ctx context.Context) (ID, bool) {
	p, ok := principalctx.From(ctx)
	if !ok || p.Tenant == "" {
		return "", false
	}
	return ID(p.Tenant), true
}
