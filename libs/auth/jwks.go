package auth

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ErrUnknownKey is returned by a KeySource that has no key with the asked-for kid. The
// Verifier turns it into an unauthenticated error; any other KeySource error means the keys
// could not be had at all and becomes an unavailable error.
var ErrUnknownKey = errors.New("auth: unknown key id")

// KeySource finds the Ed25519 public key that verifies tokens carrying a kid.
type KeySource interface {
	// Key returns the key named kid, an error wrapping ErrUnknownKey when there is none,
	// or another error when the keys themselves are unavailable.
	Key(ctx context.Context, kid string) (ed25519.PublicKey, error)
}

// KeyFunc adapts a function to a KeySource, for a process that holds identity's key store
// itself (the all-in-one binary). It must return ErrUnknownKey for a kid it does not know.
type KeyFunc func(ctx context.Context, kid string) (ed25519.PublicKey, error)

// Key implements KeySource.
func (f KeyFunc) Key(ctx context.Context, kid string) (ed25519.PublicKey, error) { return f(ctx, kid) }

// StaticKeys returns a KeySource serving a fixed set of keys by kid. The map is copied.
func StaticKeys(keys map[string]ed25519.PublicKey) KeySource {
	m := make(map[string]ed25519.PublicKey, len(keys))
	for kid, k := range keys {
		m[kid] = slices.Clone(k)
	}
	return KeyFunc(func(_ context.Context, kid string) (ed25519.PublicKey, error) {
		if k, ok := m[kid]; ok {
			return k, nil
		}
		return nil, ErrUnknownKey
	})
}

// JWK is one public key of a JWKS (RFC 7517) in the only form StreamSpace uses: an OKP
// key on curve Ed25519 (RFC 8037).
type JWK struct {
	Kty string `json:"kty"`           // "OKP"
	Crv string `json:"crv"`           // "Ed25519"
	X   string `json:"x"`             // the public key, base64url without padding
	Kid string `json:"kid"`           // the key id tokens name in their header
	Alg string `json:"alg,omitempty"` // "EdDSA"
	Use string `json:"use,omitempty"` // "sig"
}

// JWKS is a JSON Web Key Set, as identity publishes it at JWKSPath.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// MarshalJWKS encodes public keys by kid as a JWKS document, in kid order so the document is
// stable. It fails on an empty kid or a key that is not 32 bytes long.
func MarshalJWKS(keys map[string]ed25519.PublicKey) ([]byte, error) {
	set := JWKS{Keys: make([]JWK, 0, len(keys))}
	for _, kid := range slices.Sorted(maps.Keys(keys)) {
		k := keys[kid]
		if kid == "" {
			return nil, errors.New("auth: marshalling JWKS: empty kid")
		}
		if len(k) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("auth: marshalling JWKS: key %q is %d bytes, want %d", kid, len(k), ed25519.PublicKeySize)
		}
		set.Keys = append(set.Keys, JWK{Kty: "OKP", Crv: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k),
			Kid: kid, Alg: Algorithm, Use: "sig"})
	}
	return json.Marshal(set)
}

// maxJWKSKeys bounds how many keys one document may list; identity publishes two or three.
const maxJWKSKeys = 100

// privateMembers are the JWK members that carry private or symmetric key material (RFC
// 7518 §6, RFC 8037 §2). A published key holding one is a leak, not a verification key.
var privateMembers = []string{"d", "p", "q", "dp", "dq", "qi", "oth", "k"}

// ParseJWKS decodes a JWKS document into Ed25519 public keys by kid.
//
// Keys of another type or curve, or meant for another use or algorithm, are skipped: a
// JWKS may legitimately list them. A key that claims to be Ed25519 but is malformed
// (bad base64url, not 32 bytes, no kid) or carries private members is dropped whole, as is
// every key of a kid listed twice. It is an error if the document is malformed, lists more
// than 100 keys, or leaves no usable key.
func ParseJWKS(data []byte) (map[string]ed25519.PublicKey, error) {
	keys, _, err := parseJWKS(data)
	return keys, err
}

