package identity

import (
	"context"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/kitx"
	"streamspace.dev/libs/tenant"
	"streamspace.dev/tenants"
)

// Endpoints holds one go-kit endpoint per Service method.
type Endpoints struct {
	Signup                 endpoint.Endpoint
	Login                  endpoint.Endpoint
	Token                  endpoint.Endpoint
	Logout                 endpoint.Endpoint
	JWKS                   endpoint.Endpoint
	Me                     endpoint.Endpoint
	ListUsers              endpoint.Endpoint
	GetUser                endpoint.Endpoint
	CreateUser             endpoint.Endpoint
	UpdateUser             endpoint.Endpoint
	DeleteUser             endpoint.Endpoint
	CreateAPIToken         endpoint.Endpoint
	ListAPITokens          endpoint.Endpoint
	RevokeAPIToken         endpoint.Endpoint
	CreateEnrollmentToken  endpoint.Endpoint
	ListEnrollmentTokens   endpoint.Endpoint
	RevokeEnrollmentToken  endpoint.Endpoint
	ConsumeEnrollmentToken endpoint.Endpoint
	OperatorLogin          endpoint.Endpoint
	ListTenants            endpoint.Endpoint
	SuspendTenant          endpoint.Endpoint
	ResumeTenant           endpoint.Endpoint
	DeleteTenant           endpoint.Endpoint
	RotateSigningKey       endpoint.Endpoint
}

// Request and response types that are not domain types.
type (
	// Empty is the request of endpoints that take no input.
	Empty struct{}
	// LogoutRequest names the refresh token to revoke.
	LogoutRequest struct {
		RefreshToken string `json:"refresh_token"`
	}
	// ConsumeRequest carries a raw enrollment token.
	ConsumeRequest struct {
		Token string `json:"token"`
	}
	// UserRequest names a user.
	UserRequest struct{ ID UserID }
	// UpdateUserRequest names a user and the change.
	UpdateUserRequest struct {
		ID    UserID
		Patch UserPatch
	}
	// TokenRequest names a personal API or enrollment token.
	TokenRequest struct{ ID TokenID }
	// TenantRequest names a tenant; Confirm repeats its slug for deletion.
	TenantRequest struct {
		ID      tenant.ID
		Confirm string
	}
	// ListResponse wraps a list, leaving room for paging fields.
	ListResponse[T any] struct {
		Items []T `json:"items"`
	}
	// RotateResponse names the new signing key.
	RotateResponse struct {
		KID string `json:"kid"`
	}
	// JWKSDocument is a rendered JWK Set.
	JWKSDocument []byte
	// NoContent is the response of endpoints that answer 204.
	NoContent struct{}
)

// StatusCode implements kithttp.StatusCoder.
func (NoContent) StatusCode() int { return 204 }

