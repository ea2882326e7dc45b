package streamspace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/streamspace"
	"streamspace.dev/tenants/tenantstest"
)

// TestIdentityFlowThroughAllInOne is issue 3's definition of done, driven through the
// all-in-one binary's real HTTP API: a new tenant signs up, signs in, gets and refreshes
// tokens, and creates a personal API token and an agent enrollment token, each of which
// then works.
func TestIdentityFlowThroughAllInOne(t *testing.T) {
	env := tenantstest.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Config{Name: "streamspace", Listen: "127.0.0.1:0", DatabaseURL: env.URL,
			LogLevel: "warn", ShutdownTimeout: 5 * time.Second, MaxConns: 8, Issuer: server.DefaultIssuer, Audience: auth.DefaultAudience},
			server.Options{Listener: ln, Before: func(ctx context.Context, pool *pgxpool.Pool) error {
				return streamspace.Migrate(ctx, pool, slog.New(slog.DiscardHandler))
			}},
			func(d server.Deps) ([]server.Module, error) {
				return streamspace.Modules(d, identity.Config{KEK: testKEK})
			})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server: %v", err)
		}
	})
	base := "http://" + ln.Addr().String()
	call := func(method, path, token string, body, out any, want int) {
		t.Helper()
		var rd io.Reader
		if body != nil {
			b, _ := json.Marshal(body)
			rd = bytes.NewReader(b)
		}
		req, _ := http.NewRequest(method, base+path, rd)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != want {
			t.Fatalf("%s %s: %d, want %d: %s", method, path, resp.StatusCode, want, b)
		}
		if out != nil {
			if err := json.Unmarshal(b, out); err != nil {
				t.Fatalf("%s %s: %v: %s", method, path, err, b)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(base + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("never became ready")
		}
		time.Sleep(20 * time.Millisecond)
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
