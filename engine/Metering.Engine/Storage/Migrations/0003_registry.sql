-- Registry: organisations, licences, integrity lists, admission batches, applications and their
-- workflow, admitted service items, fee schedules, credentials, and the history of every change.
-- Provider-keyed tables carry provider_id first in their primary key (see 0001).

CREATE TABLE organisations (
    provider_id      text        NOT NULL PRIMARY KEY CHECK (length(provider_id) = 18),
    name             text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    legal_form       text        NOT NULL CHECK (legal_form IN ('enterprise', 'public_institution', 'branch')),
    district         text        NOT NULL,
    established_on   date        NOT NULL,
    -- Bumped by every change that can change what ingest accepts from this organisation; an
    -- ingest commit reads it FOR SHARE, so a registry change and a commit are ordered.
    admission_epoch  bigint      NOT NULL DEFAULT 0,
    registered_at    timestamptz NOT NULL
);

COMMENT ON TABLE organisations IS 'Organisations known to the registry; provider_id is the unified social credit code.';

CREATE TABLE licences (
    provider_id     text NOT NULL REFERENCES organisations,
    licence_number  text NOT NULL CHECK (length(licence_number) BETWEEN 1 AND 64),
    issuer          text NOT NULL CHECK (length(issuer) BETWEEN 1 AND 200),
    valid_from      date NOT NULL,
    valid_until     date NOT NULL,
    CHECK (valid_until >= valid_from),
    PRIMARY KEY (provider_id, licence_number)
);

COMMENT ON TABLE licences IS 'IDC/ISP value-added telecom licences; both dates inclusive.';

CREATE TABLE integrity_listings (
    provider_id   text   NOT NULL,
    listing_id    bigint GENERATED ALWAYS AS IDENTITY,
    list_name     text   NOT NULL CHECK (list_name IN ('research_integrity', 'serious_dishonesty', 'overdue_acceptance', 'funding_restricted', 'integrity_anomaly')),
    listed_from   date   NOT NULL,
    listed_until  date,
    reason        text   NOT NULL,
    CHECK (listed_until IS NULL OR listed_until >= listed_from),
    PRIMARY KEY (provider_id, listing_id)
);

COMMENT ON TABLE integrity_listings IS 'Integrity-list entries. Organisations need not be registered to be listed.';

CREATE TABLE admission_batches (
    batch_id            text        NOT NULL PRIMARY KEY,
    window_opens_at     timestamptz NOT NULL,
    window_closes_at    timestamptz NOT NULL,
    validity_ends_at    timestamptz NOT NULL,
    public_notice_days  integer     NOT NULL CHECK (public_notice_days BETWEEN 0 AND 30),
    audit_report_year   integer     NOT NULL CHECK (audit_report_year BETWEEN 2000 AND 2100),
    CHECK (window_closes_at > window_opens_at),
    CHECK (validity_ends_at > window_closes_at)
);

-- The 2025 batch as the guide sets it: filing 2025-03-14 to 2025-04-07 18:00 (Asia/Shanghai),
-- valid to the end of 2026-12-31. Five days of public notice is the bureau's usual practice;
-- operators change it with PutAdmissionBatch.
INSERT INTO admission_batches VALUES
    ('2025', '2025-03-14 00:00:00+08', '2025-04-07 18:00:00+08', '2027-01-01 00:00:00+08', 5, 2024);

