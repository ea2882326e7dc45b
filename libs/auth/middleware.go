package auth

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/go-kit/kit/endpoint"

	"streamspace.dev/libs/apperr"
)

// Values of WWW-Authenticate (RFC 6750 §3). A request without credentials gets no error
// code, so apperr's default challenge serves it.
const (
	challengeInvalidRequest = `Bearer realm="streamspace", error="invalid_request"`
	challengeInvalidToken   = `Bearer realm="streamspace", error="invalid_token"`
)

var (
	errNoCredentials  = errors.New("no Authorization header")
	errManyHeaders    = errors.New("more than one Authorization header")
	errNotBearer      = errors.New("the Authorization scheme is not Bearer")
	errMalformedToken = errors.New("the Authorization header does not hold one token")
)

// Middleware authenticates every request by its bearer token: a request without exactly
// one valid "Authorization: Bearer <jwt>" header gets a 401 problem+json with a
// WWW-Authenticate challenge; otherwise the handler runs with the principal in the
// request's context (see FromContext, Require).
func Middleware(v *Verifier) func(http.Handler) http.Handler {
	return middleware(v, false)
}

// Optional is Middleware for routes that serve anonymous callers too: a request without
// an Authorization header passes through with no principal, but one with a bad header or
// token is still refused — a caller who tried to authenticate and failed must find out.
func Optional(v *Verifier) func(http.Handler) http.Handler {
	return middleware(v, true)
}

func middleware(v *Verifier, optional bool) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			raw, challenge, err := bearer(r.Header)
			if errors.Is(err, errNoCredentials) && optional {
				next.ServeHTTP(w, r)
				return
			}
			if err == nil {
				var p Principal
				if p, err = v.Verify(r.Context(), raw); err == nil {
					next.ServeHTTP(w, r.WithContext(withPrincipal(r.Context(), p)))
					return
				}
				challenge = challengeInvalidToken
			}
			if challenge != "" && apperr.CodeOf(err) == apperr.Unauthenticated {
				w.Header().Set("WWW-Authenticate", challenge)
			}
			apperr.WriteHTTP(w, r.URL.Path, err)
		})
	}
}

// bearer extracts the token of the request's one Authorization header, or says what is
// wrong with the header and which challenge to answer with ("" for apperr's default).
func bearer(h http.Header) (token, challenge string, err error) {
	vals := h.Values("Authorization")
	switch {
	case len(vals) == 0:
		return "", "", apperr.Wrap(errNoCredentials, apperr.Unauthenticated, "authentication required")
	case len(vals) > 1:
		// Two headers may be read differently by a proxy and by us; refuse to guess.
		return "", challengeInvalidRequest, apperr.Wrap(errManyHeaders, apperr.Unauthenticated, "send exactly one Authorization header")
	}
	scheme, rest, _ := strings.Cut(vals[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		return "", "", apperr.Wrap(errNotBearer, apperr.Unauthenticated, "authentication requires a Bearer token")
	}
	token = strings.TrimLeft(rest, " ")
	if token == "" || strings.ContainsAny(token, " \t,") {
		return "", challengeInvalidRequest, apperr.Wrap(errMalformedToken, apperr.Unauthenticated, "malformed Authorization header")
	}
	return token, "", nil
}

// EndpointRequireRole is RequireRole as go-kit endpoint middleware: the endpoint runs only
// for a user of at least role min (or a system actor).
func EndpointRequireRole(min Role) endpoint.Middleware {
	return guard(func(ctx context.Context) error {
		_, err := RequireRole(ctx, min)
		return err
	})
}

// EndpointRequireScope is RequireScope as go-kit endpoint middleware.
func EndpointRequireScope(scope string) endpoint.Middleware {
	return guard(func(ctx context.Context) error {
		_, err := RequireScope(ctx, scope)
		return err
	})
}

// EndpointRequireOperator is RequireOperator as go-kit endpoint middleware; anyone else
// gets not_found, as if the route did not exist.
func EndpointRequireOperator() endpoint.Middleware {
	return guard(func(ctx context.Context) error {
		_, err := RequireOperator(ctx)
		return err
	})
}

func guard(check func(context.Context) error) endpoint.Middleware {
	return func(next endpoint.Endpoint) endpoint.Endpoint {
		return func(ctx context.Context, request any) (any, error) {
			if err := check(ctx); err != nil {
				return nil, err
			}
			return next(ctx, request)
		}
	}
}
