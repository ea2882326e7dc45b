-- +goose Up
-- One row per running agent-gateway replica. Its heartbeat is the liveness of every owner
-- row that names the replica (agent_directory.owner_gateway = id): a replica stamps this
-- one row every couple of seconds instead of re-stamping the owner row of each of its
-- thousands of agents. Ownership itself stays per connection (owner_conn, newest claim
-- wins); only the liveness moved here. A replica deletes its row when it stops cleanly; the
-- row of one that died stays with a heartbeat that no longer advances, so whoever reads an
-- owner's liveness (now() - heartbeat, on the database's clock) sees it age, and an owner
-- row whose replica row is missing has no live owner.
CREATE TABLE platform.gateway_replicas (
    id        text PRIMARY KEY,
    heartbeat timestamptz NOT NULL DEFAULT now()
);

-- The per-agent stamp it replaces; nothing reads it any more.
ALTER TABLE platform.agent_directory DROP COLUMN owner_heartbeat;

-- +goose Down
ALTER TABLE platform.agent_directory ADD COLUMN owner_heartbeat timestamptz;
DROP TABLE platform.gateway_replicas;
