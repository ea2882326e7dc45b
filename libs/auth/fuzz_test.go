package auth_test

import (
	"context"
	"crypto/ed25519"
	"maps"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
)

// FuzzVerify feeds Verify arbitrary strings, seeded with a valid token and near misses.
// It must never panic, and must accept nothing but the exact valid tokens it was seeded
// with: any other string is either not a token or a token whose signature cannot hold.
func FuzzVerify(f *testing.F) {
	s := authtest.NewSigner(f)
	valid := map[string]bool{}
	good := s.Sign(userClaims())
	valid[good] = true
	op := userClaims()
	op.Kind, op.Tenant = auth.KindOperator, ""
	valid[s.Sign(op)] = true
	for tok := range valid {
		f.Add(tok)
	}
	f.Add(signRaw(f, jwt.SigningMethodHS256, []byte(s.PublicKey()), map[string]any{"kid": s.Kid()}, userClaims()))
	f.Add(signRaw(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, map[string]any{"kid": s.Kid()}, userClaims()))
	f.Add(good[:len(good)-1])
	f.Add("")
	f.Add("..")
	f.Add("eyJhbGciOiJFZERTQSJ9.e30.")
	v := newVerifier(f, s.Keys(), func() time.Time { return t0 })
	f.Fuzz(func(t *testing.T, raw string) {
		p, err := v.Verify(context.Background(), raw)
		if err == nil && !valid[raw] {
			t.Fatalf("Verify accepted %q as %+v", raw, p)
		}
	})
}

// FuzzParseJWKS feeds ParseJWKS arbitrary documents. It must never panic; whatever it
// returns must be well-formed keys, and must survive a round trip through MarshalJWKS.
func FuzzParseJWKS(f *testing.F) {
	doc, err := auth.MarshalJWKS(map[string]ed25519.PublicKey{"a": pubA, "b": pubB})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(doc)
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"` + xA + `","d":"` + xB + `"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"},{"kty":"OKP","crv":"Ed25519","kid":"a","x":"` + xA + `"}]}`))
	f.Add([]byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"a","x":"` + xA[:10] + `"}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		keys, err := auth.ParseJWKS(data)
		if err != nil {
			if keys != nil {
				t.Fatalf("ParseJWKS returned keys %v with error %v", keys, err)
			}
			return
		}
		if len(keys) == 0 {
			t.Fatal("ParseJWKS returned no keys and no error")
		}
		for kid, k := range keys {
			if kid == "" || len(k) != ed25519.PublicKeySize {
				t.Fatalf("ParseJWKS returned malformed key %q: %x", kid, k)
			}
		}
		again, err := auth.MarshalJWKS(keys)
		if err != nil {
			t.Fatalf("MarshalJWKS of parsed keys: %v", err)
		}
		back, err := auth.ParseJWKS(again)
		if err != nil || !maps.EqualFunc(keys, back, func(a, b ed25519.PublicKey) bool { return a.Equal(b) }) {
			t.Fatalf("round trip: %v, %v; want %v", back, err, keys)
		}
	})
}
