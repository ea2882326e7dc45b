-- +goose Up
-- The tenant's enrolled agents. name and tags come from the enrollment token and may be
-- changed by an admin; reported_tags are what the agent itself announces. The facts and
-- capacity columns are the agent's latest Hello and heartbeat. state is written by the
-- replica that owns the tunnel (online when it speaks, offline when it leaves); readers
-- also age it by last_seen, so a replica that died cannot leave an agent "online".
CREATE TABLE agents (
    id                       text PRIMARY KEY CHECK (id ~ '^agt_[a-z2-7]{20}$'),
    name                     text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    tags                     text[] NOT NULL DEFAULT '{}',
    reported_tags            text[] NOT NULL DEFAULT '{}',
    enrollment_token_id      text NOT NULL DEFAULT '',
    version                  text NOT NULL DEFAULT '',
    facts                    jsonb NOT NULL DEFAULT '{}',
    cpu_allocatable_millis   bigint NOT NULL DEFAULT 0,
    cpu_used_millis          bigint NOT NULL DEFAULT 0,
    memory_allocatable_bytes bigint NOT NULL DEFAULT 0,
    memory_used_bytes        bigint NOT NULL DEFAULT 0,
    sessions                 integer NOT NULL DEFAULT 0,
    max_sessions             integer NOT NULL DEFAULT 0,
    state                    text NOT NULL DEFAULT 'offline' CHECK (state IN ('online', 'degraded', 'offline')),
    draining                 boolean NOT NULL DEFAULT false,
    last_seen                timestamptz,
    gateway_id               text NOT NULL DEFAULT '',
    cert_serial              text NOT NULL DEFAULT '',
    cert_not_after           timestamptz,
    created_at               timestamptz NOT NULL DEFAULT now(),
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- Desired state per session: what the control plane wants the session's agent to do.
-- generation grows with every change of desired or spec; acked_generation is the highest
-- generation the agent acknowledged. A row with generation > acked_generation is pending
-- work: this table is the outbox, and NOTIFY only says "look now". trace_parent is the W3C
-- trace context of the write, so the delivery joins the caller's trace.
CREATE TABLE session_assignments (
    session_id       text PRIMARY KEY CHECK (session_id ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    agent_id         text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    generation       bigint NOT NULL CHECK (generation >= 1),
    desired          text NOT NULL CHECK (desired IN ('running', 'hibernated', 'stopped', 'deleted')),
    spec             jsonb NOT NULL DEFAULT '{}',
    acked_generation bigint NOT NULL DEFAULT 0 CHECK (acked_generation >= 0),
    ack_error        jsonb,
    trace_parent     text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_assignments_agent ON session_assignments (agent_id);
CREATE INDEX session_assignments_pending ON session_assignments (agent_id) WHERE generation > acked_generation;

-- Observed state per session, as the agent reports it. No foreign key to agents: status is
-- a record that outlives the agent that reported it.
CREATE TABLE session_status (
    session_id          text PRIMARY KEY,
    agent_id            text NOT NULL,
    phase               text NOT NULL,
    reason              text NOT NULL DEFAULT '',
    message             text NOT NULL DEFAULT '',
    observed_generation bigint NOT NULL DEFAULT 0,
    endpoint            jsonb,
    last_transition     timestamptz,
    observed_at         timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_status_agent ON session_status (agent_id);

-- +goose Down
DROP TABLE session_status;
DROP TABLE session_assignments;
DROP TABLE agents;
