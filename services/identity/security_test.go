package identity_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"streamspace.dev/libs/auth"
	"streamspace.dev/services/identity"
)

// TestForgedTokensAreRefused sends every kind of bad access token to a protected route
// over real HTTP and expects 401 problem+json, never the data.
func TestForgedTokensAreRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("forge-a")
	b := h.signup("forge-b")
	h.must(200, h.do("GET", "/api/v1/users/me", a.Access, nil))

	kid, priv, err := h.mod.Keys().Signer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	valid := func() auth.Claims {
		return auth.Claims{RegisteredClaims: jwt.RegisteredClaims{Issuer: testIssuer, Subject: a.OwnerID,
			Audience: jwt.ClaimStrings{auth.DefaultAudience}, IssuedAt: jwt.NewNumericDate(now),
			NotBefore: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(10 * time.Minute)), ID: "jti-1"},
			Tenant: a.TenantID, Role: auth.RoleOwner, Kind: auth.KindUser}
	}
	sign := func(c auth.Claims, key ed25519.PrivateKey, kid string) string {
		tok := jwt.NewWithClaims(jwt.SigningMethodEdDSA, c)
		tok.Header["kid"] = kid
		s, err := tok.SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// Sanity: the crafting itself yields an accepted token, so each case below fails
	// for its one defect only.
	h.must(200, h.do("GET", "/api/v1/users/me", sign(valid(), priv, kid), nil))

	enc := base64.RawURLEncoding
	part := func(v any) string {
		b, _ := json.Marshal(v)
		return enc.EncodeToString(b)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	pub := priv.Public().(ed25519.PublicKey)
	aParts := strings.Split(a.Access, ".")
	bParts := strings.Split(b.Access, ".")

	cases := []struct {
		name  string
		token func() string
	}{
		{"alg none", func() string {
			return part(map[string]string{"alg": "none", "typ": "JWT", "kid": kid}) + "." + part(valid()) + "."
		}},
		{"HS256 signed with the public key", func() string {
			tok := jwt.NewWithClaims(jwt.SigningMethodHS256, valid())
			tok.Header["kid"] = kid
			s, err := tok.SignedString([]byte(pub))
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
		{"expired", func() string {
			c := valid()
			c.ExpiresAt = jwt.NewNumericDate(now.Add(-5 * time.Minute))
			c.IssuedAt = jwt.NewNumericDate(now.Add(-15 * time.Minute))
			c.NotBefore = c.IssuedAt
			return sign(c, priv, kid)
		}},
		{"nbf in the future", func() string {
			c := valid()
			c.NotBefore = jwt.NewNumericDate(now.Add(5 * time.Minute))
			return sign(c, priv, kid)
		}},
		{"wrong iss", func() string {
			c := valid()
			c.Issuer = "https://evil.test"
			return sign(c, priv, kid)
		}},
		{"wrong aud", func() string {
			c := valid()
			c.Audience = jwt.ClaimStrings{"another-api"}
			return sign(c, priv, kid)
		}},
		{"unknown kid", func() string { return sign(valid(), otherKey, "no-such-kid") }},
		{"known kid, other key", func() string { return sign(valid(), otherKey, kid) }},
		{"payload of another token under this signature", func() string {
			return aParts[0] + "." + bParts[1] + "." + aParts[2]
		}},
		{"payload edited to another role", func() string {
			c := valid()
			c.Role = auth.RoleOwner
			c.Subject = "someone-else"
			return aParts[0] + "." + part(c) + "." + aParts[2]
		}},
		{"no signature", func() string { return aParts[0] + "." + aParts[1] + "." }},
		{"garbage", func() string { return "not-a-jwt" }},
		{"operator kind with a tenant", func() string {
			c := valid()
			c.Kind = auth.KindOperator
			return sign(c, otherKey, kid)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("GET", "/api/v1/users/me", tc.token(), nil)
			if r.status != 401 || r.code() != "unauthenticated" || strings.Contains(string(r.body), a.Email) {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		})
	}
}

// TestTenantIsolationOverHTTP: tenant A's valid token never reaches tenant B's objects;
// they are 404, exactly like objects that do not exist.
func TestTenantIsolationOverHTTP(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("iso-a")
	b := h.signup("iso-b")
	var bTok identity.CreatedEnrollmentToken
	h.must(201, h.do("POST", "/api/v1/enrollment-tokens", b.Access, identity.NewEnrollmentToken{Name: "b"})).json(t, &bTok)
	var bAPI identity.CreatedAPIToken
	h.must(201, h.do("POST", "/api/v1/tokens", b.Access, identity.NewAPIToken{Name: "b", Scopes: []string{"identity:read"}})).json(t, &bAPI)
	cases := []struct {
		name, method, path string
		body               any
	}{
		{"read B's owner", "GET", "/api/v1/users/" + b.OwnerID, nil},
		{"patch B's owner", "PATCH", "/api/v1/users/" + b.OwnerID, identity.UserPatch{Status: new(identity.UserDisabled)}},
		{"delete B's owner", "DELETE", "/api/v1/users/" + b.OwnerID, nil},
		{"revoke B's enrollment token", "DELETE", "/api/v1/enrollment-tokens/" + string(bTok.ID), nil},
		{"revoke B's API token", "DELETE", "/api/v1/tokens/" + string(bAPI.ID), nil},
		{"malformed id", "GET", "/api/v1/users/not-a-uuid", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do(tc.method, tc.path, a.Access, tc.body)
			if r.status != 404 || r.code() != "not_found" {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
		})
	}
	// B's objects are untouched.
	h.must(200, h.do("GET", "/api/v1/users/"+b.OwnerID, b.Access, nil))
	h.must(200, h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "api_token", Token: bAPI.Token}))
}

// TestMembersCannotCallAdminRoutes: 403 for a member on admin routes; operator routes
// are invisible (404) to every tenant user.
func TestMembersCannotCallAdminRoutes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("roles")
	admin, adminTok := h.addUser(a, "admin@roles.test", auth.RoleAdmin)
	member, memberTok := h.addUser(a, "member@roles.test", auth.RoleMember)
	cases := []struct {
		name, method, path string
		body               any
		want               int
	}{
		{"list users", "GET", "/api/v1/users", nil, 403},
		{"create user", "POST", "/api/v1/users", identity.NewUser{Email: "x@roles.test", Role: auth.RoleMember, Password: defaultPassword}, 403},
		{"read another user", "GET", "/api/v1/users/" + a.OwnerID, nil, 403},
		{"promote self", "PATCH", "/api/v1/users/" + string(member.ID), identity.UserPatch{Role: new(auth.RoleOwner)}, 403},
		{"delete a user", "DELETE", "/api/v1/users/" + string(admin.ID), nil, 403},
		{"create enrollment token", "POST", "/api/v1/enrollment-tokens", identity.NewEnrollmentToken{Name: "x"}, 403},
		{"list enrollment tokens", "GET", "/api/v1/enrollment-tokens", nil, 403},
		{"operator: list tenants", "GET", "/api/v1/operator/tenants", nil, 404},
		{"operator: suspend", "POST", "/api/v1/operator/tenants/" + a.TenantID + "/suspend", nil, 404},
		{"operator: rotate keys", "POST", "/api/v1/operator/signing-keys/rotate", nil, 404},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if r := h.do(tc.method, tc.path, memberTok.AccessToken, tc.body); r.status != tc.want {
				t.Fatalf("status %d, want %d: %s", r.status, tc.want, r.body)
			}
		})
	}
	// What members may do still works.
	h.must(200, h.do("GET", "/api/v1/users/me", memberTok.AccessToken, nil))
	h.must(200, h.do("GET", "/api/v1/users/"+string(member.ID), memberTok.AccessToken, nil))
	// An admin may not touch the owner, nor make owners.
	h.must(403, h.do("PATCH", "/api/v1/users/"+a.OwnerID, adminTok.AccessToken, identity.UserPatch{Role: new(auth.RoleMember)}))
	h.must(403, h.do("POST", "/api/v1/users", adminTok.AccessToken, identity.NewUser{Email: "o2@roles.test", Role: auth.RoleOwner, Password: defaultPassword}))
	// The last owner cannot demote themself.
	h.must(412, h.do("PATCH", "/api/v1/users/"+a.OwnerID, a.Access, identity.UserPatch{Role: new(auth.RoleMember)}))
}

