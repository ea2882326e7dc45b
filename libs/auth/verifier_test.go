package auth_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
	"streamspace.dev/libs/tenant"
)

func TestVerify(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	other := authtest.NewSigner(t)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	with := func(f func(c *auth.Claims)) auth.Claims {
		c := userClaims()
		f(&c)
		return c
	}
	kid := map[string]any{"kid": s.Kid()}
	parts := func(tok string) []string { return strings.Split(tok, ".") }
	b64 := base64.RawURLEncoding.EncodeToString

	cases := []struct {
		name  string
		token func() string
		code  apperr.Code // "" means accepted
		want  auth.Principal
	}{
		{name: "good user token", token: func() string { return s.Sign(userClaims()) },
			want: auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "user-1", Role: auth.RoleMember, TokenID: "jti-1"}},
		{name: "good scoped token", token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Role, c.Scopes = auth.RoleAdmin, []string{"sessions:read"} }))
		}, want: auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "user-1", Role: auth.RoleAdmin,
			Scopes: []string{"sessions:read"}, TokenID: "jti-1"}},
		{name: "good operator token, role dropped", token: func() string {
			return s.Sign(with(func(c *auth.Claims) {
				c.Kind, c.Tenant, c.Subject, c.Role = auth.KindOperator, "", "op-1", auth.RoleOwner
			}))
		}, want: auth.Principal{Kind: auth.KindOperator, Subject: "op-1", TokenID: "jti-1"}},
		{name: "audience among several", token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Audience = jwt.ClaimStrings{"other", auth.DefaultAudience} }))
		}, want: auth.Principal{Kind: auth.KindUser, Tenant: testTenant, Subject: "user-1", Role: auth.RoleMember, TokenID: "jti-1"}},

		{name: "alg none", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, kid, userClaims())
		}},
		{name: "HS256 keyed with the public key", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodHS256, []byte(s.PublicKey()), kid, userClaims())
		}},
		{name: "HS256 keyed with the JWK x", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodHS256, []byte(b64(s.PublicKey())), kid, userClaims())
		}},
		{name: "RS256", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodRS256, rsaKey, kid, userClaims())
		}},
		{name: "ES256", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodES256, ecKey, kid, userClaims())
		}},
		{name: "expired", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) {
				c.IssuedAt, c.NotBefore = jwt.NewNumericDate(t0.Add(-time.Hour)), jwt.NewNumericDate(t0.Add(-time.Hour))
				c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Minute))
			}))
		}},
		{name: "no exp", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.ExpiresAt = nil }))
		}},
		{name: "nbf in the future", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(time.Minute)) }))
		}},
		{name: "iat in the future", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(time.Minute)) }))
		}},
		{name: "wrong iss", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Issuer = "https://evil.test" }))
		}},
		{name: "no iss", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Issuer = "" }))
		}},
		{name: "wrong aud", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Audience = jwt.ClaimStrings{"streamspace-admin"} }))
		}},
		{name: "no aud", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Audience = nil }))
		}},
		{name: "unknown kid", code: apperr.Unauthenticated, token: func() string { return other.Sign(userClaims()) }},
		{name: "missing kid", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodEdDSA, s.PrivateKey(), nil, userClaims())
		}},
		{name: "kid not a string", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodEdDSA, s.PrivateKey(), map[string]any{"kid": 7}, userClaims())
		}},
		{name: "crit header", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodEdDSA, s.PrivateKey(), map[string]any{"kid": s.Kid(), "crit": []string{"exp"}}, userClaims())
		}},
		{name: "other key under our kid", code: apperr.Unauthenticated, token: func() string {
			return signRaw(t, jwt.SigningMethodEdDSA, other.PrivateKey(), kid, userClaims())
		}},
		{name: "embedded jwk header is ignored", code: apperr.Unauthenticated, token: func() string {
			jwk := map[string]any{"kty": "OKP", "crv": "Ed25519", "x": b64(other.PublicKey())}
			return signRaw(t, jwt.SigningMethodEdDSA, other.PrivateKey(), map[string]any{"kid": s.Kid(), "jwk": jwk}, userClaims())
		}},
		{name: "payload under another token's signature", code: apperr.Unauthenticated, token: func() string {
			member := parts(s.Sign(userClaims()))
			owner := parts(s.Sign(with(func(c *auth.Claims) { c.Role = auth.RoleOwner })))
			return member[0] + "." + owner[1] + "." + member[2]
		}},
		{name: "signature stripped", code: apperr.Unauthenticated, token: func() string {
			p := parts(s.Sign(userClaims()))
			return p[0] + "." + p[1] + "."
		}},
		{name: "signature truncated", code: apperr.Unauthenticated, token: func() string {
			tok := s.Sign(userClaims())
			return tok[:len(tok)-4]
		}},
		{name: "padded signature", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(userClaims()) + "=="
		}},
		{name: "two segments", code: apperr.Unauthenticated, token: func() string {
			p := parts(s.Sign(userClaims()))
			return p[0] + "." + p[1]
		}},
		{name: "four segments", code: apperr.Unauthenticated, token: func() string { return s.Sign(userClaims()) + ".x" }},
		{name: "garbage", code: apperr.Unauthenticated, token: func() string { return "not a token at all" }},
		{name: "garbage segments", code: apperr.Unauthenticated, token: func() string { return "eyJ.eyJ.sig" }},
		{name: "empty", code: apperr.Unauthenticated, token: func() string { return "" }},
		{name: "oversized, though validly signed", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Scopes = slices.Repeat([]string{"sessions:read"}, 700) }))
		}},
		{name: "operator with tid", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Kind = auth.KindOperator }))
		}},
		{name: "user without tid", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Tenant = "" }))
		}},
		{name: "user with malformed tid", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Tenant = "ABCDEFGHIJKL" }))
		}},
		{name: "bad role", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Role = "root" }))
		}},
		{name: "user without role", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Role = "" }))
		}},
		{name: "no knd", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Kind = "" }))
		}},
		{name: "knd agent", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Kind = auth.KindAgent }))
		}},
		{name: "knd system", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Kind = auth.KindSystem }))
		}},
		{name: "no sub", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Subject = "" }))
		}},
		{name: "empty scope", code: apperr.Unauthenticated, token: func() string {
			return s.Sign(with(func(c *auth.Claims) { c.Scopes = []string{"sessions:read", ""} }))
		}},
		{name: "explicitly empty scope list", code: apperr.Unauthenticated, token: func() string {
			hdr := b64([]byte(`{"alg":"EdDSA","kid":"` + s.Kid() + `","typ":"JWT"}`))
			body := b64([]byte(`{"iss":"` + authtest.Issuer + `","sub":"u","aud":"` + auth.DefaultAudience +
				`","exp":` + strconv.FormatInt(t0.Add(time.Minute).Unix(), 10) + `,"tid":"` + string(testTenant) + `","role":"owner","knd":"user","scp":[]}`))
			sig := ed25519.Sign(s.PrivateKey(), []byte(hdr+"."+body))
			return hdr + "." + body + "." + b64(sig)
		}},
	}
	v := newVerifier(t, s.Keys(), func() time.Time { return t0 })
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			raw := tc.token()
			p, err := v.Verify(context.Background(), raw)
			wantCode(t, err, tc.code)
			if tc.code != "" {
				t.Logf("cause: %v", err)
				if p.Kind != "" || p.Subject != "" || p.Tenant != "" {
					t.Errorf("rejected token still yielded principal %+v", p)
				}
				e, _ := apperr.As(err)
				if len(raw) > 16 && (strings.Contains(e.Message, raw[len(raw)-16:]) || strings.Contains(err.Error(), raw[len(raw)-16:])) {
					t.Errorf("error %q echoes the token", err)
				}
				if e.Message != "invalid token" && e.Message != "token expired" && e.Message != "authentication required" {
					t.Errorf("message %q is not one of the short safe messages", e.Message)
				}
				return
			}
			if !principalEqual(p, tc.want) {
				t.Errorf("principal = %+v, want %+v", p, tc.want)
			}
		})
	}
}

