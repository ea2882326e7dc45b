-- +goose Up
-- One row per running agent-gateway replica. Its heartbeat is the liveness of every owner
-- row that names the replica (agent_directory.owner_gateway = id): a replica stamps this
-- one row every couple of seconds instead of re-stamping the owner row of each of its
-- thousands of agents. Ownership itself stays per connection (owner_conn, newest claim
-- wins); only the liveness moved here. A replica deletes its row when it stops cleanly; the
-- row of one that died stays with a heartbeat that no longer advances, so whoever reads an
-- owner's liveness (now() - heartbeat, on the database's clock) sees it age, and an owner
-- row whose replica row is missing has no live owner.
--
-- advertise_url is where the replica serves its HTTP API to the other replicas (its
-- --advertise-url): a browser's session stream that lands on another replica is forwarded
-- there. It is read together with heartbeat, so a replica that died (its heartbeat stops)
-- or stopped (its row is gone) is never forwarded to. NULL when it advertises none; its
-- agents' streams are then refused elsewhere with a Retry-After.
CREATE TABLE platform.gateway_replicas (
    id            text PRIMARY KEY,
    heartbeat     timestamptz NOT NULL DEFAULT now(),
    advertise_url text
);

-- The per-agent stamp it replaces; nothing reads it any more.
ALTER TABLE platform.agent_directory DROP COLUMN owner_heartbeat;

-- +goose Down
ALTER TABLE platform.agent_directory ADD COLUMN owner_heartbeat timestamptz;
DROP TABLE platform.gateway_replicas;
