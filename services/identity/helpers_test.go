package identity_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/server"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/identity/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// testKEK is 32 zero bytes: fine for tests, whose databases are thrown away.
const testKEK = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

const (
	testIssuer      = "https://identity.test"
	operatorEmail   = "ops@streamspace.test"
	operatorPass    = "operator-password-long"
	defaultPassword = "correct horse battery"
)

// harness is identity served over real HTTP on a real database.
type harness struct {
	t      testing.TB
	env    *tenantstest.Env
	mod    *identity.Module
	srv    *httptest.Server
	client *http.Client
}

func newHarness(t testing.TB, mutate ...func(*identity.Config)) *harness {
	t.Helper()
	return newHarnessBehind(t, "", mutate...)
}

// newHarnessBehind is newHarness with identity trusting X-Forwarded-For from proxies.
func newHarnessBehind(t testing.TB, proxies string, mutate ...func(*identity.Config)) *harness {
	t.Helper()
	env := tenantstest.New(t)
	cfg := identity.Config{KEK: testKEK, OperatorEmail: operatorEmail, OperatorPassword: operatorPass,
		Throttle: identity.Throttle{AddressThreshold: 10000}}
	for _, f := range mutate {
		f(&cfg)
	}
	deps := server.Deps{DB: env.DB, Logger: slog.New(slog.DiscardHandler), Registry: prometheus.NewRegistry(),
		Config: server.Config{Issuer: testIssuer, Audience: auth.DefaultAudience, TrustedProxies: proxies}}
	m, err := identity.New(deps, cfg, postgres.New(env.DB))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Close(context.Background()) })
	mux := http.NewServeMux()
	m.Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return &harness{t: t, env: env, mod: m, srv: srv, client: srv.Client()}
}

// response is a decoded HTTP answer.
type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) json(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func (r response) code() string {
	var p struct {
		Code string `json:"code"`
	}
	_ = json.Unmarshal(r.body, &p)
	return p.Code
}

// do sends a request; body may be a string (sent raw) or a value (sent as JSON).
func (h *harness) do(method, path, token string, body any) response {
	h.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		enc, err := json.Marshal(b)
		if err != nil {
			h.t.Fatal(err)
		}
		rd = bytes.NewReader(enc)
	}
	req, err := http.NewRequest(method, h.srv.URL+path, rd)
	if err != nil {
		h.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// must fails the test unless the response has status want.
func (h *harness) must(want int, r response) response {
	h.t.Helper()
	if r.status != want {
		h.t.Fatalf("status %d, want %d: %s", r.status, want, r.body)
	}
	return r
}

// signedUp is a tenant made through the sign-up API.
type signedUp struct {
	TenantID string
	Slug     string
	OwnerID  string
	Email    string
	Access   string
	Refresh  string
}

func (h *harness) signup(slug string) signedUp {
	h.t.Helper()
	email := "owner@" + slug + ".test"
	var res identity.SignupResult
	h.must(201, h.do("POST", "/api/v1/signup", "", identity.Signup{TenantName: "Tenant " + slug, Slug: slug,
		Email: email, Password: defaultPassword})).json(h.t, &res)
	return signedUp{TenantID: string(res.Tenant.ID), Slug: slug, OwnerID: string(res.Owner.ID), Email: email,
		Access: res.Tokens.AccessToken, Refresh: res.Tokens.RefreshToken}
}

func (h *harness) login(slug, email, password string) response {
	h.t.Helper()
	return h.do("POST", "/api/v1/auth/login", "", identity.Credentials{Tenant: slug, Email: email, Password: password})
}

func (h *harness) tokens(r response) identity.Tokens {
	h.t.Helper()
	var t identity.Tokens
	h.must(200, r).json(h.t, &t)
	return t
}

// addUser creates a user with role through the admin API and signs them in.
func (h *harness) addUser(admin signedUp, email string, role auth.Role) (identity.User, identity.Tokens) {
	h.t.Helper()
	var u identity.User
	h.must(201, h.do("POST", "/api/v1/users", admin.Access, identity.NewUser{Email: email, Role: role, Password: defaultPassword})).json(h.t, &u)
	return u, h.tokens(h.login(admin.Slug, email, defaultPassword))
}

func (h *harness) operatorToken() string {
	h.t.Helper()
	return h.tokens(h.do("POST", "/api/v1/operator/login", "", identity.OperatorCredentials{Email: operatorEmail, Password: operatorPass})).AccessToken
}

var _ = time.Second

func decodeSegment(s string) ([]byte, error) { return base64.RawURLEncoding.DecodeString(s) }