// MakeEndpoints wraps each method of s; mw, applied to every endpoint in order, takes the
// endpoint's name (logging, metrics).
func MakeEndpoints(s Service, mw ...func(name string) endpoint.Middleware) Endpoints {
	wrap := func(name string, e endpoint.Endpoint) endpoint.Endpoint {
		for i := len(mw) - 1; i >= 0; i-- {
			e = mw[i](name)(e)
		}
		return e
	}
	noContent := func(err error) (NoContent, error) { return NoContent{}, err }
	return Endpoints{
		Signup: wrap("signup", kitx.Endpoint(func(ctx context.Context, r Signup) (SignupResult, error) { return s.Signup(ctx, r) })),
		Login:  wrap("login", kitx.Endpoint(func(ctx context.Context, r Credentials) (Tokens, error) { return s.Login(ctx, r) })),
		Token:  wrap("token", kitx.Endpoint(func(ctx context.Context, r TokenGrant) (Tokens, error) { return s.Token(ctx, r) })),
		Logout: wrap("logout", kitx.Endpoint(func(ctx context.Context, r LogoutRequest) (NoContent, error) {
			return noContent(s.Logout(ctx, r.RefreshToken))
		})),
		JWKS: wrap("jwks", kitx.Endpoint(func(ctx context.Context, _ Empty) (JWKSDocument, error) {
			b, err := s.JWKS(ctx)
			return JWKSDocument(b), err
		})),
		Me: wrap("me", kitx.Endpoint(func(ctx context.Context, _ Empty) (User, error) { return s.Me(ctx) })),
		ListUsers: wrap("list_users", kitx.Endpoint(func(ctx context.Context, _ Empty) (ListResponse[User], error) {
			u, err := s.ListUsers(ctx)
			return ListResponse[User]{Items: u}, err
		})),
		GetUser:    wrap("get_user", kitx.Endpoint(func(ctx context.Context, r UserRequest) (User, error) { return s.GetUser(ctx, r.ID) })),
		CreateUser: wrap("create_user", kitx.Endpoint(func(ctx context.Context, r NewUser) (User, error) { return s.CreateUser(ctx, r) })),
		UpdateUser: wrap("update_user", kitx.Endpoint(func(ctx context.Context, r UpdateUserRequest) (User, error) {
			return s.UpdateUser(ctx, r.ID, r.Patch)
		})),
		DeleteUser: wrap("delete_user", kitx.Endpoint(func(ctx context.Context, r UserRequest) (NoContent, error) {
			return noContent(s.DeleteUser(ctx, r.ID))
		})),
		CreateAPIToken: wrap("create_api_token", kitx.Endpoint(func(ctx context.Context, r NewAPIToken) (CreatedAPIToken, error) {
			return s.CreateAPIToken(ctx, r)
		})),
		ListAPITokens: wrap("list_api_tokens", kitx.Endpoint(func(ctx context.Context, _ Empty) (ListResponse[APIToken], error) {
			t, err := s.ListAPITokens(ctx)
			return ListResponse[APIToken]{Items: t}, err
		})),
		RevokeAPIToken: wrap("revoke_api_token", kitx.Endpoint(func(ctx context.Context, r TokenRequest) (NoContent, error) {
			return noContent(s.RevokeAPIToken(ctx, r.ID))
		})),
		CreateEnrollmentToken: wrap("create_enrollment_token", kitx.Endpoint(func(ctx context.Context, r NewEnrollmentToken) (CreatedEnrollmentToken, error) {
			return s.CreateEnrollmentToken(ctx, r)
		})),
		ListEnrollmentTokens: wrap("list_enrollment_tokens", kitx.Endpoint(func(ctx context.Context, _ Empty) (ListResponse[EnrollmentToken], error) {
			t, err := s.ListEnrollmentTokens(ctx)
			return ListResponse[EnrollmentToken]{Items: t}, err
		})),
		RevokeEnrollmentToken: wrap("revoke_enrollment_token", kitx.Endpoint(func(ctx context.Context, r TokenRequest) (NoContent, error) {
			return noContent(s.RevokeEnrollmentToken(ctx, r.ID))
		})),
		ConsumeEnrollmentToken: wrap("consume_enrollment_token", kitx.Endpoint(func(ctx context.Context, r ConsumeRequest) (Enrollment, error) {
			return s.ConsumeEnrollmentToken(ctx, r.Token)
		})),
		OperatorLogin: wrap("operator_login", kitx.Endpoint(func(ctx context.Context, r OperatorCredentials) (Tokens, error) {
			return s.OperatorLogin(ctx, r)
		})),
		ListTenants: wrap("list_tenants", kitx.Endpoint(func(ctx context.Context, _ Empty) (ListResponse[tenants.Tenant], error) {
			t, err := s.ListTenants(ctx)
			return ListResponse[tenants.Tenant]{Items: t}, err
		})),
		SuspendTenant: wrap("suspend_tenant", kitx.Endpoint(func(ctx context.Context, r TenantRequest) (NoContent, error) {
			return noContent(s.SetTenantStatus(ctx, r.ID, tenants.Suspended))
		})),
		ResumeTenant: wrap("resume_tenant", kitx.Endpoint(func(ctx context.Context, r TenantRequest) (NoContent, error) {
			return noContent(s.SetTenantStatus(ctx, r.ID, tenants.Active))
		})),
		DeleteTenant: wrap("delete_tenant", kitx.Endpoint(func(ctx context.Context, r TenantRequest) (NoContent, error) {
			return noContent(s.DeleteTenant(ctx, r.ID, r.Confirm))
		})),
		RotateSigningKey: wrap("rotate_signing_key", kitx.Endpoint(func(ctx context.Context, _ Empty) (RotateResponse, error) {
			kid, err := s.RotateSigningKey(ctx)
			return RotateResponse{KID: kid}, err
		})),
	}
}
