package auth_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/auth/authtest"
)

var (
	pubA = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32)).Public().(ed25519.PublicKey)
	pubB = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{2}, 32)).Public().(ed25519.PublicKey)
	xA   = base64.RawURLEncoding.EncodeToString(pubA)
	xB   = base64.RawURLEncoding.EncodeToString(pubB)
)

func TestParseJWKS(t *testing.T) {
	t.Parallel()
	okp := func(kid, x, extra string) string {
		return `{"kty":"OKP","crv":"Ed25519","kid":"` + kid + `","x":"` + x + `"` + extra + `}`
	}
	doc := func(keys ...string) string { return `{"keys":[` + strings.Join(keys, ",") + `]}` }
	cases := []struct {
		name string
		doc  string
		want []string // kids parsed; nil means the document is an error
	}{
		{"one key", doc(okp("a", xA, `,"alg":"EdDSA","use":"sig"`)), []string{"a"}},
		{"two keys", doc(okp("a", xA, ""), okp("b", xB, "")), []string{"a", "b"}},
		{"RSA key skipped", doc(`{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}`, okp("a", xA, "")), []string{"a"}},
		{"EC key skipped", doc(`{"kty":"EC","crv":"P-256","kid":"e","x":"AA","y":"AA"}`, okp("a", xA, "")), []string{"a"}},
		{"X25519 skipped", doc(`{"kty":"OKP","crv":"X25519","kid":"x","x":"`+xB+`"}`, okp("a", xA, "")), []string{"a"}},
		{"encryption key skipped", doc(okp("b", xB, `,"use":"enc"`), okp("a", xA, "")), []string{"a"}},
		{"other alg skipped", doc(okp("b", xB, `,"alg":"ES256"`), okp("a", xA, "")), []string{"a"}},
		{"private d drops the key", doc(okp("b", xB, `,"d":"`+xA+`"`), okp("a", xA, "")), []string{"a"}},
		{"oct k drops an OKP key", doc(okp("b", xB, `,"k":"c2VjcmV0"`), okp("a", xA, "")), []string{"a"}},
		{"only a private key", doc(okp("a", xA, `,"d":"`+xB+`"`)), nil},
		{"31-byte key", doc(okp("b", xB[:41], ""), okp("a", xA, "")), []string{"a"}},
		{"33-byte key", doc(okp("b", base64.RawURLEncoding.EncodeToString(append(pubB, 0)), ""), okp("a", xA, "")), []string{"a"}},
		{"padded x", doc(okp("b", base64.URLEncoding.EncodeToString(pubB[:31]), ""), okp("a", xA, "")), []string{"a"}},
		{"standard base64 x", doc(okp("b", strings.ReplaceAll(strings.ReplaceAll(xB, "-", "+"), "_", "/")+"+/", ""), okp("a", xA, "")), []string{"a"}},
		{"x not a string", doc(`{"kty":"OKP","crv":"Ed25519","kid":"b","x":7}`, okp("a", xA, "")), []string{"a"}},
		{"no kid", doc(`{"kty":"OKP","crv":"Ed25519","x":"`+xB+`"}`, okp("a", xA, "")), []string{"a"}},
		{"member names are case-sensitive", doc(`{"KTY":"OKP","crv":"Ed25519","kid":"b","x":"`+xB+`"}`, okp("a", xA, "")), []string{"a"}},
		{"duplicate kid drops both", doc(okp("a", xA, ""), okp("a", xB, ""), okp("b", xB, "")), []string{"b"}},
		{"key not an object", doc(`"a"`, okp("a", xA, "")), []string{"a"}},
		{"no usable key", doc(`{"kty":"RSA","kid":"r"}`), nil},
		{"empty set", `{"keys":[]}`, nil},
		{"no keys member", `{}`, nil},
		{"keys not an array", `{"keys":{}}`, nil},
		{"not JSON", `<html>`, nil},
		{"null", `null`, nil},
		{"too many keys", doc(slicesRepeat(`{"kty":"RSA"}`, 100) + "," + okp("a", xA, "")), nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			keys, err := auth.ParseJWKS([]byte(tc.doc))
			if tc.want == nil {
				if err == nil {
					t.Fatalf("ParseJWKS = %v, want an error", keys)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseJWKS error: %v", err)
			}
			if len(keys) != len(tc.want) {
				t.Fatalf("got kids %v, want %v", keys, tc.want)
			}
			for _, kid := range tc.want {
				if len(keys[kid]) != ed25519.PublicKeySize {
					t.Errorf("kid %q missing or malformed: %x", kid, keys[kid])
				}
			}
		})
	}
}

