package streamspace_test

import (
	"testing"

	"streamspace.dev/libs/auth"
	"streamspace.dev/services/identity"
)

// TestIdentityFlowThroughAllInOne is issue 3's definition of done, driven through the
// all-in-one binary's real HTTP API: a new tenant signs up, signs in, gets and refreshes
// tokens, and creates a personal API token and an agent enrollment token, each of which
// then works.
func TestIdentityFlowThroughAllInOne(t *testing.T) {
	p := startPlane(t)
	call := func(method, path, token string, body, out any, want int) {
		t.Helper()
		p.call(method, path, token, body, nil, out, want)
	}

	const password = "a long enough passphrase"
	var signup identity.SignupResult
	call("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Initech", Slug: "initech", Email: "bill@initech.test", Password: password}, &signup, 201)

	var login identity.Tokens
	call("POST", "/api/v1/auth/login", "", identity.Credentials{Tenant: "initech", Email: "bill@initech.test", Password: password}, &login, 200)
	var me identity.User
	call("GET", "/api/v1/users/me", login.AccessToken, nil, &me, 200)
	if me.ID != signup.Owner.ID || me.Role != auth.RoleOwner {
		t.Fatalf("me %+v", me)
	}

	var refreshed identity.Tokens
	call("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "refresh_token", RefreshToken: login.RefreshToken}, &refreshed, 200)
	if refreshed.RefreshToken == login.RefreshToken || refreshed.AccessToken == "" {
		t.Fatal("refresh did not rotate")
	}
	call("GET", "/api/v1/users/me", refreshed.AccessToken, nil, nil, 200)

	var pat identity.CreatedAPIToken
	call("POST", "/api/v1/tokens", refreshed.AccessToken, identity.NewAPIToken{Name: "ci", Scopes: []string{"identity:read"}}, &pat, 201)
	var patAccess identity.Tokens
	call("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "api_token", Token: pat.Token}, &patAccess, 200)
	call("GET", "/api/v1/users/me", patAccess.AccessToken, nil, nil, 200)

	var enroll identity.CreatedEnrollmentToken
	call("POST", "/api/v1/enrollment-tokens", refreshed.AccessToken, identity.NewEnrollmentToken{Name: "cluster-1", Tags: []string{"gpu"}}, &enroll, 201)
	var enrollment identity.Enrollment
	call("POST", "/api/v1/agents/enroll/validate", "", map[string]string{"token": enroll.Token}, &enrollment, 200)
	if enrollment.Tenant != signup.Tenant.ID || enrollment.Name != "cluster-1" {
		t.Fatalf("enrollment %+v", enrollment)
	}
	call("POST", "/api/v1/agents/enroll/validate", "", map[string]string{"token": enroll.Token}, nil, 401)

	var jwks auth.JWKS
	call("GET", auth.JWKSPath, "", nil, &jwks, 200)
	if len(jwks.Keys) != 1 {
		t.Fatalf("jwks %+v", jwks)
	}
}
