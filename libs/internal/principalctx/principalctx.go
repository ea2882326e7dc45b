// Package principalctx holds the context key for the authenticated principal. It is
// internal so that only libs packages — the auth middleware and the test helpers — can
// place a principal in a context; services can only read it.
package principalctx

import "context"

// Principal is the verified caller. Kind distinguishes users, API tokens, agents and
// trusted internal actors.
type Principal struct {
	Kind    string
	Tenant  string
	Subject string
	Role    string
	Scopes  []string
	TokenID string
}

type key struct{}

// With returns ctx carrying p.
func With(ctx context.Context, p Principal) context.Context {
	return context.WithValue(ctx, key{}, p)
}

// From returns the principal in ctx.
func From(ctx context.Context) (Principal, bool) {
	p, ok := ctx.Value(key{}).(Principal)
	return p, ok
}
