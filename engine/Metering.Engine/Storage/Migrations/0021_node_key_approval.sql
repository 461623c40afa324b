-- Node keys bound to hardware and approved by an operator (issue 14). A key is registered with the
-- UUIDs of its node's devices and signs nothing until an operator approves it; each approval is
-- evidence, written once. A fleet validation that a redeclaration closes while one of its sampled
-- nodes has failed completes with its pending nodes counted as failed (abandoned_nodes), so that
-- its figure stays binding. See engine/Metering.Engine/Capacity/README.md.

-- Keys registered before this migration carry no UUIDs and no approval: they sign nothing until
-- the provider registers the node again with its UUIDs and an operator approves that key.
ALTER TABLE capacity_node_keys ADD COLUMN device_uuids text[] NOT NULL DEFAULT '{}'
    CHECK (cardinality(device_uuids) <= 64);

-- Who else holds a UUID is asked on every registration, across providers.
CREATE INDEX capacity_node_keys_device_uuids ON capacity_node_keys USING gin (device_uuids);

CREATE TABLE capacity_node_key_approvals (
    provider_id  text        NOT NULL,
    node_id      text        NOT NULL,
    key_version  integer     NOT NULL,
    approved_at  timestamptz NOT NULL,
    approved_by  text        NOT NULL,
    reasons      text        NOT NULL CHECK (length(reasons) BETWEEN 1 AND 20000),
    PRIMARY KEY (provider_id, node_id, key_version),
    FOREIGN KEY (provider_id, node_id, key_version) REFERENCES capacity_node_keys
);

ALTER TABLE capacity_validations ADD COLUMN abandoned_nodes integer NOT NULL DEFAULT 0 CHECK (abandoned_nodes >= 0);