// parseJWKS is ParseJWKS that also says why keys were dropped, for the source's log.
func parseJWKS(data []byte) (map[string]ed25519.PublicKey, []error, error) {
	var doc struct {
		Keys *[]json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("auth: decoding JWKS: %w", err)
	}
	if doc.Keys == nil {
		return nil, nil, errors.New(`auth: decoding JWKS: no "keys" array`)
	}
	if len(*doc.Keys) > maxJWKSKeys {
		return nil, nil, fmt.Errorf("auth: decoding JWKS: %d keys, at most %d allowed", len(*doc.Keys), maxJWKSKeys)
	}
	var (
		keys    = make(map[string]ed25519.PublicKey)
		dupes   = make(map[string]bool)
		dropped []error
	)
	for i, raw := range *doc.Keys {
		kid, key, err := parseJWK(raw)
		switch {
		case err != nil:
			dropped = append(dropped, fmt.Errorf("key %d: %w", i, err))
		case key == nil:
			// Not an Ed25519 signing key: none of our business.
		case dupes[kid] || keys[kid] != nil:
			// Two keys under one kid: which verifies is ambiguous, so neither does.
			dupes[kid] = true
			delete(keys, kid)
			dropped = append(dropped, fmt.Errorf("key %d: kid %q is listed more than once", i, kid))
		default:
			keys[kid] = key
		}
	}
	if len(keys) == 0 {
		return nil, dropped, errors.Join(append([]error{errors.New("auth: JWKS holds no usable Ed25519 key")}, dropped...)...)
	}
	return keys, dropped, nil
}

// parseJWK reads one key. It returns a nil key and no error for a key that is not an
// Ed25519 signing key. Members are matched case-sensitively, as RFC 7517 requires, which
// encoding/json's struct decoding would not do.
func parseJWK(raw json.RawMessage) (string, ed25519.PublicKey, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", nil, fmt.Errorf("not a JSON object: %w", err)
	}
	str := func(name string) (string, error) {
		v, ok := m[name]
		if !ok {
			return "", nil
		}
		var s string
		if err := json.Unmarshal(v, &s); err != nil {
			return "", fmt.Errorf("member %q is not a string", name)
		}
		return s, nil
	}
	kty, err := str("kty")
	if err != nil {
		return "", nil, err
	}
	crv, err := str("crv")
	if err != nil {
		return "", nil, err
	}
	if kty != "OKP" || crv != "Ed25519" {
		return "", nil, nil
	}
	for _, p := range privateMembers {
		if _, ok := m[p]; ok {
			return "", nil, fmt.Errorf("Ed25519 key carries private member %q", p)
		}
	}
	use, err := str("use")
	if err != nil {
		return "", nil, err
	}
	alg, err := str("alg")
	if err != nil {
		return "", nil, err
	}
	if (use != "" && use != "sig") || (alg != "" && alg != Algorithm) {
		return "", nil, nil
	}
	kid, err := str("kid")
	if err != nil {
		return "", nil, err
	}
	if kid == "" {
		return "", nil, errors.New("Ed25519 key has no kid")
	}
	x, err := str("x")
	if err != nil {
		return "", nil, err
	}
	// Strict: one key has exactly one encoding, with no padding and no stray bits.
	b, err := base64.RawURLEncoding.Strict().DecodeString(x)
	if err != nil {
		return "", nil, fmt.Errorf("Ed25519 key %q: x is not base64url: %w", kid, err)
	}
	if len(b) != ed25519.PublicKeySize {
		return "", nil, fmt.Errorf("Ed25519 key %q: x is %d bytes, want %d", kid, len(b), ed25519.PublicKeySize)
	}
	return kid, ed25519.PublicKey(b), nil
}

// Defaults of a JWKSSource; each has an option.
const (
	// DefaultRefreshInterval is how long a set is cached when the response names no max-age.
	DefaultRefreshInterval = 5 * time.Minute
	// DefaultMinRefresh is the shortest caching a response's Cache-Control can ask for.
	DefaultMinRefresh = time.Minute
	// DefaultMaxRefresh is the longest caching a response's Cache-Control can ask for.
	DefaultMaxRefresh = time.Hour
	// DefaultMinRefetchInterval is the least time between two fetches.
	DefaultMinRefetchInterval = 10 * time.Second
	// DefaultFetchTimeout bounds one fetch.
	DefaultFetchTimeout = 5 * time.Second
	// DefaultMaxJWKSBytes bounds the size of a JWKS document.
	DefaultMaxJWKSBytes = 256 << 10
)

