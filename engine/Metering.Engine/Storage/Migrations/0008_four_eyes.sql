-- Four-eyes on the admission decision and on a verification figure an operator typed: one
-- operator proposes, a second, different operator approves, and only then does the stage take
-- effect. A batch may turn it off for a bureau with a single operator.

ALTER TABLE admission_batches ADD COLUMN single_operator_decisions boolean NOT NULL DEFAULT false;

CREATE TABLE stage_proposals (
    provider_id           text        NOT NULL,
    application_id        bigint      NOT NULL,
    proposal_no           integer     NOT NULL CHECK (proposal_no > 0),
    stage                 text        NOT NULL CHECK (stage IN ('verification', 'decision')),
    pass                  boolean     NOT NULL,
    verified_fp16_gflops  bigint      NOT NULL DEFAULT 0 CHECK (verified_fp16_gflops >= 0),
    reasons               text        NOT NULL DEFAULT '',
    proposed_by           text        NOT NULL,
    proposed_at           timestamptz NOT NULL,
    -- Open while NULL; 'approved' when a second operator approved it, 'superseded' when a newer
    -- proposal replaced it.
    closed_as             text        CHECK (closed_as IN ('approved', 'superseded')),
    closed_by             text,
    closed_at             timestamptz,
    PRIMARY KEY (provider_id, application_id, proposal_no),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications,
    CHECK ((closed_as IS NULL) = (closed_at IS NULL))
);

-- At most one open proposal per application.
CREATE UNIQUE INDEX stage_proposals_one_open ON stage_proposals (application_id) WHERE closed_as IS NULL;
