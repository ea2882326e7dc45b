package identity_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/services/identity"
	"streamspace.dev/services/identity/postgres"
	"streamspace.dev/tenants/tenantstest"
)

// failingStore fails CreateUser, to prove sign-up leaves nothing half-made.
type failingStore struct{ identity.Store }

func (failingStore) CreateUser(context.Context, string, string, auth.Role) (identity.User, error) {
	return identity.User{}, errors.New("disk on fire")
}

func TestSignupFailureLeavesNothingBehind(t *testing.T) {
	t.Parallel()
	env := tenantstest.New(t)
	store := failingStore{postgres.New(env.DB)}
	keys, err := identity.NewKeys(store, identity.KeysConfig{KEK: make([]byte, 32), TokenLifetime: 11 * 60e9})
	if err != nil {
		t.Fatal(err)
	}
	if err := keys.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	svc := identity.NewService(store, env.Tenants, keys, identity.Options{Issuer: testIssuer, Logger: slog.New(slog.DiscardHandler)})
	_, err = svc.Signup(context.Background(), identity.Signup{TenantName: "Doomed", Slug: "doomed", Email: "a@doomed.test", Password: defaultPassword})
	if err == nil {
		t.Fatal("sign-up succeeded over a failing store")
	}
	if _, err := env.Tenants.Get(context.Background(), "doomed"); !apperr.IsCode(err, apperr.NotFound) {
		t.Fatalf("tenant left behind: %v", err)
	}
	var schemas int
	if err := env.Pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_namespace WHERE nspname LIKE 't\_%'`).Scan(&schemas); err != nil || schemas != 0 {
		t.Fatalf("%d tenant schemas left (%v)", schemas, err)
	}
}

// TestBadInputIsTyped: hostile and malformed requests get 4xx problem+json, never a 500
// or a panic, and never echo internals.
func TestBadInputIsTyped(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.signup("taken")
	good := func(mut func(*identity.Signup)) identity.Signup {
		s := identity.Signup{TenantName: "Acme", Slug: "acme", Email: "a@acme.test", Password: defaultPassword}
		mut(&s)
		return s
	}
	cases := []struct {
		name string
		body any
		want int
	}{
		{"malformed JSON", `{"slug": `, 400},
		{"not an object", `[1,2]`, 400},
		{"unknown field", `{"slug":"acme","admin":true}`, 400},
		{"two values", `{} {}`, 400},
		{"oversized body", `{"tenant_name":"` + strings.Repeat("a", 100<<10) + `"}`, 400},
		{"hostile slug", good(func(s *identity.Signup) { s.Slug = `x"; DROP SCHEMA platform CASCADE; --` }), 400},
		{"reserved slug", good(func(s *identity.Signup) { s.Slug = "admin" }), 400},
		{"uppercase slug", good(func(s *identity.Signup) { s.Slug = "Acme" }), 400},
		{"hostile email", good(func(s *identity.Signup) { s.Email = "a@b.test\r\nBcc: evil@x.test" }), 400},
		{"display-name email", good(func(s *identity.Signup) { s.Email = "Ada <a@acme.test>" }), 400},
		{"short password", good(func(s *identity.Signup) { s.Password = "short" }), 400},
		{"common password", good(func(s *identity.Signup) { s.Password = "password1234" }), 400},
		{"password is the email", good(func(s *identity.Signup) { s.Password = "a@acme.test" }), 400},
		{"huge password", good(func(s *identity.Signup) { s.Password = strings.Repeat("p", 300) }), 400},
		{"control characters in name", good(func(s *identity.Signup) { s.TenantName = "Ac\x00me" }), 400},
		{"taken slug", good(func(s *identity.Signup) { s.Slug = "taken" }), 409},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := h.do("POST", "/api/v1/signup", "", tc.body)
			if r.status != tc.want || !strings.HasPrefix(r.header.Get("Content-Type"), apperr.ProblemContentType) {
				t.Fatalf("status %d %s: %s", r.status, r.header.Get("Content-Type"), r.body)
			}
			if strings.Contains(string(r.body), "SQLSTATE") || strings.Contains(string(r.body), "pgx") {
				t.Fatalf("leaks internals: %s", r.body)
			}
		})
	}
	if r := h.do("POST", "/api/v1/auth/login", "", identity.Credentials{Tenant: "taken", Email: "x", Password: strings.Repeat("p", 10000)}); r.status != 400 {
		t.Fatalf("huge login: %d %s", r.status, r.body)
	}
	if r := h.do("POST", "/api/v1/auth/token", "", identity.TokenGrant{GrantType: "password"}); r.status != 400 {
		t.Fatalf("unknown grant: %d %s", r.status, r.body)
	}
}

