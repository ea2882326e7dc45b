-- +goose Up
-- Where the replica that owns an agent's tunnel serves its HTTP API to the other replicas,
-- written with owner_gateway by the same claim: a browser's stream that lands on another
-- replica is forwarded there. It is read only together with owner_heartbeat, so a replica
-- that died holding the row (its heartbeat stops) is never forwarded to. NULL when the
-- owner advertises no address; such an owner's streams are refused elsewhere as before.
ALTER TABLE platform.agent_directory ADD COLUMN owner_url text;

-- +goose Down
ALTER TABLE platform.agent_directory DROP COLUMN owner_url;
