-- +goose Up
-- Where every enrolled agent lives and which gateway replica holds its tunnel. The gateway
-- checks this row during the TLS handshake, before it knows anything else about the agent,
-- so deleting the row (with the tenant's agents row, in one transaction) revokes the
-- agent's certificate at once on every replica. owner_conn names one connection, not just
-- a replica: when the same agent connects twice, the newer claim wins and the replica
-- holding the older connection sees that its conn no longer owns the row and closes it.
CREATE TABLE platform.agent_directory (
    agent_id        text PRIMARY KEY CHECK (agent_id ~ '^agt_[a-z2-7]{20}$'),
    tenant_id       text NOT NULL REFERENCES platform.tenants (id) ON DELETE CASCADE,
    owner_gateway   text,
    owner_conn      text,
    owner_since     timestamptz,
    owner_heartbeat timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX agent_directory_tenant ON platform.agent_directory (tenant_id);
CREATE INDEX agent_directory_owner ON platform.agent_directory (owner_gateway) WHERE owner_gateway IS NOT NULL;

-- The internal certificate authority that signs agents' client certificates (and, unless
-- an operator supplies one, the gateway's server certificate). The private key is sealed
-- with AES-256-GCM under the key-encryption key from configuration, with the id as
-- associated data, exactly as identity seals its signing keys. One row per CA; the
-- newest is the signer, older ones stay trusted until their certificates expire.
CREATE TABLE platform.agent_cas (
    id          text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9_-]{8,64}$'),
    cert_pem    text NOT NULL,
    private_key bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    not_after   timestamptz NOT NULL
);

-- +goose Down
DROP TABLE platform.agent_cas;
DROP TABLE platform.agent_directory;