-- Voucher holders and applicants. The voucher issue fills and extends this table; the registry
-- reads it because an organisation cannot be both a provider and a voucher holder or applicant.
CREATE TABLE voucher_holders (
    holder_code    text        NOT NULL PRIMARY KEY CHECK (length(holder_code) = 18),
    name           text        NOT NULL,
    status         text        NOT NULL CHECK (status IN ('applicant', 'holder')),
    registered_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE applications (
    provider_id             text        NOT NULL REFERENCES organisations,
    application_id          bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    batch_id                text        NOT NULL REFERENCES admission_batches,
    service_item            text        NOT NULL,
    state                   text        NOT NULL CHECK (state IN ('awaiting_material_review', 'awaiting_verification', 'awaiting_public_notice',
                                                                  'in_public_notice', 'awaiting_admission_notice', 'admitted', 'rejected')),
    filed_at                timestamptz NOT NULL,
    financial_report_kind   text        NOT NULL,
    audit_report_year       integer,
    audit_report_reason     text,
    declared_fp16_gflops    bigint      NOT NULL CHECK (declared_fp16_gflops >= 0),
    verified_fp16_gflops    bigint      CHECK (verified_fp16_gflops >= 0),
    service_content         text        NOT NULL,
    service_standards       text        NOT NULL,
    metering_proof_stream   text        NOT NULL,
    metering_proof_records  bigint      NOT NULL,
    fee_lines               jsonb       NOT NULL,
    intermediary            text,
    notice_ends_at          timestamptz,
    decided_at              timestamptz,
    notice_number           text        UNIQUE,
    PRIMARY KEY (provider_id, application_id)
);

-- At most one application in progress per service item. An admitted item is applied for again
-- only once its admission has ended; the workflow checks that under the organisation's lock.
CREATE UNIQUE INDEX applications_one_pending_per_item ON applications (provider_id, service_item) WHERE state NOT IN ('admitted', 'rejected');

CREATE TABLE application_materials (
    provider_id     text    NOT NULL,
    application_id  bigint  NOT NULL,
    kind            text    NOT NULL,
    document_ref    text    NOT NULL,
    sha256          bytea   NOT NULL CHECK (length(sha256) = 32),
    PRIMARY KEY (provider_id, application_id, kind),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications
);

CREATE TABLE application_capacity (
    provider_id     text    NOT NULL,
    application_id  bigint  NOT NULL,
    site            text    NOT NULL,
    device_model    text    NOT NULL,
    device_count    integer NOT NULL CHECK (device_count > 0),
    PRIMARY KEY (provider_id, application_id, site, device_model),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications
);

CREATE TABLE application_stages (
    provider_id     text        NOT NULL,
    application_id  bigint      NOT NULL,
    stage_no        integer     NOT NULL,
    stage           text        NOT NULL,
    actor           text        NOT NULL,
    at              timestamptz NOT NULL,
    outcome         text        NOT NULL,
    reasons         text        NOT NULL DEFAULT '',
    PRIMARY KEY (provider_id, application_id, stage_no),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications
);

CREATE TABLE service_items (
    provider_id      text        NOT NULL REFERENCES organisations,
    service_item     text        NOT NULL,
    application_id   bigint      NOT NULL,
    notice_number    text        NOT NULL,
    valid_from       timestamptz NOT NULL,
    -- The batch's validity end; an exit sets ended_at earlier.
    validity_ends_at timestamptz NOT NULL,
    ended_at         timestamptz,
    end_kind         text        CHECK (end_kind IN ('withdrawn', 'revoked')),
    end_reason       text,
    CHECK ((ended_at IS NULL) = (end_kind IS NULL)),
    CHECK (validity_ends_at > valid_from),
    PRIMARY KEY (provider_id, service_item, application_id),
    FOREIGN KEY (provider_id, application_id) REFERENCES applications
);

CREATE TABLE service_item_suspensions (
    provider_id      text        NOT NULL,
    service_item     text        NOT NULL,
    application_id   bigint      NOT NULL,
    suspended_at     timestamptz NOT NULL,
    reinstated_at    timestamptz,
    reason           text        NOT NULL,
    CHECK (reinstated_at IS NULL OR reinstated_at >= suspended_at),
    PRIMARY KEY (provider_id, service_item, application_id, suspended_at),
    FOREIGN KEY (provider_id, service_item, application_id) REFERENCES service_items
);

CREATE TABLE fee_schedules (
    provider_id     text        NOT NULL,
    service_item    text        NOT NULL,
    version         integer     NOT NULL CHECK (version > 0),
    effective_from  timestamptz NOT NULL,
    filed_at        timestamptz NOT NULL,
    lines           jsonb       NOT NULL,
    PRIMARY KEY (provider_id, service_item, version)
);

COMMENT ON COLUMN fee_schedules.lines IS 'Array of {"deviceModel", "unit" (per_pflops_hour | per_card_hour), "priceFen"}; fen are integers.';

-- API keys, held only as SHA-256 hashes. A provider's subject is its credit code.
CREATE TABLE credentials (
    credential_id  bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_sha256     bytea       NOT NULL UNIQUE CHECK (length(key_sha256) = 32),
    role           text        NOT NULL CHECK (role IN ('provider', 'operator', 'auditor', 'settlement')),
    subject        text        NOT NULL CHECK (length(subject) BETWEEN 1 AND 64),
    label          text        NOT NULL DEFAULT '',
    issued_by      text        NOT NULL,
    issued_at      timestamptz NOT NULL,
    revoked_by     text,
    revoked_at     timestamptz,
    CHECK ((revoked_at IS NULL) = (revoked_by IS NULL))
);

-- Every registry change: who, when, what, before and after. Written in the same transaction
-- as the change, and never updated or deleted.
CREATE TABLE registry_history (
    change_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor        text        NOT NULL,
    role         text        NOT NULL,
    at           timestamptz NOT NULL,
    provider_id  text,
    entity       text        NOT NULL,
    entity_key   text        NOT NULL,
    action       text        NOT NULL,
    before       jsonb,
    after        jsonb
);

CREATE INDEX registry_history_by_provider ON registry_history (provider_id, change_id);

CREATE FUNCTION registry_history_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'registry_history is append-only: % refused', TG_OP;
END $$;

CREATE TRIGGER registry_history_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON registry_history
    FOR EACH STATEMENT EXECUTE FUNCTION registry_history_is_append_only();