// TestRefreshTokenReuseRevokesTheFamily: a rotated refresh token presented again revokes
// every token of its family, including the legitimate newest one.
func TestRefreshTokenReuseRevokesTheFamily(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("reuse")
	refresh := func(tok string) response {
		return h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "refresh_token", RefreshToken: tok})
	}
	second := h.tokens(refresh(a.Refresh))
	third := h.tokens(refresh(second.RefreshToken))
	h.must(200, h.do("GET", "/api/v1/users/me", third.AccessToken, nil))

	if r := refresh(a.Refresh); r.status != 401 {
		t.Fatalf("reusing the first token: %d %s", r.status, r.body)
	}
	if r := refresh(third.RefreshToken); r.status != 401 {
		t.Fatalf("newest token of a revoked family: %d %s", r.status, r.body)
	}
	// Another session of the same user is a different family and survives.
	other := h.tokens(h.login(a.Slug, a.Email, defaultPassword))
	h.tokens(refresh(other.RefreshToken))

	// Logout revokes; forged and foreign-tenant tokens are refused the same way.
	fourth := h.tokens(h.login(a.Slug, a.Email, defaultPassword))
	h.must(204, h.do("POST", "/api/v1/auth/logout", "", map[string]string{"refresh_token": fourth.RefreshToken}))
	for _, tok := range []string{fourth.RefreshToken, "ssr_" + a.TenantID + "_" + strings.Repeat("A", 43), "garbage", ""} {
		if r := refresh(tok); r.status != 401 {
			t.Fatalf("refresh %q: %d %s", tok, r.status, r.body)
		}
	}
	var n int
	if err := h.env.Pool.QueryRow(context.Background(), fmt.Sprintf(
		`SELECT count(*) FROM t_%s.audit_log WHERE action = 'auth.refresh' AND outcome = 'failure'`, a.TenantID)).Scan(&n); err != nil || n == 0 {
		t.Fatalf("no refresh failures audited (%d, %v)", n, err)
	}
}

