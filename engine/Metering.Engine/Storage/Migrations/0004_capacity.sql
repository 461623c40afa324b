-- Capacity: node keys, declared inventories, fleet validations with their probe samples, nonces,
-- attestations and device results; and the per-second device concurrency that ingest checks
-- against the provider's fleet. Provider-keyed tables carry provider_id first in their primary
-- key (see 0001). See engine/Metering.Engine/Capacity/README.md.

-- A node's ECDSA P-256 public keys; the highest key_version is the current one.
CREATE TABLE capacity_node_keys (
    provider_id      text        NOT NULL REFERENCES organisations,
    node_id          text        NOT NULL CHECK (length(node_id) BETWEEN 1 AND 64),
    key_version      integer     NOT NULL CHECK (key_version > 0),
    public_key_spki  bytea       NOT NULL,
    key_sha256       bytea       NOT NULL CHECK (length(key_sha256) = 32),
    registered_at    timestamptz NOT NULL,
    registered_by    text        NOT NULL,
    PRIMARY KEY (provider_id, node_id, key_version)
);

-- Inventory versions; each declaration is a new version and replaces the previous one.
CREATE TABLE capacity_inventories (
    provider_id           text        NOT NULL REFERENCES organisations,
    inventory_version     integer     NOT NULL CHECK (inventory_version > 0),
    declared_at           timestamptz NOT NULL,
    declared_by           text        NOT NULL,
    node_count            integer     NOT NULL CHECK (node_count > 0),
    device_count          bigint      NOT NULL CHECK (device_count > 0),
    declared_fp16_gflops  bigint      NOT NULL CHECK (declared_fp16_gflops > 0),
    catalog_version       text        NOT NULL,
    PRIMARY KEY (provider_id, inventory_version)
);

CREATE TABLE capacity_inventory_nodes (
    provider_id        text    NOT NULL,
    inventory_version  integer NOT NULL,
    node_id            text    NOT NULL,
    site               text    NOT NULL CHECK (length(site) BETWEEN 1 AND 64),
    device_model       text    NOT NULL,
    device_count       integer NOT NULL CHECK (device_count BETWEEN 1 AND 64),
    fp16_gflops        bigint  NOT NULL CHECK (fp16_gflops > 0),
    PRIMARY KEY (provider_id, inventory_version, node_id),
    FOREIGN KEY (provider_id, inventory_version) REFERENCES capacity_inventories
);

-- One fleet validation per inventory version. The sample is derived from sample_seed (drawn
-- from a cryptographic RNG) and the inventory, so an auditor can re-derive it.
CREATE TABLE capacity_validations (
    provider_id                text        NOT NULL,
    validation_id              bigint      GENERATED ALWAYS AS IDENTITY,
    inventory_version          integer     NOT NULL,
    state                      text        NOT NULL CHECK (state IN ('collecting', 'complete', 'superseded')),
    drawn_at                   timestamptz NOT NULL,
    sample_seed                bytea       NOT NULL CHECK (length(sample_seed) = 32),
    sample_size                integer     NOT NULL CHECK (sample_size > 0),
    confidence_percent         integer     NOT NULL,
    conforming_percent         integer     NOT NULL,
    catalog_version            text        NOT NULL,
    passed_nodes               integer     NOT NULL DEFAULT 0,
    failed_nodes               integer     NOT NULL DEFAULT 0,
    nonconforming_nodes_bound  integer,
    pass_rate_lower_bound_ppm  integer,
    verified_fp16_gflops       bigint      CHECK (verified_fp16_gflops >= 0),
    completed_at               timestamptz,
    expires_at                 timestamptz,
    CHECK ((state = 'complete') = (completed_at IS NOT NULL)),
    CHECK ((completed_at IS NULL) = (verified_fp16_gflops IS NULL)),
    PRIMARY KEY (provider_id, validation_id),
    UNIQUE (provider_id, inventory_version),
    FOREIGN KEY (provider_id, inventory_version) REFERENCES capacity_inventories
);

-- At most one validation collecting attestations per provider.
CREATE UNIQUE INDEX capacity_validations_one_collecting ON capacity_validations (provider_id) WHERE state = 'collecting';

CREATE TABLE capacity_sample_nodes (
    provider_id     text    NOT NULL,
    validation_id   bigint  NOT NULL,
    node_id         text    NOT NULL,
    draw_order      integer NOT NULL CHECK (draw_order > 0),
    outcome         text    NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending', 'passed', 'failed', 'awaiting_review')),
    attestation_id  bigint,
    PRIMARY KEY (provider_id, validation_id, node_id),
    UNIQUE (provider_id, validation_id, draw_order),
    FOREIGN KEY (provider_id, validation_id) REFERENCES capacity_validations
);