func slicesRepeat(s string, n int) string {
	return strings.TrimSuffix(strings.Repeat(s+",", n), ",")
}

func TestMarshalJWKS(t *testing.T) {
	t.Parallel()
	keys := map[string]ed25519.PublicKey{"b": pubB, "a": pubA}
	doc, err := auth.MarshalJWKS(keys)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"keys":[{"kty":"OKP","crv":"Ed25519","x":"` + xA + `","kid":"a","alg":"EdDSA","use":"sig"},` +
		`{"kty":"OKP","crv":"Ed25519","x":"` + xB + `","kid":"b","alg":"EdDSA","use":"sig"}]}`
	if string(doc) != want {
		t.Errorf("MarshalJWKS =\n%s\nwant\n%s", doc, want)
	}
	back, err := auth.ParseJWKS(doc)
	if err != nil || !pubA.Equal(back["a"]) || !pubB.Equal(back["b"]) || len(back) != 2 {
		t.Errorf("round trip = %v, %v", back, err)
	}
	for name, bad := range map[string]map[string]ed25519.PublicKey{
		"empty kid":   {"": pubA},
		"short key":   {"a": pubA[:31]},
		"nil key":     {"a": nil},
		"private key": {"a": ed25519.PublicKey(ed25519.NewKeyFromSeed(make([]byte, 32)))},
	} {
		if _, err := auth.MarshalJWKS(bad); err == nil {
			t.Errorf("MarshalJWKS(%s) succeeded", name)
		}
	}
}

func TestNewJWKSSourceConfig(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		url  string
		opts []auth.JWKSOption
		ok   bool
	}{
		{"https", "https://id.test/.well-known/jwks.json", nil, true},
		{"http", "http://identity:8080/.well-known/jwks.json", nil, true},
		{"relative", "/.well-known/jwks.json", nil, false},
		{"file", "file:///etc/jwks.json", nil, false},
		{"nil client", "https://id.test/", []auth.JWKSOption{auth.WithHTTPClient(nil)}, false},
		{"inverted bounds", "https://id.test/", []auth.JWKSOption{auth.WithRefreshBounds(time.Hour, time.Minute)}, false},
		{"refresh outside bounds", "https://id.test/", []auth.JWKSOption{auth.WithRefreshInterval(2 * time.Hour)}, false},
		{"zero timeout", "https://id.test/", []auth.JWKSOption{auth.WithFetchTimeout(0)}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			if _, err := auth.NewJWKSSource(tc.url, tc.opts...); (err == nil) != tc.ok {
				t.Errorf("NewJWKSSource error = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestJWKSSourceCaches(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a))
	src := srv.source(t, newClock())
	for range 5 {
		k, err := src.Key(context.Background(), a.Kid())
		if err != nil || !a.PublicKey().Equal(k) {
			t.Fatalf("Key = %x, %v", k, err)
		}
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("fetches = %d, want 1", n)
	}
}

// TestJWKSSourceUnknownKidRefetches covers rotation: a new kid appears, and the first token
// naming it makes the source fetch again, once.
func TestJWKSSourceUnknownKidRefetches(t *testing.T) {
	t.Parallel()
	a, b := authtest.NewSigner(t), authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a))
	c := newClock()
	v := newVerifier(t, srv.source(t, c), c.Now)
	ctx := context.Background()
	if _, err := v.Verify(ctx, a.Token(t, testTenant, "u", auth.RoleMember)); err != nil {
		t.Fatal(err)
	}
	srv.publish(t, keysOf(a, b))
	c.Advance(auth.DefaultMinRefetchInterval)
	for range 3 {
		if _, err := v.Verify(ctx, b.Token(t, testTenant, "u", auth.RoleMember)); err != nil {
			t.Fatalf("token of the new key: %v", err)
		}
		if _, err := v.Verify(ctx, a.Token(t, testTenant, "u", auth.RoleMember)); err != nil {
			t.Fatalf("token of the old key: %v", err)
		}
	}
	if n := srv.fetches.Load(); n != 2 {
		t.Errorf("fetches = %d, want 2", n)
	}
}

func TestJWKSSourceRefetchRateLimit(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a))
	c := newClock()
	src := srv.source(t, c)
	ctx := context.Background()
	if _, err := src.Key(ctx, a.Kid()); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		advance time.Duration
		fetches int32
	}{
		{0, 1},                     // just fetched: no refetch
		{9 * time.Second, 1},       // still inside the interval
		{time.Second, 2},           // 10 s after the last fetch
		{0, 2},                     //
		{5 * time.Second, 2},       //
		{5 * time.Second, 3},       //
		{10 * time.Millisecond, 3}, //
		{10 * time.Second, 4},      //
	}
	for i, st := range steps {
		c.Advance(st.advance)
		for range 10 {
			if _, err := src.Key(ctx, "made-up"); !isUnknownKey(err) {
				t.Fatalf("step %d: Key(made-up) error = %v, want ErrUnknownKey", i, err)
			}
		}
		if n := srv.fetches.Load(); n != st.fetches {
			t.Fatalf("step %d: fetches = %d, want %d", i, n, st.fetches)
		}
	}
}

// TestJWKSSourceBurst: a burst of verifications naming a kid the cache lacks shares one
// fetch, at cold start and after.
func TestJWKSSourceBurst(t *testing.T) {
	t.Parallel()
	for _, cold := range []bool{true, false} {
		name := map[bool]string{true: "cold", false: "warm"}[cold]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			a, b := authtest.NewSigner(t), authtest.NewSigner(t)
			srv := newJWKSServer(t, keysOf(a))
			c := newClock()
			v := newVerifier(t, srv.source(t, c), c.Now)
			want := int32(1)
			if !cold {
				if _, err := v.Verify(context.Background(), a.Token(t, testTenant, "u", auth.RoleMember)); err != nil {
					t.Fatal(err)
				}
				c.Advance(auth.DefaultMinRefetchInterval)
				want = 2
			}
			srv.publish(t, keysOf(a, b))
			gate, entered := make(chan struct{}), make(chan struct{}, 1)
			srv.set(func(s *jwksServer) { s.gate, s.entered = gate, entered })
			tok := b.Token(t, testTenant, "u", auth.RoleMember)

			var wg sync.WaitGroup
			errs := make(chan error, 100)
			for range 100 {
				wg.Go(func() {
					_, err := v.Verify(context.Background(), tok)
					errs <- err
				})
			}
			<-entered
			time.Sleep(20 * time.Millisecond) // let the rest of the burst pile up on the fetch
			close(gate)
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
			}
			if n := srv.fetches.Load(); n != want {
				t.Errorf("fetches = %d, want %d", n, want)
			}
		})
	}
}

// TestJWKSSourceKeepsKeysOnFailure: a refresh that fails, for whatever reason, leaves the
// cached keys in service.
func TestJWKSSourceKeepsKeysOnFailure(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	failures := []struct {
		name   string
		break_ func(s *jwksServer)
	}{
		{"500", func(s *jwksServer) { s.status = http.StatusInternalServerError }},
		{"404", func(s *jwksServer) { s.status = http.StatusNotFound }},
		{"not JSON", func(s *jwksServer) { s.body = []byte("<html>oops</html>") }},
		{"empty set", func(s *jwksServer) { s.body = []byte(`{"keys":[]}`) }},
		{"private key", func(s *jwksServer) {
			s.body = []byte(`{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"` + a.Kid() + `","x":"` + xA + `","d":"` + xB + `"}]}`)
		}},
		{"huge body", func(s *jwksServer) { s.body = append(bytes.Repeat([]byte(" "), auth.DefaultMaxJWKSBytes), s.body...) }},
	}
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newJWKSServer(t, keysOf(a))
			c := newClock()
			src := srv.source(t, c)
			v := newVerifier(t, src, c.Now)
			tok := a.Token(t, testTenant, "u", auth.RoleMember)
			ctx := context.Background()
			if _, err := v.Verify(ctx, tok); err != nil {
				t.Fatal(err)
			}
			srv.set(tc.break_)
			c.Advance(auth.DefaultRefreshInterval)
			// Due for a refresh: served from the cache while the refresh runs (and fails).
			if _, err := v.Verify(ctx, tok); err != nil {
				t.Fatalf("Verify during the failing refresh: %v", err)
			}
			src.Settle()
			if n := srv.fetches.Load(); n != 2 {
				t.Fatalf("fetches = %d, want 2", n)
			}
			// An unknown kid forces a fetch, which fails too: still unknown, old key intact.
			c.Advance(auth.DefaultMinRefetchInterval)
			_, err := v.Verify(ctx, authtest.NewSigner(t).Token(t, testTenant, "u", auth.RoleMember))
			wantCode(t, err, apperr.Unauthenticated)
			if n := srv.fetches.Load(); n != 3 {
				t.Errorf("fetches = %d, want 3", n)
			}
			if _, err := v.Verify(ctx, tok); err != nil {
				t.Fatalf("Verify after failed refreshes: %v", err)
			}
		})
	}
}

// TestJWKSSourceHostileDocuments: what a hostile or broken JWKS endpoint serves at cold
// start never yields a key for the kid it abuses.
func TestJWKSSourceHostileDocuments(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	good := `{"kty":"OKP","crv":"Ed25519","kid":"good","x":"` + xB + `"}`
	cases := []struct {
		name      string
		body      string
		goodKnown bool // whether kid "good" should still be served
	}{
		{"private d member", `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"` + a.Kid() + `","x":"` +
			base64.RawURLEncoding.EncodeToString(a.PublicKey()) + `","d":"` +
			base64.RawURLEncoding.EncodeToString(a.PrivateKey().Seed()) + `"},` + good + `]}`, true},
		{"short key", `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"` + a.Kid() + `","x":"` + xA[:20] + `"},` + good + `]}`, true},
		{"long key", `{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"` + a.Kid() + `","x":"` + xA + xA + `"},` + good + `]}`, true},
		{"huge body", `{"keys":[` + good + `],"pad":"` + strings.Repeat("x", auth.DefaultMaxJWKSBytes) + `"}`, false},
		{"endless body", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := newJWKSServer(t, nil)
			srv.set(func(s *jwksServer) { s.body = []byte(tc.body) })
			if tc.body == "" {
				srv.set(func(s *jwksServer) { s.body = bytes.Repeat([]byte("["), 4<<20) })
			}
			src := srv.source(t, newClock())
			ctx := context.Background()
			if k, err := src.Key(ctx, a.Kid()); err == nil {
				t.Fatalf("Key(abused kid) = %x, want an error", k)
			}
			k, err := src.Key(ctx, "good")
			if tc.goodKnown != (err == nil) {
				t.Fatalf("Key(good) = %x, %v; want known=%v", k, err, tc.goodKnown)
			}
			// A document that yields nothing is a failed fetch, not a set without this
			// kid: the verifier says so with 503, and a token of the abused kid never passes.
			_, err = newVerifier(t, src, nil).Verify(ctx, a.Token(t, testTenant, "u", auth.RoleMember))
			if err == nil {
				t.Fatal("Verify accepted a token of the abused kid")
			}
		})
	}
}