func principalEqual(a, b auth.Principal) bool {
	return a.Kind == b.Kind && a.Tenant == b.Tenant && a.Subject == b.Subject && a.Role == b.Role &&
		slices.Equal(a.Scopes, b.Scopes) && a.TokenID == b.TokenID
}

// TestVerifyLeeway pins the skew tolerance at its edges: exp is good while now < exp+leeway;
// nbf and iat are good while now >= t-leeway.
func TestVerifyLeeway(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	sec := time.Second
	cases := []struct {
		name   string
		leeway time.Duration // configured
		claims func(c *auth.Claims)
		ok     bool
	}{
		{"default 30s: exp 29s ago", 0, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-29 * sec)) }, true},
		{"default 30s: exp 30s ago", 0, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-30 * sec)) }, false},
		{"default 30s: nbf in 30s", 0, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(30 * sec)) }, true},
		{"default 30s: nbf in 31s", 0, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(31 * sec)) }, false},
		{"default 30s: iat in 30s", 0, func(c *auth.Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(30 * sec)) }, true},
		{"default 30s: iat in 31s", 0, func(c *auth.Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(31 * sec)) }, false},
		{"5s: nbf in 5s", 5 * sec, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(5 * sec)) }, true},
		{"5s: nbf in 6s", 5 * sec, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(6 * sec)) }, false},
		{"5s: exp 4s ago", 5 * sec, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-4 * sec)) }, true},
		{"5s: exp 5s ago", 5 * sec, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-5 * sec)) }, false},
		{"10m capped to 60s: nbf in 60s", 10 * time.Minute, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(60 * sec)) }, true},
		{"10m capped to 60s: nbf in 61s", 10 * time.Minute, func(c *auth.Claims) { c.NotBefore = jwt.NewNumericDate(t0.Add(61 * sec)) }, false},
		{"10m capped to 60s: exp 59s ago", 10 * time.Minute, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-59 * sec)) }, true},
		{"10m capped to 60s: exp 60s ago", 10 * time.Minute, func(c *auth.Claims) { c.ExpiresAt = jwt.NewNumericDate(t0.Add(-60 * sec)) }, false},
		{"10m capped to 60s: iat in 61s", 10 * time.Minute, func(c *auth.Claims) { c.IssuedAt = jwt.NewNumericDate(t0.Add(61 * sec)) }, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := userClaims()
			c.IssuedAt, c.NotBefore = jwt.NewNumericDate(t0.Add(-time.Hour)), jwt.NewNumericDate(t0.Add(-time.Hour))
			tc.claims(&c)
			v, err := auth.NewVerifier(auth.VerifierConfig{Keys: s.Keys(), Issuer: authtest.Issuer, Leeway: tc.leeway,
				Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.Verify(context.Background(), s.Sign(c))
			if (err == nil) != tc.ok {
				t.Errorf("Verify error = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestVerifyExpiredMessage(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	c := userClaims()
	c.ExpiresAt = jwt.NewNumericDate(t0.Add(-time.Hour))
	_, err := newVerifier(t, s.Keys(), func() time.Time { return t0 }).Verify(context.Background(), s.Sign(c))
	e, ok := apperr.As(err)
	if !ok || e.Code != apperr.Unauthenticated || e.Message != "token expired" || !errors.Is(err, jwt.ErrTokenExpired) {
		t.Errorf("error = %v, want unauthenticated \"token expired\" caused by jwt.ErrTokenExpired", err)
	}
}

// TestVerifyKeysUnavailable: when keys cannot be had at all, the answer is 503, not 401,
// so clients retry instead of throwing away a token that may be good.
func TestVerifyKeysUnavailable(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	keys := auth.KeyFunc(func(context.Context, string) (ed25519.PublicKey, error) {
		return nil, errors.New("identity is down")
	})
	_, err := newVerifier(t, keys, nil).Verify(context.Background(), s.Token(t, testTenant, "u", auth.RoleOwner))
	wantCode(t, err, apperr.Unavailable)
	if e, _ := apperr.As(err); e.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", e.RetryAfter)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	t.Parallel()
	keys := authtest.NewSigner(t).Keys()
	cases := []struct {
		name string
		cfg  auth.VerifierConfig
		ok   bool
	}{
		{"complete", auth.VerifierConfig{Keys: keys, Issuer: "https://id.test"}, true},
		{"no keys", auth.VerifierConfig{Issuer: "https://id.test"}, false},
		{"no issuer", auth.VerifierConfig{Keys: keys}, false},
		{"negative leeway", auth.VerifierConfig{Keys: keys, Issuer: "https://id.test", Leeway: -time.Second}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := auth.NewVerifier(tc.cfg); (err == nil) != tc.ok {
				t.Errorf("NewVerifier error = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

// TestVerifyAuthtestTokens: the helpers' tokens are what services' tests will lean on.
func TestVerifyAuthtestTokens(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	v := s.Verifier(t)
	p, err := v.Verify(context.Background(), s.Token(t, tenant.ID("zzzzzzzzzzzz"), "alice", auth.RoleAdmin))
	if err != nil || p.Kind != auth.KindUser || p.Tenant != "zzzzzzzzzzzz" || p.Subject != "alice" || p.Role != auth.RoleAdmin || p.TokenID == "" {
		t.Errorf("Verify(Token) = %+v, %v", p, err)
	}
	p, err = v.Verify(context.Background(), s.OperatorToken(t, "bob"))
	if err != nil || p.Kind != auth.KindOperator || p.Tenant != "" || p.Subject != "bob" {
		t.Errorf("Verify(OperatorToken) = %+v, %v", p, err)
	}
}

// TestVerifyRemembers: a token accepted once is accepted again without its signature
// being checked, but only while the key source still returns the key that verified it
// and only until it expires; a changed kid mapping, a withdrawn key or expiry each send it
// back through the full check, which refuses it as before.
func TestVerifyRemembers(t *testing.T) {
	t.Parallel()
	s := authtest.NewSigner(t)
	other := authtest.NewSigner(t)
	var (
		mu  sync.Mutex
		key = s.PublicKey()
	)
	keys := auth.KeyFunc(func(_ context.Context, kid string) (ed25519.PublicKey, error) {
		mu.Lock()
		defer mu.Unlock()
		if kid != s.Kid() || key == nil {
			return nil, fmt.Errorf("%w: %s", auth.ErrUnknownKey, kid)
		}
		return key, nil
	})
	// setKey changes what the key source returns for the token's kid.
	setKey := func(k ed25519.PublicKey) {
		mu.Lock()
		key = k
		mu.Unlock()
	}
	c := newClock()
	c.t = t0
	v := newVerifier(t, keys, c.Now)
	claims := userClaims()
	claims.Scopes = []string{"sessions:read"}
	raw := s.Sign(claims)
	for i := range 3 {
		p, err := v.Verify(context.Background(), raw)
		if err != nil {
			t.Fatalf("verify %d: %v", i, err)
		}
		if p.Subject != "user-1" || p.Tenant != testTenant || len(p.Scopes) != 1 {
			t.Fatalf("verify %d: principal %+v", i, p)
		}
		p.Scopes[0] = "mutated" // must not reach the next caller
	}
	if n := auth.Remembered(v); n != 1 {
		t.Fatalf("the verifier remembers %d tokens, want 1", n)
	}
	if p, _ := v.Verify(context.Background(), raw); p.Scopes[0] != "sessions:read" {
		t.Fatalf("a caller's change reached the remembered principal: %v", p.Scopes)
	}
	// The kid now names another key: the remembered token is checked again and fails.
	setKey(other.PublicKey())
	_, err := v.Verify(context.Background(), raw)
	wantCode(t, err, apperr.Unauthenticated)
	// The right key again, then withdrawn.
	setKey(s.PublicKey())
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	setKey(nil)
	_, err = v.Verify(context.Background(), raw)
	wantCode(t, err, apperr.Unauthenticated)
	// Back, then expired (beyond the leeway): refused with the full check's message.
	setKey(s.PublicKey())
	if _, err := v.Verify(context.Background(), raw); err != nil {
		t.Fatal(err)
	}
	c.Advance(10*time.Minute + auth.DefaultLeeway + time.Second)
	_, err = v.Verify(context.Background(), raw)
	if e, ok := apperr.As(err); !ok || e.Message != "token expired" {
		t.Fatalf("an expired remembered token: %v, want \"token expired\"", err)
	}
	if n := auth.Remembered(v); n != 0 {
		t.Fatalf("the verifier still remembers %d tokens after they expired, want 0", n)
	}
}
