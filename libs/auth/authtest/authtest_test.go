package authtest_test

import (
	"context"
	"slices"
	"testing"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/tenant"
)

// TestContextRoundTrip guards Context against drifting from auth's own conversion.
func TestContextRoundTrip(t *testing.T) {
	t.Parallel()
	want := auth.Principal{Kind: auth.KindUser, Tenant: "abcdefghijkl", Subject: "u", Role: auth.RoleAdmin,
		Scopes: []string{"a", "b"}, TokenID: "j"}
	got, ok := auth.FromContext(authtest.Context(context.Background(), want))
	if !ok || got.Kind != want.Kind || got.Tenant != want.Tenant || got.Subject != want.Subject ||
		got.Role != want.Role || !slices.Equal(got.Scopes, want.Scopes) || got.TokenID != want.TokenID {
		t.Errorf("FromContext(Context(p)) = %+v, %v; want %+v", got, ok, want)
	}
	if id, ok := tenant.FromContext(authtest.Context(context.Background(), want)); !ok || id != want.Tenant {
		t.Errorf("tenant.FromContext = %q, %v", id, ok)
	}
}

func TestSignerTokensVerify(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	if other := authtest.NewSigner(t); other.Kid() == s.Kid() {
		t.Error("two signers share a kid")
	}
	p, err := s.Verifier(t).Verify(context.Background(), s.Token(t, "abcdefghijkl", "u", auth.RoleMember))
	if err != nil || p.Subject != "u" || p.Tenant != "abcdefghijkl" || p.Role != auth.RoleMember {
		t.Fatalf("Verify = %+v, %v", p, err)
	}
	keys, err := auth.ParseJWKS(s.JWKS())
	if err != nil || !s.PublicKey().Equal(keys[s.Kid()]) {
		t.Errorf("ParseJWKS(JWKS()) = %v, %v", keys, err)
	}
}