func TestJWKSSourceRotationRemovesKeys(t *testing.T) {
	t.Parallel()
	a, b := authtest.NewSigner(t), authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a, b))
	c := newClock()
	src := srv.source(t, c)
	ctx := context.Background()
	if _, err := src.Key(ctx, a.Kid()); err != nil {
		t.Fatal(err)
	}
	srv.publish(t, keysOf(b))
	c.Advance(auth.DefaultRefreshInterval)
	if _, err := src.Key(ctx, a.Kid()); err != nil {
		t.Fatalf("stale key during refresh: %v", err)
	}
	src.Settle()
	if _, err := src.Key(ctx, a.Kid()); !isUnknownKey(err) {
		t.Fatalf("Key(withdrawn kid) error = %v, want ErrUnknownKey", err)
	}
	if _, err := src.Key(ctx, b.Kid()); err != nil {
		t.Fatal(err)
	}
}

func TestJWKSSourceCacheControl(t *testing.T) {
	t.Parallel()
	cases := []struct {
		header string
		ttl    time.Duration // how long the set is fresh
	}{
		{"", auth.DefaultRefreshInterval},
		{"public, max-age=120", 120 * time.Second},
		{"max-age=\"600\", must-revalidate", 600 * time.Second},
		{"max-age=1", auth.DefaultMinRefresh},
		{"max-age=99999999999999", auth.DefaultMaxRefresh},
		{"max-age=-5", auth.DefaultRefreshInterval},
		{"max-age=soon", auth.DefaultRefreshInterval},
		{"no-store", auth.DefaultMinRefresh},
		{"no-cache, max-age=600", auth.DefaultMinRefresh},
	}
	for _, tc := range cases {
		t.Run(tc.header, func(t *testing.T) {
			t.Parallel()
			a := authtest.NewSigner(t)
			srv := newJWKSServer(t, keysOf(a))
			srv.set(func(s *jwksServer) { s.cacheControl = tc.header })
			c := newClock()
			src := srv.source(t, c)
			ctx := context.Background()
			if _, err := src.Key(ctx, a.Kid()); err != nil {
				t.Fatal(err)
			}
			c.Advance(tc.ttl - time.Second)
			if _, err := src.Key(ctx, a.Kid()); err != nil {
				t.Fatal(err)
			}
			if n := srv.fetches.Load(); n != 1 {
				t.Fatalf("fetched again %v before the set went stale", time.Second)
			}
			c.Advance(time.Second)
			if _, err := src.Key(ctx, a.Kid()); err != nil {
				t.Fatal(err)
			}
			src.Settle()
			if n := srv.fetches.Load(); n != 2 {
				t.Fatalf("fetches = %d, want 2 once stale", n)
			}
		})
	}
}

