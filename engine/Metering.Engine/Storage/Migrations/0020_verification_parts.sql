-- Commissioned verification in parts: the probe's figure (the fleet validation in force, for
-- the models its inventory holds) plus the commissioned verifier's figure per model it measured
-- (Ascend, AMD and other models the probe cannot reach). The stage's total against the batch's
-- bar is their sum, and each part keeps where it came from. The devices the verifier confirmed
-- per model bound ingest where no validation in force covers that model.

-- The parts of one recorded verification stage (application_stages.stage_no): written once, with
-- the stage, never changed. A later verification of the same application (after a
-- reconsideration) records its own parts under its own stage number.
CREATE TABLE verification_parts (
    provider_id        text    NOT NULL,
    application_id     bigint  NOT NULL,
    stage_no           integer NOT NULL,
    part_no            integer NOT NULL CHECK (part_no > 0),
    -- 'probe': the fleet validation named by validation_id; 'verifier': the commissioned
    -- verifier's figure for device_model, over the devices it confirmed.
    source             text    NOT NULL CHECK (source IN ('probe', 'verifier')),
    validation_id      bigint,
    device_model       text,
    devices            bigint  CHECK (devices > 0),
    fp16_gflops        bigint  NOT NULL CHECK (fp16_gflops >= 0),
    PRIMARY KEY (provider_id, application_id, stage_no, part_no),
    -- Deferred: the parts are written while the stage's rule runs, just before its stage record.
    FOREIGN KEY (provider_id, application_id, stage_no) REFERENCES application_stages DEFERRABLE INITIALLY DEFERRED,
    CHECK (CASE source
        WHEN 'probe' THEN validation_id IS NOT NULL AND device_model IS NULL AND devices IS NULL
        ELSE validation_id IS NULL AND device_model IS NOT NULL AND devices IS NOT NULL AND fp16_gflops > 0 END)
);

-- A model is counted once per stage.
CREATE UNIQUE INDEX verification_parts_one_model ON verification_parts (provider_id, application_id, stage_no, device_model) WHERE device_model IS NOT NULL;

-- The commissioned verifier's parts of a four-eyes proposal, written with the proposal and never
-- changed, so that the approver approves exactly the parts proposed.
CREATE TABLE stage_proposal_parts (
    provider_id        text    NOT NULL,
    application_id     bigint  NOT NULL,
    proposal_no        integer NOT NULL,
    device_model       text    NOT NULL,
    devices            bigint  NOT NULL CHECK (devices > 0),
    fp16_gflops        bigint  NOT NULL CHECK (fp16_gflops > 0),
    PRIMARY KEY (provider_id, application_id, proposal_no, device_model),
    FOREIGN KEY (provider_id, application_id, proposal_no) REFERENCES stage_proposals
);
