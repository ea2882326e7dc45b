-- +goose Up
-- The tenant registry. id names the schema (t_<id>); slug is the human handle and may be
-- reused once its tenant is deleted. Rows of deleted tenants stay as the record.
CREATE TABLE platform.tenants (
    id             text PRIMARY KEY CHECK (id ~ '^[a-z2-7]{12}$'),
    slug           text NOT NULL CHECK (slug ~ '^[a-z][a-z0-9]*(-[a-z0-9]+)*$' AND length(slug) BETWEEN 3 AND 40),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status         text NOT NULL CHECK (status IN ('creating', 'active', 'suspended', 'failed', 'deleting', 'deleted')),
    schema_version bigint NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    migrated_at    timestamptz,
    deleted_at     timestamptz,
    last_operation text,
    last_error     text
);
CREATE UNIQUE INDEX tenants_live_slug ON platform.tenants (slug) WHERE status <> 'deleted';
CREATE INDEX tenants_lagging ON platform.tenants (schema_version) WHERE status IN ('active', 'suspended');

-- One row per administrative operation on a tenant: who, what, when, from and to which
-- schema version, and how it ended.
CREATE TABLE platform.tenant_operations (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES platform.tenants (id),
    operation    text NOT NULL CHECK (operation IN ('create', 'migrate', 'suspend', 'resume', 'delete')),
    actor        text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    from_version bigint,
    to_version   bigint,
    error        text
);
CREATE INDEX tenant_operations_tenant ON platform.tenant_operations (tenant_id, started_at);

-- +goose Down
DROP TABLE platform.tenant_operations;
DROP TABLE platform.tenants;
