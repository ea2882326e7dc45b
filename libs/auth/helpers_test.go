package auth_test

import (
	"crypto/ed25519"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/tenant"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// t0 is the fixed "now" of tests that need a clock.
var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

const testTenant tenant.ID = "abcdefghijkl"

// userClaims are valid claims of a member of testTenant at t0.
func userClaims() auth.Claims {
	return auth.Claims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer:    authtest.Issuer,
			Subject:   "user-1",
			Audience:  jwt.ClaimStrings{auth.DefaultAudience},
			IssuedAt:  jwt.NewNumericDate(t0),
			NotBefore: jwt.NewNumericDate(t0),
			ExpiresAt: jwt.NewNumericDate(t0.Add(10 * time.Minute)),
			ID:        "jti-1",
		},
		Tenant: string(testTenant),
		Role:   auth.RoleMember,
		Kind:   auth.KindUser,
	}
}

// clock is a settable clock for sources and verifiers. It starts at the real time, so
// that authtest's tokens are valid by it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newVerifier returns a verifier of keys with authtest's issuer and clock now.
func newVerifier(t testing.TB, keys auth.KeySource, now func() time.Time) *auth.Verifier {
	t.Helper()
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: keys, Issuer: authtest.Issuer, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// signRaw signs claims with any method and header, for tokens identity would never make.
func signRaw(t testing.TB, method jwt.SigningMethod, key any, header map[string]any, claims jwt.Claims) string {
	t.Helper()
	tok := jwt.NewWithClaims(method, claims)
	for k, v := range header {
		if v == nil {
			delete(tok.Header, k)
			continue
		}
		tok.Header[k] = v
	}
	raw, err := tok.SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// wantCode fails unless err carries code (or is nil when code is "").
func wantCode(t testing.TB, err error, code apperr.Code) {
	t.Helper()
	if got := apperr.CodeOf(err); got != code {
		t.Fatalf("error = %v (code %q), want code %q", err, got, code)
	}
}

// jwksServer is a real HTTP server publishing a JWKS that tests can change.
type jwksServer struct {
	*httptest.Server
	fetches atomic.Int32

	mu           sync.Mutex
	body         []byte
	status       int
	cacheControl string
	gate         chan struct{} // when set, each request waits for it to close
	entered      chan struct{} // when set, each request signals it arrived
}

func newJWKSServer(t testing.TB, keys map[string]ed25519.PublicKey) *jwksServer {
	t.Helper()
	s := &jwksServer{status: http.StatusOK}
	s.publish(t, keys)
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.fetches.Add(1)
		s.mu.Lock()
		body, status, cc, gate, entered := s.body, s.status, s.cacheControl, s.gate, s.entered
		s.mu.Unlock()
		if entered != nil {
			select {
			case entered <- struct{}{}:
			default:
			}
		}
		if gate != nil {
			<-gate
		}
		if r.URL.Path != auth.JWKSPath {
			http.NotFound(w, r)
			return
		}
		if cc != "" {
			w.Header().Set("Cache-Control", cc)
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.WriteHeader(status)
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) publish(t testing.TB, keys map[string]ed25519.PublicKey) {
	t.Helper()
	b, err := auth.MarshalJWKS(keys)
	if err != nil {
		t.Fatal(err)
	}
	s.set(func(s *jwksServer) { s.body = b })
}

func (s *jwksServer) set(f func(*jwksServer)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

// source returns a JWKSSource of the server with clock c.
func (s *jwksServer) source(t testing.TB, c *clock, opts ...auth.JWKSOption) *auth.JWKSSource {
	t.Helper()
	opts = append([]auth.JWKSOption{auth.WithHTTPClient(s.Client()), auth.WithClock(c.Now),
		auth.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	src, err := auth.NewJWKSSource(s.URL+auth.JWKSPath, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func keysOf(signers ...*authtest.Signer) map[string]ed25519.PublicKey {
	m := map[string]ed25519.PublicKey{}
	for _, s := range signers {
		m[s.Kid()] = s.PublicKey()
	}
	return m
}

func isUnknownKey(err error) bool { return errors.Is(err, auth.ErrUnknownKey) }
