-- +goose Up
-- The tenant's sessions. desired and generation are what users (and the idle and duration
-- timers) ask for; phase, reason and message are what the control plane last concluded
-- from the agent's reports. generation grows with every change that the agent must apply
-- (desired state, placement); dispatched_generation is the generation last written to the
-- gateway's session_assignments, so a row with generation > dispatched_generation is work
-- for the scheduler. agent_id is the current placement; last_agent_id survives
-- hibernation so that a wake prefers the agent holding the home volume. A deleted session
-- keeps its row (deleted_at) until its agent has been told; the API never shows it.
CREATE TABLE sessions (
    id                    text PRIMARY KEY CHECK (id ~ '^ses_[a-z2-7]{20}$'),
    owner_id              text NOT NULL,
    name                  text NOT NULL DEFAULT '',
    template              text NOT NULL,
    template_scope        text NOT NULL,
    template_version      bigint NOT NULL,
    spec                  jsonb NOT NULL,
    cpu_millis            bigint NOT NULL CHECK (cpu_millis > 0),
    memory_bytes          bigint NOT NULL CHECK (memory_bytes > 0),
    agent_tags            text[] NOT NULL DEFAULT '{}',
    tags                  text[] NOT NULL DEFAULT '{}',
    desired               text NOT NULL CHECK (desired IN ('running', 'hibernated', 'stopped')),
    generation            bigint NOT NULL DEFAULT 1 CHECK (generation >= 1),
    dispatched_generation bigint NOT NULL DEFAULT 0,
    assignment_generation bigint NOT NULL DEFAULT 0,
    phase                 text NOT NULL CHECK (phase IN ('Pending', 'Scheduling', 'Starting', 'Running', 'Hibernated', 'Stopping', 'Stopped', 'Failed')),
    reason                text NOT NULL DEFAULT '',
    message               text NOT NULL DEFAULT '',
    phase_since           timestamptz NOT NULL DEFAULT now(),
    agent_id              text,
    last_agent_id         text,
    agent_lost_at         timestamptz,
    endpoint              jsonb,
    status_observed_at    timestamptz,
    idle_timeout_seconds  integer NOT NULL CHECK (idle_timeout_seconds >= 0),
    max_duration_seconds  integer NOT NULL CHECK (max_duration_seconds >= 0),
    last_activity         timestamptz NOT NULL DEFAULT now(),
    started_at            timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    deleted_at            timestamptz
);
CREATE INDEX sessions_owner ON sessions (owner_id, created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX sessions_live ON sessions (created_at DESC) WHERE deleted_at IS NULL;
CREATE INDEX sessions_work ON sessions (created_at) WHERE generation > dispatched_generation;
CREATE INDEX sessions_agent ON sessions (agent_id) WHERE agent_id IS NOT NULL;

-- Every lifecycle step of a session, for its history: what was asked (by whom) and what
-- was observed. Kept after the session is deleted, as a record.
CREATE TABLE session_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now(),
    kind       text NOT NULL,
    phase      text NOT NULL DEFAULT '',
    desired    text NOT NULL DEFAULT '',
    generation bigint NOT NULL DEFAULT 0,
    reason     text NOT NULL DEFAULT '',
    message    text NOT NULL DEFAULT '',
    actor      text NOT NULL DEFAULT ''
);
CREATE INDEX session_events_session ON session_events (session_id, id);

-- Idempotency-Key records of session creates: the key, per caller, the hash of the
-- request it came with and the response it produced. A retry with the same key and body
-- gets the stored response; the same key with another body is a conflict.
CREATE TABLE session_idempotency (
    owner_id     text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    session_id   text NOT NULL DEFAULT '',
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, key)
);
CREATE INDEX session_idempotency_created ON session_idempotency (created_at);

-- What running sessions hold, per user and for the whole tenant (subject ''). Each row is
-- also the lock that makes quota checks atomic: a create or wake raises the counters with
-- one conditional UPDATE that holds the row until commit, so concurrent requests queue on
-- it and each sees the others' effect.
CREATE TABLE session_usage (
    subject      text PRIMARY KEY,
    sessions     integer NOT NULL DEFAULT 0 CHECK (sessions >= 0),
    cpu_millis   bigint NOT NULL DEFAULT 0 CHECK (cpu_millis >= 0),
    memory_bytes bigint NOT NULL DEFAULT 0 CHECK (memory_bytes >= 0)
);

-- Per-user quota overrides; a NULL column takes the tenant's per-user default (settings
-- key 'sessions').
CREATE TABLE session_user_quotas (
    user_id          text PRIMARY KEY,
    max_sessions     integer CHECK (max_sessions >= 0),
    max_cpu_millis   bigint CHECK (max_cpu_millis >= 0),
    max_memory_bytes bigint CHECK (max_memory_bytes >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- +goose Down
DROP TABLE session_user_quotas;
DROP TABLE session_usage;
DROP TABLE session_idempotency;
DROP TABLE session_events;
DROP TABLE sessions;
