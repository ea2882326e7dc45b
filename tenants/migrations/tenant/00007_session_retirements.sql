-- +goose Up
-- A session that leaves an agent (moved to another, or unassigned) must still be removed
-- from it. session_assignments holds one row per session, naming its current agent, so
-- the agent it left keeps a retirement here: desired state "deleted" at a generation above
-- anything it applied, pending (and pushed like any assignment) until it acknowledges.
CREATE TABLE session_retirements (
    session_id       text NOT NULL,
    agent_id         text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    generation       bigint NOT NULL CHECK (generation >= 1),
    acked_generation bigint NOT NULL DEFAULT 0 CHECK (acked_generation >= 0),
    ack_error        jsonb,
    trace_parent     text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (session_id, agent_id)
);
CREATE INDEX session_retirements_agent ON session_retirements (agent_id);
CREATE INDEX session_retirements_pending ON session_retirements (agent_id) WHERE generation > acked_generation;

-- +goose Down
DROP TABLE session_retirements;