CREATE TABLE capacity_nonces (
    provider_id     text        NOT NULL,
    nonce           bytea       NOT NULL CHECK (length(nonce) = 32),
    validation_id   bigint      NOT NULL,
    node_id         text        NOT NULL,
    issued_at       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    attestation_id  bigint,
    CHECK (expires_at > issued_at),
    PRIMARY KEY (provider_id, nonce),
    FOREIGN KEY (provider_id, validation_id, node_id) REFERENCES capacity_sample_nodes
);

-- Every attestation whose signature verified: accepted ones and, as evidence, refused ones.
-- The signed bytes and the signature are kept, so the signature can be checked again.
CREATE TABLE capacity_attestations (
    provider_id     text        NOT NULL,
    attestation_id  bigint      GENERATED ALWAYS AS IDENTITY,
    validation_id   bigint      NOT NULL,
    node_id         text        NOT NULL,
    key_version     integer     NOT NULL,
    report_sha256   bytea       NOT NULL CHECK (length(report_sha256) = 32),
    report_encoded  bytea       NOT NULL,
    signature       bytea       NOT NULL,
    received_at     timestamptz NOT NULL,
    accepted        boolean     NOT NULL,
    refusal         text,
    detail          text        NOT NULL DEFAULT '',
    CHECK (accepted = (refusal IS NULL)),
    PRIMARY KEY (provider_id, attestation_id),
    FOREIGN KEY (provider_id, validation_id) REFERENCES capacity_validations
);

-- A report is accepted once.
CREATE UNIQUE INDEX capacity_attestations_accepted_once ON capacity_attestations (report_sha256) WHERE accepted;

CREATE TABLE capacity_device_results (
    provider_id      text    NOT NULL,
    attestation_id   bigint  NOT NULL,
    device_index     integer NOT NULL,
    reported_name    text    NOT NULL,
    multiprocessors  integer NOT NULL,
    device_model     text,
    outcome          text    NOT NULL CHECK (outcome IN ('healthy', 'unhealthy', 'model_mismatch', 'awaiting_review', 'rejected', 'undeclared')),
    detail           text    NOT NULL,
    kernels          jsonb   NOT NULL,
    reviewed_by      text,
    reviewed_at      timestamptz,
    PRIMARY KEY (provider_id, attestation_id, device_index),
    FOREIGN KEY (provider_id, attestation_id) REFERENCES capacity_attestations
);

COMMENT ON COLUMN capacity_device_results.kernels IS 'Array of {"kernel", "path", "rate", "unit", "reference", "peak", "judged"}; rates in MFLOP/s or MB/s.';

-- Operators' decisions on device names the catalog does not list: later reports of the same
-- name and multiprocessor count are judged as that model without another review.
CREATE TABLE capacity_model_aliases (
    reported_name    text        NOT NULL,
    multiprocessors  integer     NOT NULL,
    device_model     text        NOT NULL,
    decided_by       text        NOT NULL,
    decided_at       timestamptz NOT NULL,
    PRIMARY KEY (reported_name, multiprocessors)
);

-- Per-second device concurrency of each provider's usage, per model and share denominator: for
-- each minute, 60 sums of device_count × share_numerator over the records that cover that whole
-- second, in units of 1/share_denominator of a device. Written by ingest in the commit's
-- transaction (see Ingest/FleetConcurrency.cs); rows for one denominator are kept apart so that
-- the sum stays an exact integer.
CREATE TABLE usage_concurrency (
    provider_id        text        NOT NULL,
    device_model       text        NOT NULL,
    minute_at          timestamptz NOT NULL,
    share_denominator  integer     NOT NULL CHECK (share_denominator > 0),
    levels             bigint[]    NOT NULL CHECK (array_length(levels, 1) = 60),
    PRIMARY KEY (provider_id, device_model, minute_at, share_denominator)
);

-- Capacity evidence is never rewritten; sample outcomes, nonces and validations move forward
-- through the workflow and are updated in place, with their history in the attestations.
CREATE TRIGGER capacity_attestations_append_only BEFORE UPDATE OR DELETE ON capacity_attestations
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER capacity_node_keys_append_only BEFORE UPDATE OR DELETE ON capacity_node_keys
    FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
