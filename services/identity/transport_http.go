package identity

import (
	"context"
	"log/slog"
	"net/http"

	"github.com/go-kit/kit/endpoint"
	kithttp "github.com/go-kit/kit/transport/http"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/clientaddr"
	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/tenant"
)

// maxBody bounds every JSON request body: identity's largest request is a sign-up.
const maxBody = 64 << 10

// JWKSMaxAge is how long verifiers may cache the JWKS. A scheduled key is published for
// longer than this before it signs (DefaultKeyPublishDelay), so caches learn it in time.
const JWKSMaxAge = 300

// OpenAPIPath serves identity's OpenAPI document.
const OpenAPIPath = "/api/v1/identity/openapi.json"

// Route is one served route: its ServeMux pattern and whether it needs a bearer token.
type Route struct {
	Pattern string
	Public  bool
	handler http.Handler
}

// Routes returns identity's routes over endpoints e. Public routes serve callers without
// a token (sign-up, sign-in, token grants, the JWKS, enrollment); every other route sits
// behind auth.Middleware with verifier v.
func Routes(e Endpoints, v *auth.Verifier, proxies clientaddr.Proxies, logger *slog.Logger) []Route {
	// The caller's address keys the throttles and the audit log.
	remoteAddr := func(ctx context.Context, r *http.Request) context.Context {
		return WithClientIP(ctx, proxies.Of(r))
	}
	opts := append(kitx.ServerOptions(logger), kithttp.ServerBefore(remoteAddr))
	json := func(ep endpoint.Endpoint, dec kithttp.DecodeRequestFunc, status int) http.Handler {
		return kithttp.NewServer(ep, dec, kitx.EncodeJSON(status), opts...)
	}
	authed := auth.Middleware(v)
	routes := []Route{
		{Pattern: "POST /api/v1/signup", Public: true, handler: json(e.Signup, kitx.DecodeJSON[Signup](maxBody), http.StatusCreated)},
		{Pattern: "POST /api/v1/auth/login", Public: true, handler: json(e.Login, kitx.DecodeJSON[Credentials](maxBody), http.StatusOK)},
		{Pattern: "POST /api/v1/auth/token", Public: true, handler: json(e.Token, kitx.DecodeJSON[TokenGrant](maxBody), http.StatusOK)},
		{Pattern: "POST /api/v1/auth/logout", Public: true, handler: json(e.Logout, kitx.DecodeJSON[LogoutRequest](maxBody), http.StatusNoContent)},
		{Pattern: "GET " + auth.JWKSPath, Public: true, handler: kithttp.NewServer(e.JWKS, decodeEmpty, encodeJWKS, opts...)},
		{Pattern: "GET " + OpenAPIPath, Public: true, handler: http.HandlerFunc(serveOpenAPI)},
		{Pattern: "POST /api/v1/agents/enroll/validate", Public: true, handler: json(e.ConsumeEnrollmentToken, kitx.DecodeJSON[ConsumeRequest](maxBody), http.StatusOK)},
		{Pattern: "POST /api/v1/operator/login", Public: true, handler: json(e.OperatorLogin, kitx.DecodeJSON[OperatorCredentials](maxBody), http.StatusOK)},

		{Pattern: "GET /api/v1/users/me", handler: json(e.Me, decodeEmpty, http.StatusOK)},
		{Pattern: "GET /api/v1/users", handler: json(e.ListUsers, decodeEmpty, http.StatusOK)},
		{Pattern: "POST /api/v1/users", handler: json(e.CreateUser, kitx.DecodeJSON[NewUser](maxBody), http.StatusCreated)},
		{Pattern: "GET /api/v1/users/{id}", handler: json(e.GetUser, decodeUser, http.StatusOK)},
		{Pattern: "PATCH /api/v1/users/{id}", handler: json(e.UpdateUser, decodeUpdateUser, http.StatusOK)},
		{Pattern: "DELETE /api/v1/users/{id}", handler: json(e.DeleteUser, decodeUser, http.StatusNoContent)},
		{Pattern: "GET /api/v1/tokens", handler: json(e.ListAPITokens, decodeEmpty, http.StatusOK)},
		{Pattern: "POST /api/v1/tokens", handler: json(e.CreateAPIToken, kitx.DecodeJSON[NewAPIToken](maxBody), http.StatusCreated)},
		{Pattern: "DELETE /api/v1/tokens/{id}", handler: json(e.RevokeAPIToken, decodeToken, http.StatusNoContent)},
		{Pattern: "GET /api/v1/enrollment-tokens", handler: json(e.ListEnrollmentTokens, decodeEmpty, http.StatusOK)},
		{Pattern: "POST /api/v1/enrollment-tokens", handler: json(e.CreateEnrollmentToken, kitx.DecodeJSON[NewEnrollmentToken](maxBody), http.StatusCreated)},
		{Pattern: "DELETE /api/v1/enrollment-tokens/{id}", handler: json(e.RevokeEnrollmentToken, decodeToken, http.StatusNoContent)},
		{Pattern: "GET /api/v1/operator/tenants", handler: json(e.ListTenants, decodeEmpty, http.StatusOK)},
		{Pattern: "POST /api/v1/operator/tenants/{id}/suspend", handler: json(e.SuspendTenant, decodeTenant, http.StatusNoContent)},
		{Pattern: "POST /api/v1/operator/tenants/{id}/resume", handler: json(e.ResumeTenant, decodeTenant, http.StatusNoContent)},
		{Pattern: "DELETE /api/v1/operator/tenants/{id}", handler: json(e.DeleteTenant, decodeTenant, http.StatusNoContent)},
		{Pattern: "POST /api/v1/operator/signing-keys/rotate", handler: json(e.RotateSigningKey, decodeEmpty, http.StatusOK)},
	}
	for i := range routes {
		if !routes[i].Public {
			routes[i].handler = authed(routes[i].handler)
		}
	}
	return routes
}

// Handler returns the route's handler.
func (r Route) Handler() http.Handler { return r.handler }

func decodeEmpty(context.Context, *http.Request) (any, error) { return Empty{}, nil }

func decodeUser(_ context.Context, r *http.Request) (any, error) {
	return UserRequest{ID: UserID(r.PathValue("id"))}, nil
}

func decodeToken(_ context.Context, r *http.Request) (any, error) {
	return TokenRequest{ID: TokenID(r.PathValue("id"))}, nil
}

func decodeUpdateUser(ctx context.Context, r *http.Request) (any, error) {
	p, err := kitx.DecodeJSON[UserPatch](maxBody)(ctx, r)
	if err != nil {
		return nil, err
	}
	return UpdateUserRequest{ID: UserID(r.PathValue("id")), Patch: p.(UserPatch)}, nil
}

func decodeTenant(_ context.Context, r *http.Request) (any, error) {
	id, err := tenant.ParseID(r.PathValue("id"))
	if err != nil {
		// Operators' routes answer a malformed id like an unknown one.
		return nil, apperr.New(apperr.NotFound, "tenant not found")
	}
	return TenantRequest{ID: id, Confirm: r.URL.Query().Get("confirm")}, nil
}

func encodeJWKS(_ context.Context, w http.ResponseWriter, resp any) error {
	doc, _ := resp.(JWKSDocument)
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(doc)
	return nil
}
