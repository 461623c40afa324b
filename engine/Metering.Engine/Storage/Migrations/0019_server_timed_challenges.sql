-- Capacity challenges timed on the server's clock (Capacity/README.md, "Timing").
--
-- capacity_challenges: the one instant at which every sampled node of a validation got its
-- nonce, with the allowance and runs in force then. Evidence: written once per validation; its
-- primary key makes a second start impossible.
CREATE TABLE capacity_challenges (
    provider_id      text        NOT NULL,
    validation_id    bigint      NOT NULL,
    issued_at        timestamptz NOT NULL,
    allowance_ms     bigint      NOT NULL CHECK (allowance_ms > 0),
    runs_per_kernel  integer     NOT NULL CHECK (runs_per_kernel > 0),
    PRIMARY KEY (provider_id, validation_id),
    FOREIGN KEY (provider_id, validation_id) REFERENCES capacity_validations
);

-- Each nonce now carries the work the server set for its node and the node's deadline. Written
-- with the nonce; the runtime role's UPDATE stays limited to used_at and attestation_id.
ALTER TABLE capacity_nonces
    ADD COLUMN work_sizes   text        NOT NULL DEFAULT '',
    ADD COLUMN expected_ms  bigint      NOT NULL DEFAULT 0,
    ADD COLUMN deadline_at  timestamptz;

-- Every signed commitment the server received, on time or late, with its own receive time and
-- the time it measured from the challenges' issue. Evidence: one per nonce, never rewritten.
CREATE TABLE capacity_commitments (
    provider_id        text        NOT NULL,
    nonce              bytea       NOT NULL,
    validation_id      bigint      NOT NULL,
    node_id            text        NOT NULL,
    key_version        integer     NOT NULL,
    commitment         bytea       NOT NULL,
    commitment_sha256  bytea       NOT NULL CHECK (length(commitment_sha256) = 32),
    signature          bytea       NOT NULL,
    received_at        timestamptz NOT NULL,
    elapsed_ms         bigint      NOT NULL,
    late               boolean     NOT NULL,
    PRIMARY KEY (provider_id, nonce),
    FOREIGN KEY (provider_id, nonce) REFERENCES capacity_nonces
);

-- Why a sampled node failed without an accepted attestation (a late or missing commitment).
ALTER TABLE capacity_sample_nodes ADD COLUMN detail text NOT NULL DEFAULT '';