// TestPersonalAPITokens: exchange, scopes, revocation, expiry bookkeeping.
func TestPersonalAPITokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("pat")
	var pat identity.CreatedAPIToken
	h.must(201, h.do("POST", "/api/v1/tokens", a.Access, identity.NewAPIToken{Name: "ci", Scopes: []string{"identity:read"}, ExpiresIn: 3600})).json(t, &pat)
	exchange := func(tok string) response {
		return h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "api_token", Token: tok})
	}
	scoped := h.tokens(exchange(pat.Token))
	if scoped.RefreshToken != "" {
		t.Fatal("an API-token grant must not return a refresh token")
	}
	h.must(200, h.do("GET", "/api/v1/users/me", scoped.AccessToken, nil))
	// identity:read does not allow writes, and a token may not mint tokens.
	h.must(403, h.do("POST", "/api/v1/users", scoped.AccessToken, identity.NewUser{Email: "x@pat.test", Role: auth.RoleMember, Password: defaultPassword}))
	h.must(403, h.do("POST", "/api/v1/tokens", scoped.AccessToken, identity.NewAPIToken{Name: "x", Scopes: []string{"identity:write"}}))

	var list identity.ListResponse[identity.APIToken]
	h.must(200, h.do("GET", "/api/v1/tokens", a.Access, nil)).json(t, &list)
	if len(list.Items) != 1 || list.Items[0].LastUsedAt == nil || strings.Contains(string(h.do("GET", "/api/v1/tokens", a.Access, nil).body), pat.Token) {
		t.Fatalf("list %+v", list)
	}
	h.must(204, h.do("DELETE", "/api/v1/tokens/"+string(pat.ID), a.Access, nil))
	if r := exchange(pat.Token); r.status != 401 {
		t.Fatalf("revoked token: %d %s", r.status, r.body)
	}
	// Bad requests are typed, not 500s.
	for _, req := range []identity.NewAPIToken{{Name: "", Scopes: []string{"identity:read"}}, {Name: "x"}, {Name: "x", Scopes: []string{"root"}}, {Name: "x", Scopes: []string{"identity:read"}, ExpiresIn: 5}} {
		if r := h.do("POST", "/api/v1/tokens", a.Access, req); r.status != 400 {
			t.Fatalf("%+v: %d %s", req, r.status, r.body)
		}
	}
}

