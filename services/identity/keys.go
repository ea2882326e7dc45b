package identity

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"streamspace.dev/libs/apperr"
	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/seal"
)

// KeysConfig tunes Keys.
type KeysConfig struct {
	// KEK seals private keys at rest (32 bytes).
	KEK []byte
	// TokenLifetime is the longest an access token lives, leeway included: a retired key
	// stays published this long after its last signature.
	TokenLifetime time.Duration
	// RotateEvery rotates the signing key when the newest is this old; 0 disables
	// scheduled rotation.
	RotateEvery time.Duration
	// PublishDelay is how long a scheduled new key is published before it signs, so that
	// verifiers holding a cached JWKS learn it first.
	PublishDelay time.Duration
	// Logger, if set, reports rotations.
	Logger *slog.Logger
}

// Keys holds the signing keys: it signs with the active one, answers verifiers' key
// lookups in-process (it is an auth.KeySource) and renders the JWKS. Every replica reads
// the same rows, so a key created by one is used and published by all.
type Keys struct {
	store Store
	seal  *seal.Sealer
	cfg   KeysConfig
	now   func() time.Time

	mu       sync.RWMutex
	keys     []loadedKey // newest activation first
	loadedAt time.Time
	missedAt time.Time
}

type loadedKey struct {
	kid       string
	pub       ed25519.PublicKey
	priv      ed25519.PrivateKey
	activates time.Time
	retired   *time.Time
}

// reloadEvery bounds how stale a replica's view of the keys may be: a key another replica
// activated is used here at most this much later.
const reloadEvery = 30 * time.Second

// NewKeys returns Keys over store. Call Ensure before signing.
func NewKeys(store Store, cfg KeysConfig) (*Keys, error) {
	sealer, err := seal.New(cfg.KEK)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Keys{store: store, seal: sealer, cfg: cfg, now: time.Now}, nil
}

// Ensure creates the first key, or rotates when the newest is due, then loads the keys.
// Every replica may call it at once: the store serialises rotation.
func (k *Keys) Ensure(ctx context.Context) error {
	_, err := k.rotate(ctx, func(newest *SigningKey) bool {
		return newest == nil || (k.cfg.RotateEvery > 0 && k.now().Sub(newest.CreatedAt) >= k.cfg.RotateEvery)
	})
	if err != nil {
		return err
	}
	return k.reload(ctx)
}

// Rotate makes a new key active at once (an operator's on-demand rotation, e.g. after a
// suspected leak) and returns its kid. Tokens signed by the old key stay valid until they
// expire.
func (k *Keys) Rotate(ctx context.Context) (string, error) {
	kid, err := k.rotate(ctx, nil)
	if err != nil {
		return "", err
	}
	return kid, k.reload(ctx)
}

func (k *Keys) rotate(ctx context.Context, due func(*SigningKey) bool) (string, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", err
	}
	kidBytes := make([]byte, 12)
	if _, err := rand.Read(kidBytes); err != nil {
		return "", err
	}
	kid := base64.RawURLEncoding.EncodeToString(kidBytes)
	sealed, err := k.seal.Seal(priv.Seed(), []byte(kid))
	if err != nil {
		return "", err
	}
	now := k.now()
	row := SigningKey{KID: kid, PublicKey: pub, PrivateKey: sealed, CreatedAt: now, ActivatesAt: now}
	immediate := due == nil
	ok, err := k.store.RotateSigningKey(ctx, func(newest *SigningKey) (SigningKey, bool) {
		if immediate {
			return row, true
		}
		if !due(newest) {
			return SigningKey{}, false
		}
		// The first key signs at once; a scheduled successor waits to be published.
		if newest != nil {
			row.ActivatesAt = now.Add(k.cfg.PublishDelay)
		}
		return row, true
	})
	if err != nil {
		return "", fmt.Errorf("rotating signing key: %w", err)
	}
	if !ok {
		return "", nil
	}
	k.cfg.Logger.InfoContext(ctx, "signing key created", "kid", kid, "activates_at", row.ActivatesAt)
	return kid, nil
}

