-- +goose Up
-- The tenant's own application templates, managed by its admins and visible only to it. A
-- template here shadows the platform template (platform.templates) of the same name. The
-- columns mirror platform.templates: spec is the whole model (json, read whole and
-- returned as stored), the rest are filter copies.
CREATE TABLE templates (
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

-- +goose Down
DROP TABLE templates;