// TestSuspendedTenantIsRefused: after an operator suspends a tenant, its access tokens,
// refresh tokens and passwords all stop working; resuming restores them.
func TestSuspendedTenantIsRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("suspend-me")
	ops := h.operatorToken()
	var list identity.ListResponse[struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}]
	h.must(200, h.do("GET", "/api/v1/operator/tenants", ops, nil)).json(t, &list)
	if len(list.Items) != 1 || list.Items[0].ID != a.TenantID {
		t.Fatalf("tenants %+v", list)
	}
	h.must(204, h.do("POST", "/api/v1/operator/tenants/"+a.TenantID+"/suspend", ops, nil))
	if r := h.do("GET", "/api/v1/users/me", a.Access, nil); r.status != 403 {
		t.Fatalf("access token of a suspended tenant: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "refresh_token", RefreshToken: a.Refresh}); r.status < 400 || r.status >= 500 {
		t.Fatalf("refresh of a suspended tenant: %d %s", r.status, r.body)
	}
	h.must(401, h.login(a.Slug, a.Email, defaultPassword))
	h.must(204, h.do("POST", "/api/v1/operator/tenants/"+a.TenantID+"/resume", ops, nil))
	h.must(200, h.do("GET", "/api/v1/users/me", a.Access, nil))
	h.tokens(h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "refresh_token", RefreshToken: a.Refresh}))

	// Deletion needs the slug repeated; afterwards everything about the tenant is gone.
	h.must(400, h.do("DELETE", "/api/v1/operator/tenants/"+a.TenantID+"?confirm=nope", ops, nil))
	h.must(204, h.do("DELETE", "/api/v1/operator/tenants/"+a.TenantID+"?confirm="+a.Slug, ops, nil))
	if r := h.do("GET", "/api/v1/users/me", a.Access, nil); r.status != 401 {
		t.Fatalf("deleted tenant: %d %s", r.status, r.body)
	}
	h.must(404, h.do("POST", "/api/v1/operator/tenants/not-an-id/suspend", ops, nil))
}

