package identity

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"time"

	"streamspace.dev/libs/auth"
	"streamspace.dev/libs/config"
	"streamspace.dev/libs/seal"
	"streamspace.dev/libs/server"
	"streamspace.dev/tenants"
)

// Config is identity's own settings, beside the common server.Config.
type Config struct {
	// KEK is the base64 key-encryption key sealing signing keys at rest.
	KEK string
	// OperatorEmail and OperatorPassword, when set, bootstrap a platform operator on
	// start; an existing operator with that email is left as it is.
	OperatorEmail, OperatorPassword string
	// KeyRotation is the signing-key rotation period; 0 disables scheduled rotation.
	KeyRotation time.Duration
	// KeyPublishDelay is how long a scheduled key is published before it signs.
	KeyPublishDelay time.Duration
	// AccessTTL and RefreshTTL are token lifetimes.
	AccessTTL, RefreshTTL time.Duration
	// Throttle tunes sign-in throttling; zero fields take the defaults.
	Throttle Throttle
}

// Register defines identity's flags on fs.
func (c *Config) Register(fs *flag.FlagSet) {
	config.String(fs, &c.KEK, "kek", "STREAMSPACE_KEK", "", "base64 32-byte key-encryption key that seals signing keys in the database (required)")
	config.String(fs, &c.OperatorEmail, "operator-email", "STREAMSPACE_OPERATOR_EMAIL", "", "email of a platform operator to create on start, if missing")
	config.String(fs, &c.OperatorPassword, "operator-password", "STREAMSPACE_OPERATOR_PASSWORD", "", "password of that operator (prefer the environment variable)")
	config.Duration(fs, &c.KeyRotation, "key-rotation", "STREAMSPACE_KEY_ROTATION", DefaultKeyRotation, "signing-key rotation period; 0 rotates only on demand")
	config.Duration(fs, &c.KeyPublishDelay, "key-publish-delay", "STREAMSPACE_KEY_PUBLISH_DELAY", DefaultKeyPublishDelay, "how long a scheduled new key is in the JWKS before it signs")
	config.Duration(fs, &c.AccessTTL, "access-token-ttl", "STREAMSPACE_ACCESS_TOKEN_TTL", DefaultAccessTTL, "access-token lifetime")
	config.Int(fs, &c.Throttle.SignupsPerHour, "signups-per-hour", "STREAMSPACE_SIGNUPS_PER_HOUR", DefaultSignupsPerHour, "sign-ups one client address may attempt per hour")
	config.Duration(fs, &c.RefreshTTL, "refresh-token-ttl", "STREAMSPACE_REFRESH_TOKEN_TTL", DefaultRefreshTTL, "refresh-token lifetime (each use starts it anew)")
}

// Validate checks the configuration.
func (c Config) Validate() error {
	var errs []error
	if c.KEK == "" {
		errs = append(errs, errors.New("--kek (or STREAMSPACE_KEK) is required: base64 of 32 random bytes, e.g. `openssl rand -base64 32`"))
	} else if _, err := seal.ParseKey(c.KEK); err != nil {
		errs = append(errs, fmt.Errorf("--kek: %w", err))
	}
	if (c.OperatorEmail == "") != (c.OperatorPassword == "") {
		errs = append(errs, errors.New("--operator-email and --operator-password go together"))
	}
	if c.AccessTTL < 0 || c.AccessTTL > time.Hour {
		errs = append(errs, errors.New("--access-token-ttl must be at most 1h"))
	}
	if c.KeyRotation < 0 || (c.KeyRotation > 0 && c.KeyRotation < time.Minute) {
		errs = append(errs, errors.New("--key-rotation must be 0 or at least 1m"))
	}
	return errors.Join(errs...)
}

// Module mounts the identity service on a server.
type Module struct {
	svc      Service
	keys     *Keys
	verifier *auth.Verifier
	routes   []Route
	stop     context.CancelFunc
	done     chan struct{}
}