// JWKSSource is a KeySource that fetches identity's JWKS over HTTP and caches it.
//
// The cached set is refreshed after the response's Cache-Control max-age (bounded), or
// after the refresh interval when it names none; while a refresh runs, requests keep using
// the cached keys. A kid the cache does not know triggers a fetch at once, but at most one
// per minimum refetch interval, so a flood of tokens with made-up kids cannot make the
// source hammer identity; concurrent misses share one fetch. When a fetch fails, the cached
// set stays in use. It is safe for concurrent use.
type JWKSSource struct {
	url        string
	client     *http.Client
	now        func() time.Time
	refresh    time.Duration
	minRefresh time.Duration
	maxRefresh time.Duration
	minRefetch time.Duration
	timeout    time.Duration
	maxBytes   int64
	logger     *slog.Logger

	mu          sync.Mutex                   // guards what follows
	keys        map[string]ed25519.PublicKey // replaced whole, never mutated
	expires     time.Time                    // when keys are due for a refresh
	lastAttempt time.Time                    // when the last fetch started, for the rate limit
	lastErr     error                        // why the last fetch failed, nil if it did not
	inflight    *fetchCall                   // the running fetch, if any
}

// fetchCall is one fetch that any number of callers can wait for.
type fetchCall struct {
	done chan struct{}
	err  error
}

// JWKSOption configures a JWKSSource.
type JWKSOption func(*JWKSSource)

// WithHTTPClient sets the client fetches use (default: http.DefaultClient, bounded by the
// fetch timeout).
func WithHTTPClient(c *http.Client) JWKSOption { return func(s *JWKSSource) { s.client = c } }

// WithRefreshInterval sets how long a set is cached when the response names no max-age
// (default 5 min).
func WithRefreshInterval(d time.Duration) JWKSOption { return func(s *JWKSSource) { s.refresh = d } }

// WithRefreshBounds bounds how long a set is cached whatever the response's max-age says
// (default 1 min to 1 h): a tiny max-age would make every request fetch, a huge one would
// keep a withdrawn key alive.
func WithRefreshBounds(lo, hi time.Duration) JWKSOption {
	return func(s *JWKSSource) { s.minRefresh, s.maxRefresh = lo, hi }
}

// WithMinRefetchInterval sets how often at most a fetch is made (default 10 s), whether for
// an unknown kid, a due refresh or a retry after a failure.
func WithMinRefetchInterval(d time.Duration) JWKSOption {
	return func(s *JWKSSource) { s.minRefetch = d }
}

// WithFetchTimeout bounds each fetch (default 5 s).
func WithFetchTimeout(d time.Duration) JWKSOption { return func(s *JWKSSource) { s.timeout = d } }

// WithMaxJWKSBytes bounds the size of a JWKS document (default 256 KiB); a bigger one is a
// failed fetch.
func WithMaxJWKSBytes(n int64) JWKSOption { return func(s *JWKSSource) { s.maxBytes = n } }

// WithClock sets the source's clock, for tests (default time.Now).
func WithClock(now func() time.Time) JWKSOption { return func(s *JWKSSource) { s.now = now } }

// WithLogger sets where failed fetches and dropped keys are logged (default slog.Default()).
func WithLogger(l *slog.Logger) JWKSOption { return func(s *JWKSSource) { s.logger = l } }

// NewJWKSSource returns a source of the JWKS at rawURL, an absolute http or https URL
// (identity's base URL plus JWKSPath). It fetches nothing until the first Key.
func NewJWKSSource(rawURL string, opts ...JWKSOption) (*JWKSSource, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("auth: JWKS URL %q is not an absolute http(s) URL", rawURL)
	}
	s := &JWKSSource{
		url:        rawURL,
		client:     http.DefaultClient,
		now:        time.Now,
		refresh:    DefaultRefreshInterval,
		minRefresh: DefaultMinRefresh,
		maxRefresh: DefaultMaxRefresh,
		minRefetch: DefaultMinRefetchInterval,
		timeout:    DefaultFetchTimeout,
		maxBytes:   DefaultMaxJWKSBytes,
		logger:     slog.Default(),
	}
	for _, o := range opts {
		o(s)
	}
	switch {
	case s.client == nil || s.now == nil || s.logger == nil:
		return nil, errors.New("auth: JWKS source: nil client, clock or logger")
	case s.minRefresh <= 0 || s.maxRefresh < s.minRefresh:
		return nil, fmt.Errorf("auth: JWKS source: bad refresh bounds [%v, %v]", s.minRefresh, s.maxRefresh)
	case s.refresh < s.minRefresh || s.refresh > s.maxRefresh:
		return nil, fmt.Errorf("auth: JWKS source: refresh interval %v is outside [%v, %v]", s.refresh, s.minRefresh, s.maxRefresh)
	case s.minRefetch < 0 || s.timeout <= 0 || s.maxBytes <= 0:
		return nil, errors.New("auth: JWKS source: refetch interval, timeout and size limit must be positive")
	}
	return s, nil
}

