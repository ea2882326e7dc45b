-- +goose Up
-- Platform operators: the people who run StreamSpace itself. They belong to no tenant and
-- sign in at the operator endpoint; their tokens carry knd=operator and no tid.
CREATE TABLE platform.operators (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    password_hash text NOT NULL,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_login_at timestamptz
);
CREATE UNIQUE INDEX operators_email ON platform.operators (lower(email));

-- Access-token signing keys. The private key is sealed with AES-256-GCM under the
-- key-encryption key from configuration (never stored here), with the kid as associated
-- data so a sealed key cannot be moved to another row. A key signs from activates_at
-- until a newer key takes over (retired_at); it stays published in the JWKS until every
-- token it signed has expired (retired_at + access-token lifetime + leeway).
CREATE TABLE platform.signing_keys (
    kid           text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{8,64}$'),
    algorithm     text NOT NULL CHECK (algorithm = 'EdDSA'),
    public_key    bytea NOT NULL CHECK (length(public_key) = 32),
    private_key   bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    activates_at  timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz
);
CREATE INDEX signing_keys_activates ON platform.signing_keys (activates_at DESC);

-- Sign-in throttling shared by every replica. key is a SHA-256 (hex) of a scope and a
-- value ("account:<tenant>:<email>", "ip:<address>"), so the table holds no e-mail
-- addresses. failures counts failed attempts in the current window; locked_until grows
-- with every failure past the threshold.
CREATE TABLE platform.login_throttle (
    key          text PRIMARY KEY,
    failures     integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_throttle_updated ON platform.login_throttle (updated_at);

-- Operator actions and sign-ins, which belong to no tenant's audit log.
CREATE TABLE platform.audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    actor      text NOT NULL,
    action     text NOT NULL,
    target     text NOT NULL DEFAULT '',
    outcome    text NOT NULL DEFAULT 'success' CHECK (outcome IN ('success', 'failure')),
    client_ip  inet,
    trace_id   text NOT NULL DEFAULT '',
    details    jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON platform.audit_log (at);

-- +goose Down
DROP TABLE platform.audit_log;
DROP TABLE platform.login_throttle;
DROP TABLE platform.signing_keys;
DROP TABLE platform.operators;