// reload reads every published key and opens the private ones.
func (k *Keys) reload(ctx context.Context) error {
	rows, err := k.store.SigningKeys(ctx)
	if err != nil {
		return fmt.Errorf("loading signing keys: %w", err)
	}
	keys := make([]loadedKey, 0, len(rows))
	for _, r := range rows {
		seed, err := k.seal.Open(r.PrivateKey, []byte(r.KID))
		if err != nil || len(seed) != ed25519.SeedSize {
			// Wrong KEK, or a tampered row: refuse to sign rather than guess.
			return fmt.Errorf("signing key %s: cannot open with the configured key-encryption key", r.KID)
		}
		keys = append(keys, loadedKey{kid: r.KID, pub: ed25519.PublicKey(r.PublicKey),
			priv: ed25519.NewKeyFromSeed(seed), activates: r.ActivatesAt, retired: r.RetiredAt})
	}
	k.mu.Lock()
	k.keys, k.loadedAt = keys, k.now()
	k.mu.Unlock()
	return nil
}

func (k *Keys) fresh(ctx context.Context) error {
	k.mu.RLock()
	stale := k.now().Sub(k.loadedAt) >= reloadEvery
	k.mu.RUnlock()
	if stale {
		return k.reload(ctx)
	}
	return nil
}

// published reports whether a key still belongs in the JWKS at now.
func (k *Keys) published(key loadedKey, now time.Time) bool {
	return key.retired == nil || now.Before(key.retired.Add(k.cfg.TokenLifetime))
}

// Signer returns the active signing key: the newest whose activation has come.
func (k *Keys) Signer(ctx context.Context) (string, ed25519.PrivateKey, error) {
	if err := k.fresh(ctx); err != nil {
		return "", nil, err
	}
	now := k.now()
	k.mu.RLock()
	defer k.mu.RUnlock()
	for _, key := range k.keys {
		if !key.activates.After(now) {
			return key.kid, key.priv, nil
		}
	}
	return "", nil, apperr.New(apperr.Unavailable, "no signing key is active yet")
}

// Key returns the public key of kid if it is published. It implements auth.KeySource for
// verifiers in the same process. An unknown kid triggers one reload per second at most,
// so a key made by another replica is found without letting garbage kids hammer the
// database.
func (k *Keys) Key(ctx context.Context, kid string) (ed25519.PublicKey, error) {
	if err := k.fresh(ctx); err != nil {
		return nil, err
	}
	if pub, ok := k.lookup(kid); ok {
		return pub, nil
	}
	k.mu.Lock()
	retry := k.now().Sub(k.missedAt) >= time.Second
	if retry {
		k.missedAt = k.now()
	}
	k.mu.Unlock()
	if retry {
		if err := k.reload(ctx); err != nil {
			return nil, err
		}
		if pub, ok := k.lookup(kid); ok {
			return pub, nil
		}
	}
	return nil, fmt.Errorf("kid %q: %w", kid, auth.ErrUnknownKey)
}

func (k *Keys) lookup(kid string) (ed25519.PublicKey, bool) {
	now := k.now()
	k.mu.RLock()
	defer k.mu.RUnlock()
	for _, key := range k.keys {
		if key.kid == kid && k.published(key, now) {
			return key.pub, true
		}
	}
	return nil, false
}

// Published returns every key that belongs in the JWKS, by kid.
func (k *Keys) Published(ctx context.Context) (map[string]ed25519.PublicKey, error) {
	if err := k.fresh(ctx); err != nil {
		return nil, err
	}
	now := k.now()
	k.mu.RLock()
	defer k.mu.RUnlock()
	m := make(map[string]ed25519.PublicKey, len(k.keys))
	for _, key := range k.keys {
		if k.published(key, now) {
			m[key.kid] = key.pub
		}
	}
	return m, nil
}

// JWKS renders the published keys as a JWK Set.
func (k *Keys) JWKS(ctx context.Context) ([]byte, error) {
	m, err := k.Published(ctx)
	if err != nil {
		return nil, err
	}
	return auth.MarshalJWKS(m)
}

// Run rotates on schedule and prunes expired keys until ctx ends. Each replica runs it;
// the store's lock makes sure one rotation happens per period.
func (k *Keys) Run(ctx context.Context) {
	period := time.Minute
	if k.cfg.RotateEvery > 0 && k.cfg.RotateEvery/10 < period {
		period = max(k.cfg.RotateEvery/10, time.Second)
	}
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := k.Ensure(ctx); err != nil && ctx.Err() == nil {
			k.cfg.Logger.ErrorContext(ctx, "signing key rotation failed", "err", err)
		}
		// Keep retired rows a day past their last use: harmless, and handy for forensics.
		if err := k.store.PruneSigningKeys(ctx, k.now().Add(-k.cfg.TokenLifetime-24*time.Hour)); err != nil && ctx.Err() == nil {
			k.cfg.Logger.ErrorContext(ctx, "pruning signing keys failed", "err", err)
		}
	}
}