// Key implements KeySource.
func (s *JWKSSource) Key(ctx context.Context, kid string) (ed25519.PublicKey, error) {
	s.mu.Lock()
	now := s.now()
	key, known := s.keys[kid]
	if known && now.Before(s.expires) {
		s.mu.Unlock()
		return key, nil
	}
	call := s.inflight
	if call == nil && (s.lastAttempt.IsZero() || now.Sub(s.lastAttempt) >= s.minRefetch) {
		call = s.startFetch(ctx, now)
	}
	lastErr := s.lastErr
	s.mu.Unlock()

	if known {
		// Due for a refresh, but a key we have is as good as it was a moment ago: the
		// refresh runs without holding up the request.
		return key, nil
	}
	if call == nil {
		return nil, s.missErr(lastErr)
	}
	select {
	case <-call.done:
	case <-ctx.Done():
		return nil, fmt.Errorf("auth: waiting for JWKS: %w", ctx.Err())
	}
	s.mu.Lock()
	key, known = s.keys[kid]
	s.mu.Unlock()
	if known {
		return key, nil
	}
	return nil, s.missErr(call.err)
}

// missErr is the error for a kid not in the cache: unknown if there is a key set to be
// unknown in, the fetch failure otherwise.
func (s *JWKSSource) missErr(fetchErr error) error {
	s.mu.Lock()
	haveKeys := s.keys != nil
	s.mu.Unlock()
	if !haveKeys && fetchErr != nil {
		return fetchErr
	}
	return ErrUnknownKey
}

// startFetch begins a fetch that callers can share; s.mu must be held. The fetch runs on
// its own goroutine, detached from the caller's cancellation, because other callers wait
// for it too and a stale-cache refresh has no caller waiting at all.
func (s *JWKSSource) startFetch(ctx context.Context, now time.Time) *fetchCall {
	call := &fetchCall{done: make(chan struct{})}
	s.inflight = call
	s.lastAttempt = now
	ctx = context.WithoutCancel(ctx)
	go func() {
		keys, ttl, dropped, err := s.fetch(ctx)
		for _, d := range dropped {
			s.logger.WarnContext(ctx, "JWKS key dropped", "url", s.url, "err", d)
		}
		if err != nil {
			s.logger.ErrorContext(ctx, "fetching JWKS failed; keeping the cached keys", "url", s.url, "err", err)
		}
		s.mu.Lock()
		if err == nil {
			s.keys = keys
			s.expires = s.now().Add(ttl)
		}
		s.lastErr = err
		s.inflight = nil
		call.err = err
		s.mu.Unlock()
		close(call.done)
	}()
	return call
}

// fetch gets and parses the JWKS, and says how long to cache it.
func (s *JWKSSource) fetch(ctx context.Context) (map[string]ed25519.PublicKey, time.Duration, []error, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("auth: fetching JWKS: %w", err)
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("auth: fetching JWKS: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, 0, nil, fmt.Errorf("auth: fetching JWKS: status %s", resp.Status)
	}
	// One byte over the limit tells an oversized document from one exactly at it.
	body, err := io.ReadAll(io.LimitReader(resp.Body, s.maxBytes+1))
	if err != nil {
		return nil, 0, nil, fmt.Errorf("auth: reading JWKS: %w", err)
	}
	if int64(len(body)) > s.maxBytes {
		return nil, 0, nil, fmt.Errorf("auth: JWKS document exceeds %d bytes", s.maxBytes)
	}
	keys, dropped, err := parseJWKS(body)
	if err != nil {
		return nil, 0, dropped, err
	}
	return keys, s.ttl(resp.Header.Get("Cache-Control")), dropped, nil
}

// ttl reads max-age from a Cache-Control header and bounds it. no-store and no-cache ask
// for the shortest caching allowed.
func (s *JWKSSource) ttl(cacheControl string) time.Duration {
	ttl := s.refresh
	for _, d := range strings.Split(cacheControl, ",") {
		name, val, _ := strings.Cut(strings.TrimSpace(d), "=")
		switch strings.ToLower(name) {
		case "no-store", "no-cache":
			return s.minRefresh
		case "max-age":
			n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
			if err != nil || n < 0 {
				continue
			}
			if n > int64(s.maxRefresh/time.Second) {
				n = int64(s.maxRefresh / time.Second)
			}
			ttl = time.Duration(n) * time.Second
		}
	}
	return min(max(ttl, s.minRefresh), s.maxRefresh)
}