// TestJWKSAndRotation: the JWKS is cacheable and lists the signing key; an on-demand
// rotation switches signing to a new key while tokens of the old one stay valid.
func TestJWKSAndRotation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a := h.signup("rotate")
	jwks := func() map[string]bool {
		r := h.must(200, h.do("GET", auth.JWKSPath, "", nil))
		if !strings.Contains(r.header.Get("Cache-Control"), "max-age=") {
			t.Fatalf("Cache-Control %q", r.header.Get("Cache-Control"))
		}
		keys, err := auth.ParseJWKS(r.body)
		if err != nil {
			t.Fatal(err)
		}
		kids := map[string]bool{}
		for k := range keys {
			kids[k] = true
		}
		return kids
	}
	before := jwks()
	if len(before) != 1 {
		t.Fatalf("kids %v", before)
	}
	var rot identity.RotateResponse
	h.must(200, h.do("POST", "/api/v1/operator/signing-keys/rotate", h.operatorToken(), nil)).json(t, &rot)
	after := jwks()
	if len(after) != 2 || !after[rot.KID] {
		t.Fatalf("after rotation %v, new %s", after, rot.KID)
	}
	h.must(200, h.do("GET", "/api/v1/users/me", a.Access, nil)) // old key's token
	fresh := h.tokens(h.login(a.Slug, a.Email, defaultPassword))
	header, _, _ := strings.Cut(fresh.AccessToken, ".")
	var hdr struct {
		Kid string `json:"kid"`
		Alg string `json:"alg"`
	}
	b, _ := decodeSegment(header)
	_ = json.Unmarshal(b, &hdr)
	if hdr.Kid != rot.KID || hdr.Alg != "EdDSA" {
		t.Fatalf("new token header %+v, want kid %s", hdr, rot.KID)
	}
	h.must(200, h.do("GET", "/api/v1/users/me", fresh.AccessToken, nil))
	// Private key material is sealed at rest.
	var sealed []byte
	if err := h.env.Pool.QueryRow(context.Background(), `SELECT private_key FROM platform.signing_keys WHERE kid = $1`, rot.KID).Scan(&sealed); err != nil || len(sealed) != 12+32+16 {
		t.Fatalf("sealed key %d bytes (%v)", len(sealed), err)
	}
	// A wrong key-encryption key refuses to start rather than sign with garbage.
	wrong, _ := identity.NewKeys(postgres.New(h.env.DB), identity.KeysConfig{KEK: []byte(strings.Repeat("k", 32)), TokenLifetime: 11 * 60e9})
	if err := wrong.Ensure(context.Background()); err == nil {
		t.Fatal("keys opened with the wrong KEK")
	}
}

// TestOpenAPIMatchesRoutes: every operation in the document is served, and every served
// route is documented.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	var doc struct {
		OpenAPI string                    `json:"openapi"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	h.must(200, h.do("GET", identity.OpenAPIPath, "", nil)).json(t, &doc)
	if !strings.HasPrefix(doc.OpenAPI, "3.1") {
		t.Fatalf("openapi %q", doc.OpenAPI)
	}
	var documented []string
	for path, ops := range doc.Paths {
		for method := range ops {
			documented = append(documented, strings.ToUpper(method)+" "+path)
		}
	}
	served := h.mod.Patterns()
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("documented and served routes differ:\ndocumented %v\nserved     %v", documented, served)
	}
}