// TestEnrollmentTokens: single use, expiry, revocation and tenant binding.
func TestEnrollmentTokens(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("enroll-a")
	b := h.signup("enroll-b")
	create := func(s signedUp, name string) identity.CreatedEnrollmentToken {
		var tok identity.CreatedEnrollmentToken
		h.must(201, h.do("POST", "/api/v1/enrollment-tokens", s.Access, identity.NewEnrollmentToken{Name: name, Tags: []string{"gpu", "region=eu-west"}})).json(t, &tok)
		return tok
	}
	consume := func(raw string) response {
		return h.do("POST", "/api/v1/agents/enroll/validate", "", map[string]string{"token": raw})
	}
	once := create(a, "once")
	if d := time.Until(once.ExpiresAt); d < 23*time.Hour || d > 25*time.Hour {
		t.Fatalf("default expiry %v", d)
	}
	var got identity.Enrollment
	h.must(200, consume(once.Token)).json(t, &got)
	if string(got.Tenant) != a.TenantID || got.TokenID != once.ID || strings.Join(got.Tags, ",") != "gpu,region=eu-west" {
		t.Fatalf("enrollment %+v", got)
	}

	expired := create(a, "expired")
	if _, err := h.env.Pool.Exec(context.Background(), fmt.Sprintf(
		`UPDATE t_%s.enrollment_tokens SET expires_at = now() - interval '1 second' WHERE id = $1`, a.TenantID), string(expired.ID)); err != nil {
		t.Fatal(err)
	}
	revoked := create(a, "revoked")
	h.must(204, h.do("DELETE", "/api/v1/enrollment-tokens/"+string(revoked.ID), a.Access, nil))
	bTok := create(b, "b")
	// A's token relabelled with B's tenant id: B has no such token.
	relabelled := strings.Replace(once.Token, a.TenantID, b.TenantID, 1)
	crossed := strings.Replace(bTok.Token, b.TenantID, a.TenantID, 1)

	cases := []struct{ name, token string }{
		{"used twice", once.Token},
		{"expired", expired.Token},
		{"revoked", revoked.Token},
		{"A's secret under B's tenant", relabelled},
		{"B's secret under A's tenant", crossed},
		{"unknown tenant", "sse_aaaaaaaaaaaa_" + strings.Repeat("A", 43)},
		{"malformed", "sse_" + strings.Repeat("x", 100)},
		{"empty", ""},
	}
	var first []byte
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := consume(tc.token)
			if r.status != 401 {
				t.Fatalf("status %d: %s", r.status, r.body)
			}
			if first == nil {
				first = r.body
			} else if string(r.body) != string(first) {
				// Every refusal reads the same: nothing says which check failed.
				t.Fatalf("body %s differs from %s", r.body, first)
			}
		})
	}
	// B's token still works after all that, exactly once.
	h.must(200, consume(bTok.Token))
	var list identity.ListResponse[identity.EnrollmentToken]
	h.must(200, h.do("GET", "/api/v1/enrollment-tokens", a.Access, nil)).json(t, &list)
	if len(list.Items) != 3 || list.Items[0].UsedAt == nil {
		t.Fatalf("list %+v", list.Items)
	}
}

