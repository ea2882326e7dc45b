-- +goose Up
-- Session traffic as the agent-gateway sees it: the bytes a session's streams carried and
-- when they last carried any. The gateway owns this table and writes it in batches (one
-- statement per tenant every few seconds, only for sessions that had traffic), apart
-- from sessions so that traffic never contends with the lifecycle's row locks. The
-- sessions service's idle timer reads last_traffic_at beside sessions.last_activity.
-- No foreign key: the gateway must not fail a batch over a session deleted meanwhile;
-- the sessions service removes rows of purged sessions.
CREATE TABLE session_traffic (
    session_id      text PRIMARY KEY,
    last_traffic_at timestamptz NOT NULL,
    bytes_in        bigint NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
    bytes_out       bigint NOT NULL DEFAULT 0 CHECK (bytes_out >= 0)
);

-- +goose Down
DROP TABLE session_traffic;
