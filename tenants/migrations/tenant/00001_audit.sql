-- +goose Up
-- Every tenant's audit log: authentication events, administrative changes, session
-- lifecycle actions. Append-only by convention; trace_id links an entry to its trace.
CREATE TABLE audit_log (
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
CREATE INDEX audit_log_at ON audit_log (at);

-- Tenant-wide settings (quotas, idle timeouts), one JSON document per key.
CREATE TABLE settings (
    key        text PRIMARY KEY,
    value      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE settings;
DROP TABLE audit_log;