// TestLoginBruteForce: after N failures the account locks with a growing lockout, and an
// unknown user is indistinguishable from a wrong password at every step.
func TestLoginBruteForce(t *testing.T) {
	t.Parallel()
	const n = 3
	h := newHarness(t, func(c *identity.Config) {
		c.Throttle = identity.Throttle{AccountThreshold: n, AddressThreshold: 10000, Base: time.Minute}
	})
	a := h.signup("brute")
	for i := range n {
		known := h.login(a.Slug, a.Email, "wrong password "+fmt.Sprint(i))
		unknown := h.login(a.Slug, "nobody@brute.test", "wrong password "+fmt.Sprint(i))
		noTenant := h.login("no-such-tenant", a.Email, "wrong password "+fmt.Sprint(i))
		if known.status != 401 || string(known.body) != string(unknown.body) || string(known.body) != string(noTenant.body) {
			t.Fatalf("attempt %d: known %d %s / unknown %d %s / no tenant %d %s", i, known.status, known.body,
				unknown.status, unknown.body, noTenant.status, noTenant.body)
		}
	}
	known := h.login(a.Slug, a.Email, defaultPassword) // even the right password now
	unknown := h.login(a.Slug, "nobody@brute.test", defaultPassword)
	// The two accounts were locked a moment apart, so their Retry-After (and the body that
	// repeats it) may differ by a second on a loaded machine; anything else is a tell.
	knownAfter, _ := strconv.Atoi(known.header.Get("Retry-After"))
	unknownAfter, _ := strconv.Atoi(unknown.header.Get("Retry-After"))
	sameBody := strings.ReplaceAll(string(known.body), strconv.Itoa(knownAfter), "N") ==
		strings.ReplaceAll(string(unknown.body), strconv.Itoa(unknownAfter), "N")
	if known.status != 429 || unknown.status != 429 || !sameBody || knownAfter <= 0 || unknownAfter <= 0 ||
		knownAfter-unknownAfter > 1 || unknownAfter-knownAfter > 1 {
		t.Fatalf("locked: known %d %v %s / unknown %d %s", known.status, known.header, known.body, unknown.status, unknown.body)
	}
	// Another account from the same address is unaffected.
	h.must(401, h.login(a.Slug, a.Email+"x", defaultPassword+"x"))
	// The lock lives in PostgreSQL (shared by replicas) and grows with each failure.
	var failures int
	var until time.Time
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT failures, locked_until FROM platform.login_throttle
		WHERE failures >= $1 AND locked_until IS NOT NULL ORDER BY locked_until DESC LIMIT 1`, n).Scan(&failures, &until); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(until); failures != n || d < 50*time.Second || d > 70*time.Second {
		t.Fatalf("failures %d, lock %v", failures, d)
	}
	var audited int
	if err := h.env.Pool.QueryRow(context.Background(), fmt.Sprintf(
		`SELECT count(*) FROM t_%s.audit_log WHERE action = 'auth.login' AND outcome = 'failure'`, a.TenantID)).Scan(&audited); err != nil || audited != 2*n+1 {
		t.Fatalf("audited failures %d (%v), want %d", audited, err, 2*n+1)
	}
}

// TestSignupFlood: one address gets its hourly allowance of sign-ups, counting attempts
// on taken slugs, then a 429 with Retry-After and no tenant created.
func TestSignupFlood(t *testing.T) {
	t.Parallel()
	const n = 3
	h := newHarness(t, func(c *identity.Config) { c.Throttle.SignupsPerHour = n })
	h.signup("flood-a")
	taken := h.do("POST", "/api/v1/signup", "", identity.Signup{TenantName: "again", Slug: "flood-a",
		Email: "x@flood.test", Password: defaultPassword})
	h.must(409, taken)
	h.signup("flood-b")
	refused := h.do("POST", "/api/v1/signup", "", identity.Signup{TenantName: "one more", Slug: "flood-c",
		Email: "owner@flood-c.test", Password: defaultPassword})
	if refused.status != 429 || refused.header.Get("Retry-After") == "" {
		t.Fatalf("sign-up %d from one address: %d %v %s, want 429 with Retry-After", n+1, refused.status, refused.header, refused.body)
	}
	var exists bool
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM platform.tenants WHERE slug = 'flood-c')`).Scan(&exists); err != nil || exists {
		t.Fatalf("refused sign-up created its tenant (%v, %v)", exists, err)
	}
	// Malformed sign-ups are refused before they are charged.
	h.must(400, h.do("POST", "/api/v1/signup", "", identity.Signup{Slug: "Bad Slug!"}))
}

// TestSignupThrottleBehindProxy: behind a trusted proxy each forwarded client has its own
// allowance; a caller that is not a trusted proxy cannot pick its address with
// X-Forwarded-For.
func TestSignupThrottleBehindProxy(t *testing.T) {
	t.Parallel()
	signupFrom := func(h *harness, slug, xff string) int {
		body, _ := json.Marshal(identity.Signup{TenantName: slug, Slug: slug, Email: "owner@" + slug + ".test", Password: defaultPassword})
		req, err := http.NewRequest("POST", h.srv.URL+"/api/v1/signup", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", xff)
		resp, err := h.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	behind := newHarnessBehind(t, "127.0.0.0/8", func(c *identity.Config) { c.Throttle.SignupsPerHour = 1 })
	if a, b := signupFrom(behind, "proxied-a", "198.51.100.1"), signupFrom(behind, "proxied-b", "198.51.100.2"); a != 201 || b != 201 {
		t.Fatalf("two forwarded clients, one sign-up each: %d, %d; want 201, 201", a, b)
	}
	if again := signupFrom(behind, "proxied-c", "198.51.100.1"); again != 429 {
		t.Fatalf("the first forwarded client's second sign-up: %d, want 429", again)
	}
	direct := newHarness(t, func(c *identity.Config) { c.Throttle.SignupsPerHour = 1 })
	if a, b := signupFrom(direct, "direct-a", "198.51.100.1"), signupFrom(direct, "direct-b", "198.51.100.2"); a != 201 || b != 429 {
		t.Fatalf("untrusted peer rotating X-Forwarded-For: %d, %d; want 201, 429", a, b)
	}
}
