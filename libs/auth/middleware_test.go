package auth_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
)

func TestMiddleware(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	v := s.Verifier(t)
	good := s.Token(t, testTenant, "alice", auth.RoleAdmin)
	foreign := authtest.NewSigner(t).Token(t, testTenant, "alice", auth.RoleAdmin)
	cases := []struct {
		name      string
		headers   []string // Authorization values
		optional  bool
		status    int
		challenge string // what WWW-Authenticate must contain
		principal bool
	}{
		{name: "good token", headers: []string{"Bearer " + good}, status: 200, principal: true},
		{name: "lowercase scheme", headers: []string{"bearer " + good}, status: 200, principal: true},
		{name: "extra spaces", headers: []string{"BEARER   " + good}, status: 200, principal: true},
		{name: "no header", status: 401, challenge: `Bearer realm="streamspace"`},
		{name: "two headers", headers: []string{"Bearer " + good, "Bearer " + good}, status: 401, challenge: `error="invalid_request"`},
		{name: "wrong scheme", headers: []string{"Basic dXNlcjpwYXNz"}, status: 401, challenge: `Bearer realm="streamspace"`},
		{name: "scheme only", headers: []string{"Bearer"}, status: 401, challenge: `error="invalid_request"`},
		{name: "scheme and space", headers: []string{"Bearer "}, status: 401, challenge: `error="invalid_request"`},
		{name: "two tokens", headers: []string{"Bearer " + good + " " + good}, status: 401, challenge: `error="invalid_request"`},
		{name: "token without scheme", headers: []string{good}, status: 401, challenge: `Bearer realm="streamspace"`},
		{name: "bad token", headers: []string{"Bearer not-a-jwt"}, status: 401, challenge: `error="invalid_token"`},
		{name: "foreign token", headers: []string{"Bearer " + foreign}, status: 401, challenge: `error="invalid_token"`},

		{name: "optional: no header", optional: true, status: 200},
		{name: "optional: good token", optional: true, headers: []string{"Bearer " + good}, status: 200, principal: true},
		{name: "optional: bad token", optional: true, headers: []string{"Bearer not-a-jwt"}, status: 401, challenge: `error="invalid_token"`},
		{name: "optional: wrong scheme", optional: true, headers: []string{"Basic dXNlcjpwYXNz"}, status: 401},
		{name: "optional: two headers", optional: true, headers: []string{"Bearer " + good, "Bearer x"}, status: 401},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var seen *auth.Principal
			h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if p, ok := auth.FromContext(r.Context()); ok {
					seen = &p
				}
				w.WriteHeader(http.StatusOK)
			})
			mw := auth.Middleware(v)
			if tc.optional {
				mw = auth.Optional(v)
			}
			req := httptest.NewRequest(http.MethodGet, "/v1/sessions", nil)
			for _, hv := range tc.headers {
				req.Header.Add("Authorization", hv)
			}
			rec := httptest.NewRecorder()
			mw(h).ServeHTTP(rec, req)

			if rec.Code != tc.status {
				t.Fatalf("status = %d, want %d; body %s", rec.Code, tc.status, rec.Body)
			}
			if tc.status == http.StatusOK {
				switch {
				case tc.principal && (seen == nil || seen.Subject != "alice" || seen.Tenant != testTenant || seen.Role != auth.RoleAdmin):
					t.Errorf("handler saw principal %+v", seen)
				case !tc.principal && seen != nil:
					t.Errorf("handler saw principal %+v, want none", seen)
				}
				return
			}
			if seen != nil {
				t.Error("handler ran for a refused request")
			}
			if ct := rec.Header().Get("Content-Type"); ct != apperr.ProblemContentType {
				t.Errorf("Content-Type = %q", ct)
			}
			var p apperr.Problem
			if err := json.Unmarshal(rec.Body.Bytes(), &p); err != nil || p.Code != apperr.Unauthenticated || p.Instance != "/v1/sessions" {
				t.Errorf("problem = %+v, %v", p, err)
			}
			ch := rec.Header().Get("WWW-Authenticate")
			if !strings.HasPrefix(ch, "Bearer ") || !strings.Contains(ch, tc.challenge) {
				t.Errorf("WWW-Authenticate = %q, want it to contain %q", ch, tc.challenge)
			}
			if tc.challenge == `Bearer realm="streamspace"` && strings.Contains(ch, "error=") {
				t.Errorf("WWW-Authenticate = %q: a request without a token gets no error code (RFC 6750 §3.1)", ch)
			}
			if strings.Contains(rec.Body.String(), good[len(good)-20:]) {
				t.Error("response echoes the token")
			}
		})
	}
}

