-- Reconsideration (复核) of a refusal. A refused applicant may ask, within its batch's number of
-- days from the refusal, for the refusal to be reconsidered; an operator upholds the request (the
-- application goes back to the stage it was refused at, or on to the admission notice when it was
-- refused at the decision) or dismisses it, with reasons. Each refusal is reconsidered at most
-- once. Upholding a refusal at the decision admits, so it takes a second operator's approval like
-- the admission decision itself (a stage_proposals row of stage 'reconsideration').

-- The guide names no period for reconsideration; 15 days is the programme's choice, and a batch
-- may set 1 to 60.
ALTER TABLE admission_batches ADD COLUMN reconsideration_days integer NOT NULL DEFAULT 15 CHECK (reconsideration_days BETWEEN 1 AND 60);
COMMENT ON COLUMN admission_batches.reconsideration_days IS 'Days from a refusal within which the applicant may ask for its reconsideration (复核); the programme''s choice, since the guide names none.';

-- While a reconsideration is pending the application is neither rejected nor in progress at a
-- stage; it counts as in progress, so the one-pending-per-item index keeps a second application
-- for the same item out until the reconsideration is decided.
ALTER TABLE applications DROP CONSTRAINT applications_state_check;
ALTER TABLE applications ADD CONSTRAINT applications_state_check CHECK (state IN ('awaiting_material_review', 'awaiting_verification',
    'awaiting_public_notice', 'in_public_notice', 'awaiting_admission_notice', 'admitted', 'rejected', 'under_reconsideration'));

ALTER TABLE stage_proposals DROP CONSTRAINT stage_proposals_stage_check;
ALTER TABLE stage_proposals ADD CONSTRAINT stage_proposals_stage_check CHECK (stage IN ('verification', 'decision', 'reconsideration'));

CREATE TABLE reconsiderations (
    provider_id        text        NOT NULL,
    application_id     bigint      NOT NULL,
    -- The refusal reconsidered: its stage record, stage name and time.
    refused_stage_no   integer     NOT NULL,
    refused_stage      text        NOT NULL CHECK (refused_stage IN ('material_review', 'verification', 'public_notice', 'decision')),
    refused_at         timestamptz NOT NULL,
    -- The last instant (exclusive) at which the request could be made, as the batch set it then.
    window_ends_at     timestamptz NOT NULL,
    requested_by       text        NOT NULL,
    requested_at       timestamptz NOT NULL,
    grounds            text        NOT NULL CHECK (length(grounds) > 0),
    -- Null while pending; then 'upheld' or 'dismissed', once.
    outcome            text        CHECK (outcome IN ('upheld', 'dismissed')),
    decided_by         text,
    decided_at         timestamptz,
    reasons            text,
    -- The state the application went to when the decision took effect.
    state_after        text,
    PRIMARY KEY (provider_id, application_id, refused_stage_no),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications,
    CHECK (requested_at < window_ends_at),
    CHECK ((outcome IS NULL) = (decided_at IS NULL) AND (outcome IS NULL) = (decided_by IS NULL)
           AND (outcome IS NULL) = (reasons IS NULL) AND (outcome IS NULL) = (state_after IS NULL))
);

-- At most one pending reconsideration per application.
CREATE UNIQUE INDEX reconsiderations_one_pending ON reconsiderations (application_id) WHERE outcome IS NULL;

-- A reconsideration is decided once, and the request (grounds, who, when, the refusal it names)
-- never changes after it is made.
CREATE FUNCTION reconsideration_decides_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.outcome IS NOT NULL
       OR (NEW.provider_id, NEW.application_id, NEW.refused_stage_no, NEW.refused_stage, NEW.refused_at, NEW.window_ends_at,
           NEW.requested_by, NEW.requested_at, NEW.grounds)
          IS DISTINCT FROM (OLD.provider_id, OLD.application_id, OLD.refused_stage_no, OLD.refused_stage, OLD.refused_at, OLD.window_ends_at,
           OLD.requested_by, OLD.requested_at, OLD.grounds) THEN
        RAISE EXCEPTION 'reconsiderations: reconsideration %/% is decided or its request would change', OLD.application_id, OLD.refused_stage_no
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER reconsiderations_decide_once BEFORE UPDATE ON reconsiderations
    FOR EACH ROW EXECUTE FUNCTION reconsideration_decides_once();