// New builds the identity service from the shared dependencies and its store (package
// postgres): the signing keys (creating the first), the bootstrap operator, and a verifier
// that reads the keys in-process. It starts the rotation loop, stopped by Close.
func New(d server.Deps, cfg Config, store Store) (*Module, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	kek, _ := seal.ParseKey(cfg.KEK)
	accessTTL := cfg.AccessTTL
	if accessTTL <= 0 {
		accessTTL = DefaultAccessTTL
	}
	keys, err := NewKeys(store, KeysConfig{KEK: kek, TokenLifetime: accessTTL + auth.MaxLeeway*time.Second,
		RotateEvery: cfg.KeyRotation, PublishDelay: cfg.KeyPublishDelay, Logger: d.Logger})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := keys.Ensure(ctx); err != nil {
		return nil, err
	}
	if cfg.OperatorEmail != "" {
		if err := bootstrapOperator(ctx, store, cfg.OperatorEmail, cfg.OperatorPassword); err != nil {
			return nil, err
		}
	}
	tm, err := tenants.New(d.DB.Pool(), tenants.WithLogger(d.Logger), tenants.WithActor(Name))
	if err != nil {
		return nil, err
	}
	v, err := auth.NewVerifier(auth.VerifierConfig{Keys: keys, Issuer: d.Config.Issuer, Audience: d.Config.Audience})
	if err != nil {
		return nil, err
	}
	svc := NewService(store, tm, keys, Options{Issuer: d.Config.Issuer, Audience: d.Config.Audience,
		AccessTTL: cfg.AccessTTL, RefreshTTL: cfg.RefreshTTL, Throttle: cfg.Throttle, Logger: d.Logger, Forget: d.DB.Forget})
	eps := MakeEndpoints(svc, Logging(d.Logger), Metrics(d.Registry))
	runCtx, stop := context.WithCancel(context.Background())
	m := &Module{svc: svc, keys: keys, verifier: v, routes: Routes(eps, v, d.Config.Proxies(), d.Logger), stop: stop, done: make(chan struct{})}
	go func() { defer close(m.done); keys.Run(runCtx) }()
	return m, nil
}

func bootstrapOperator(ctx context.Context, store Store, email, password string) error {
	addr, err := ParseEmail(email)
	if err != nil {
		return fmt.Errorf("--operator-email: %w", err)
	}
	if err := CheckPassword(password, addr); err != nil {
		return fmt.Errorf("--operator-password: %w", err)
	}
	hash, err := HashPassword(password)
	if err != nil {
		return err
	}
	if _, err := store.EnsureOperator(ctx, addr, hash); err != nil {
		return fmt.Errorf("creating the bootstrap operator: %w", err)
	}
	return nil
}

// Name implements server.Module.
func (m *Module) Name() string { return Name }

// Register implements server.Module.
func (m *Module) Register(mux *http.ServeMux) {
	for _, r := range m.routes {
		mux.Handle(r.Pattern, r.handler)
	}
}

// Patterns returns the ServeMux pattern of every route the module serves, for the
// OpenAPI conformance test and the edge's routing table.
func (m *Module) Patterns() []string {
	out := make([]string, len(m.routes))
	for i, r := range m.routes {
		out[i] = r.Pattern
	}
	return out
}

// Service returns the service, for in-process callers such as the agent gateway
// (ConsumeEnrollmentToken).
func (m *Module) Service() Service { return m.svc }

// Keys returns the signing keys, an auth.KeySource for in-process verifiers.
func (m *Module) Keys() *Keys { return m.keys }

// Verifier returns a verifier reading identity's keys in-process: the all-in-one binary
// hands it to every other module instead of fetching the JWKS over HTTP.
func (m *Module) Verifier() *auth.Verifier { return m.verifier }

// Close implements server.Closer: it stops the rotation loop.
func (m *Module) Close(ctx context.Context) error {
	m.stop()
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
