-- +goose Up
-- Platform-wide application templates, managed by platform operators and visible to every
-- tenant. A tenant's own template of the same name (tenant schema, table templates) shadows
-- the platform entry for that tenant only. spec holds the whole template model as JSON; the
-- columns beside it are copies of the fields lists filter on, kept so that filtering never
-- has to parse JSON. spec is json, not jsonb: it is only ever read whole, and json is
-- returned as stored, without jsonb's re-printing, which dominated the cost of long lists.
CREATE TABLE platform.templates (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9]*(-[a-z0-9]+)*$' AND length(name) BETWEEN 2 AND 63),
    version      bigint NOT NULL DEFAULT 1 CHECK (version >= 1),
    enabled      boolean NOT NULL DEFAULT true,
    display_name text NOT NULL,
    category     text NOT NULL DEFAULT '',
    tags         text[] NOT NULL DEFAULT '{}',
    search       text NOT NULL DEFAULT '',
    spec         json NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Which built-in catalogs have been applied, so a seed runs once per seed version: an
-- operator who deletes a seeded template does not see it come back on the next start.
CREATE TABLE platform.catalog_seeds (
    seed       text PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE platform.catalog_seeds;
DROP TABLE platform.templates;