// TestJWKSSourceCallerGivesUp: a caller whose context ends stops waiting, but the shared
// fetch completes for everyone else.
func TestJWKSSourceCallerGivesUp(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a))
	gate, entered := make(chan struct{}), make(chan struct{}, 1)
	srv.set(func(s *jwksServer) { s.gate, s.entered = gate, entered })
	src := srv.source(t, newClock())

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() {
		_, err := src.Key(ctx, a.Kid())
		done <- err
	}()
	<-entered
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Key error = %v, want context.Canceled", err)
	}
	close(gate)
	src.Settle()
	if _, err := src.Key(context.Background(), a.Kid()); err != nil {
		t.Fatalf("Key after the shared fetch: %v", err)
	}
	if n := srv.fetches.Load(); n != 1 {
		t.Errorf("fetches = %d, want 1", n)
	}
}

func TestJWKSSourceColdFailure(t *testing.T) {
	t.Parallel()
	a := authtest.NewSigner(t)
	srv := newJWKSServer(t, keysOf(a))
	srv.set(func(s *jwksServer) { s.status = http.StatusServiceUnavailable })
	c := newClock()
	src := srv.source(t, c)
	v := newVerifier(t, src, c.Now)
	tok := a.Token(t, testTenant, "u", auth.RoleMember)
	_, err := v.Verify(context.Background(), tok)
	wantCode(t, err, apperr.Unavailable)
	// Retried no sooner than the refetch interval, then recovers.
	_, err = v.Verify(context.Background(), tok)
	wantCode(t, err, apperr.Unavailable)
	if n := srv.fetches.Load(); n != 1 {
		t.Fatalf("fetches = %d, want 1", n)
	}
	srv.set(func(s *jwksServer) { s.status = http.StatusOK })
	c.Advance(auth.DefaultMinRefetchInterval)
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("Verify after recovery: %v", err)
	}
}

func TestStaticKeysAndKeyFunc(t *testing.T) {
	t.Parallel()
	keys := map[string]ed25519.PublicKey{"a": pubA}
	src := auth.StaticKeys(keys)
	keys["a"] = pubB // the source must not see later changes
	ctx := context.Background()
	if k, err := src.Key(ctx, "a"); err != nil || !pubA.Equal(k) {
		t.Errorf("StaticKeys Key(a) = %x, %v", k, err)
	}
	if _, err := src.Key(ctx, "b"); !isUnknownKey(err) {
		t.Errorf("StaticKeys Key(b) error = %v, want ErrUnknownKey", err)
	}
	var asked string
	f := auth.KeyFunc(func(_ context.Context, kid string) (ed25519.PublicKey, error) {
		asked = kid
		return pubB, nil
	})
	if k, err := f.Key(ctx, "x"); err != nil || !pubB.Equal(k) || asked != "x" {
		t.Errorf("KeyFunc Key(x) = %x, %v (asked %q)", k, err, asked)
	}
}