// principals for the authorization checks.
var (
	member   = auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "m", Role: auth.RoleMember}
	admin    = auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "a", Role: auth.RoleAdmin}
	owner    = auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "o", Role: auth.RoleOwner}
	scoped   = auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "s", Role: auth.RoleOwner, Scopes: []string{"sessions:read"}}
	operator = auth.Principal{Kind: auth.KindOperator, Subject: "op"}
)

func TestRequire(t *testing.T) {
	t.Parallel()
	system := func(ctx context.Context) context.Context { return auth.AsSystem(ctx, testTenant, "scheduler") }
	as := func(p auth.Principal) func(context.Context) context.Context {
		return func(ctx context.Context) context.Context { return authtest.Context(ctx, p) }
	}
	anonymous := func(ctx context.Context) context.Context { return ctx }
	cases := []struct {
		name string
		ctx  func(context.Context) context.Context
		// check is the auth function and the go-kit middleware doing the same check.
		check func(context.Context) (auth.Principal, error)
		mw    endpoint.Middleware
		code  apperr.Code
	}{
		{"role admin: anonymous", anonymous, roleCheck(auth.RoleAdmin), auth.EndpointRequireRole(auth.RoleAdmin), apperr.Unauthenticated},
		{"role admin: member", as(member), roleCheck(auth.RoleAdmin), auth.EndpointRequireRole(auth.RoleAdmin), apperr.Forbidden},
		{"role admin: admin", as(admin), roleCheck(auth.RoleAdmin), auth.EndpointRequireRole(auth.RoleAdmin), ""},
		{"role admin: owner", as(owner), roleCheck(auth.RoleAdmin), auth.EndpointRequireRole(auth.RoleAdmin), ""},
		{"role admin: operator", as(operator), roleCheck(auth.RoleAdmin), auth.EndpointRequireRole(auth.RoleAdmin), apperr.Forbidden},
		{"role owner: system", system, roleCheck(auth.RoleOwner), auth.EndpointRequireRole(auth.RoleOwner), ""},
		{"role member: member", as(member), roleCheck(auth.RoleMember), auth.EndpointRequireRole(auth.RoleMember), ""},
		{"scope: anonymous", anonymous, scopeCheck("sessions:write"), auth.EndpointRequireScope("sessions:write"), apperr.Unauthenticated},
		{"scope: unscoped token", as(member), scopeCheck("sessions:write"), auth.EndpointRequireScope("sessions:write"), ""},
		{"scope: scoped token, scope held", as(scoped), scopeCheck("sessions:read"), auth.EndpointRequireScope("sessions:read"), ""},
		{"scope: scoped token, scope lacking", as(scoped), scopeCheck("sessions:write"), auth.EndpointRequireScope("sessions:write"), apperr.Forbidden},
		{"operator: anonymous", anonymous, auth.RequireOperator, auth.EndpointRequireOperator(), apperr.Unauthenticated},
		{"operator: owner", as(owner), auth.RequireOperator, auth.EndpointRequireOperator(), apperr.NotFound},
		{"operator: system", system, auth.RequireOperator, auth.EndpointRequireOperator(), apperr.NotFound},
		{"operator: operator", as(operator), auth.RequireOperator, auth.EndpointRequireOperator(), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := tc.ctx(context.Background())
			_, err := tc.check(ctx)
			wantCode(t, err, tc.code)

			ran := false
			ep := tc.mw(func(context.Context, any) (any, error) {
				ran = true
				return "ok", nil
			})
			resp, err := ep(ctx, "req")
			wantCode(t, err, tc.code)
			if ran != (tc.code == "") || (tc.code == "" && resp != "ok") {
				t.Errorf("endpoint ran = %v (resp %v), want ran = %v", ran, resp, tc.code == "")
			}
		})
	}
}

func roleCheck(min auth.Role) func(context.Context) (auth.Principal, error) {
	return func(ctx context.Context) (auth.Principal, error) { return auth.RequireRole(ctx, min) }
}

func scopeCheck(scope string) func(context.Context) (auth.Principal, error) {
	return func(ctx context.Context) (auth.Principal, error) { return auth.RequireScope(ctx, scope) }
}
