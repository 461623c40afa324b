-- Vouchers (训力券), redemption claims, the double-entry ledger and nightly settlement.
-- Money is in fen (bigint), usage in nano-PFLOPS·h (usage_npfh) and card-milliseconds; nothing
-- here is a float. Provider-keyed tables carry provider_id first in their primary key (see 0001).
-- The chart of accounts, the rounding rule and the canonical statement form are documented in
-- proto/metering/v1/settlement.md.

-- ---------------------------------------------------------------- the usage a day's settlement reads

-- Usage is partitioned by month, and its primary key leads with the provider, so without this a
-- day's settlement would scan its whole month. Records arrive in roughly the order they start, so
-- a block-range index on start_at is small and precise, and an insert into the unsummarised tail
-- of a partition costs nothing; autovacuum summarises new ranges.
CREATE INDEX usage_records_start_brin ON usage_records USING brin (start_at) WITH (pages_per_range = 32, autosummarize = on);

-- ---------------------------------------------------------------- holders

-- The registry (0003) created voucher_holders with the columns it reads. The voucher book owns
-- the table from here. Rows the registry's tests insert carry only the original columns, so the
-- new ones are nullable; the voucher book always fills them.
ALTER TABLE voucher_holders
    ADD COLUMN holder_type    text CHECK (holder_type IN ('enterprise', 'university', 'research_institute')),
    ADD COLUMN district       text,
    ADD COLUMN established_on date,
    ADD COLUMN registered_by  text,
    ADD COLUMN approved_by    text,
    ADD COLUMN approved_at    timestamptz;

ALTER TABLE voucher_holders ADD CONSTRAINT voucher_holders_name_length CHECK (length(name) BETWEEN 1 AND 200);

COMMENT ON COLUMN voucher_holders.status IS 'applicant: registered, not yet approved to hold vouchers; holder: approved.';

-- ---------------------------------------------------------------- programme parameters

-- One row per version of a programme year's parameters. A claim uses the latest version whose
-- effective_from has passed when it is filed, and records that version.
CREATE TABLE programme_parameters (
    programme_year         integer     NOT NULL CHECK (programme_year BETWEEN 2024 AND 2100),
    version                integer     NOT NULL CHECK (version > 0),
    effective_from         timestamptz NOT NULL,
    support_ratio_bp       integer     NOT NULL CHECK (support_ratio_bp BETWEEN 1 AND 10000),
    startup_ratio_bp       integer     NOT NULL CHECK (startup_ratio_bp BETWEEN 1 AND 10000),
    annual_cap_fen         bigint      NOT NULL CHECK (annual_cap_fen > 0),
    stacking_cap_bp        integer     NOT NULL CHECK (stacking_cap_bp BETWEEN 1 AND 10000),
    min_annual_rental_fen  bigint      NOT NULL CHECK (min_annual_rental_fen >= 0),
    payee_mode             text        NOT NULL CHECK (payee_mode IN ('holder_reimbursement', 'provider_deduction')),
    hold_days              integer     NOT NULL CHECK (hold_days BETWEEN 1 AND 400),
    recorded_by            text        NOT NULL,
    recorded_at            timestamptz NOT NULL,
    PRIMARY KEY (programme_year, version)
);

COMMENT ON COLUMN programme_parameters.support_ratio_bp IS 'Share of the eligible fee a voucher pays, in basis points (5000 = 50%).';
COMMENT ON COLUMN programme_parameters.stacking_cap_bp IS 'Most public support, from all sources, for one contract, in basis points of its amount.';
COMMENT ON COLUMN programme_parameters.min_annual_rental_fen IS 'Least total contract amount a holder must have in the year before a voucher is issued or claimed.';
COMMENT ON COLUMN programme_parameters.hold_days IS 'Days a claim''s hold waits for its usage to be settled before it expires.';

-- The programme measures as published: 50% (60% for start-ups), 10,000,000 CNY per entity per
-- year, public support for one contract at most 50% of it, at least 500,000 CNY of rented
-- compute a year, and Shenzhen's payee mode (the holder is reimbursed after the spend).
INSERT INTO programme_parameters VALUES
    (2025, 1, '2025-01-01 00:00:00+08', 5000, 6000, 1000000000, 5000, 50000000, 'holder_reimbursement', 90, 'migration 0005', '2025-01-01 00:00:00+08'),
    (2026, 1, '2026-01-01 00:00:00+08', 5000, 6000, 1000000000, 5000, 50000000, 'holder_reimbursement', 90, 'migration 0005', '2026-01-01 00:00:00+08'),
    (2027, 1, '2027-01-01 00:00:00+08', 5000, 6000, 1000000000, 5000, 50000000, 'holder_reimbursement', 90, 'migration 0005', '2027-01-01 00:00:00+08');

-- ---------------------------------------------------------------- contracts

-- A service contract between a holder and an admitted provider's service item. Dates are
-- Asia/Shanghai calendar dates, both inclusive. Contracts of one holder with one provider never
-- overlap, so that every usage record maps to at most one contract (checked under the holder's
-- row lock when a contract is recorded).
CREATE TABLE contracts (
    provider_id                text        NOT NULL,
    contract_id                bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    holder_code                text        NOT NULL REFERENCES voucher_holders,
    service_item               text        NOT NULL,
    application_id             bigint      NOT NULL,
    contract_number            text        NOT NULL CHECK (length(contract_number) BETWEEN 1 AND 64),
    signed_on                  date        NOT NULL,
    starts_on                  date        NOT NULL,
    ends_on                    date        NOT NULL,
    amount_fen                 bigint      NOT NULL CHECK (amount_fen > 0),
    fee_schedule_version       integer     NOT NULL,
    fee_unit                   text        NOT NULL CHECK (fee_unit IN ('per_pflops_hour', 'per_card_hour')),
    non_related_party          boolean     NOT NULL CHECK (non_related_party),
    declaration_ref            text        NOT NULL CHECK (length(declaration_ref) BETWEEN 1 AND 256),
    startup                    boolean     NOT NULL,
    recorded_by                text        NOT NULL,
    recorded_at                timestamptz NOT NULL,
    CHECK (ends_on >= starts_on),
    CHECK (signed_on <= starts_on),
    UNIQUE (provider_id, contract_number),
    PRIMARY KEY (provider_id, contract_id),
    FOREIGN KEY (provider_id, service_item, application_id) REFERENCES service_items,
    FOREIGN KEY (provider_id, service_item, fee_schedule_version) REFERENCES fee_schedules
);

CREATE INDEX contracts_by_holder ON contracts (holder_code, provider_id, starts_on);

COMMENT ON COLUMN contracts.startup IS 'The holder was established under one year before signed_on: the start-up support ratio applies for the contract''s life.';

-- Public support for a contract from other sources, which counts against its stacking cap.
CREATE TABLE contract_other_support (
    provider_id   text        NOT NULL,
    contract_id   bigint      NOT NULL,
    support_id    bigint      GENERATED ALWAYS AS IDENTITY,
    source        text        NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    amount_fen    bigint      NOT NULL CHECK (amount_fen > 0),
    recorded_by   text        NOT NULL,
    recorded_at   timestamptz NOT NULL,
    PRIMARY KEY (provider_id, contract_id, support_id),
    FOREIGN KEY (provider_id, contract_id) REFERENCES contracts
);

-- ---------------------------------------------------------------- vouchers and holds

-- One voucher per contract and programme year. held_fen and posted_fen move only under the
-- voucher's row lock; the CHECK is the last word on "a balance never goes negative".
CREATE TABLE vouchers (
    provider_id      text        NOT NULL,
    voucher_id       bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    contract_id      bigint      NOT NULL,
    holder_code      text        NOT NULL,
    programme_year   integer     NOT NULL,
    face_value_fen   bigint      NOT NULL CHECK (face_value_fen > 0),
    held_fen         bigint      NOT NULL DEFAULT 0,
    posted_fen       bigint      NOT NULL DEFAULT 0,
    valid_from       date        NOT NULL,
    valid_until      date        NOT NULL,
    issued_by        text        NOT NULL,
    issued_at        timestamptz NOT NULL,
    CHECK (held_fen >= 0 AND posted_fen >= 0 AND held_fen + posted_fen <= face_value_fen),
    CHECK (valid_until >= valid_from),
    UNIQUE (contract_id, programme_year),
    PRIMARY KEY (provider_id, voucher_id),
    FOREIGN KEY (provider_id, contract_id) REFERENCES contracts
);

CREATE INDEX vouchers_by_holder ON vouchers (holder_code, programme_year);

COMMENT ON COLUMN vouchers.valid_until IS 'Last day (Asia/Shanghai, inclusive) on which usage may be claimed against the voucher and a claim may be filed.';

-- A redemption claim: metered usage of the holder at the contract's provider, priced with the
-- contract's fee schedule, and the subsidy reserved for it on the voucher.
CREATE TABLE claims (
    provider_id               text        NOT NULL,
    claim_id                  bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    contract_id               bigint      NOT NULL,
    voucher_id                bigint      NOT NULL,
    holder_code               text        NOT NULL,
    job_ids                   text[],
    period_from               timestamptz,
    period_until              timestamptz,
    programme_year            integer     NOT NULL,
    parameters_version        integer     NOT NULL,
    payee_mode                text        NOT NULL CHECK (payee_mode IN ('holder_reimbursement', 'provider_deduction')),
    ratio_bp                  integer     NOT NULL,
    records                   bigint      NOT NULL CHECK (records > 0),
    usage_npfh                bigint      NOT NULL CHECK (usage_npfh >= 0),
    card_ms                   bigint      NOT NULL CHECK (card_ms >= 0),
    eligible_fee_fen          bigint      NOT NULL CHECK (eligible_fee_fen >= 0),
    ratio_subsidy_fen         bigint      NOT NULL CHECK (ratio_subsidy_fen >= 0),
    voucher_remaining_fen     bigint      NOT NULL,
    annual_cap_remaining_fen  bigint      NOT NULL,
    stacking_room_fen         bigint      NOT NULL,
    subsidy_fen               bigint      NOT NULL CHECK (subsidy_fen > 0),
    limited_by                text        NOT NULL CHECK (limited_by IN ('ratio', 'voucher_remaining', 'annual_cap', 'stacking_cap')),
    usage_days                date[]      NOT NULL,
    filed_by                  text        NOT NULL,
    filed_at                  timestamptz NOT NULL,
    CHECK ((job_ids IS NULL) <> (period_from IS NULL)),
    CHECK ((period_from IS NULL) = (period_until IS NULL)),
    CHECK (subsidy_fen <= ratio_subsidy_fen AND subsidy_fen <= voucher_remaining_fen
           AND subsidy_fen <= annual_cap_remaining_fen AND subsidy_fen <= stacking_room_fen),
    PRIMARY KEY (provider_id, claim_id),
    FOREIGN KEY (provider_id, contract_id) REFERENCES contracts,
    FOREIGN KEY (provider_id, voucher_id) REFERENCES vouchers
);

CREATE INDEX claims_by_holder ON claims (holder_code, programme_year);

-- One line per device model of a claim: quantities, the filed unit price and the fee.
CREATE TABLE claim_lines (
    provider_id    text    NOT NULL,
    claim_id       bigint  NOT NULL,
    device_model   text    NOT NULL,
    fee_unit       text    NOT NULL CHECK (fee_unit IN ('per_pflops_hour', 'per_card_hour')),
    records        bigint  NOT NULL CHECK (records > 0),
    usage_npfh     bigint  NOT NULL CHECK (usage_npfh >= 0),
    card_ms        bigint  NOT NULL CHECK (card_ms >= 0),
    price_fen      bigint  NOT NULL CHECK (price_fen > 0),
    fee_fen        bigint  NOT NULL CHECK (fee_fen >= 0),
    PRIMARY KEY (provider_id, claim_id, device_model),
    FOREIGN KEY (provider_id, claim_id) REFERENCES claims
);

-- The two-phase hold of a claim on its voucher: reserved at filing, then posted by the
-- settlement run that has settled all of its usage, or voided by an operator, or expired by
-- the first settlement run whose day ends at or after expires_at.
CREATE TABLE voucher_holds (
    provider_id    text        NOT NULL,
    hold_id        bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    voucher_id     bigint      NOT NULL,
    claim_id       bigint      NOT NULL UNIQUE,
    amount_fen     bigint      NOT NULL CHECK (amount_fen > 0),
    state          text        NOT NULL CHECK (state IN ('reserved', 'posted', 'voided', 'expired')),
    reserved_at    timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    closed_at      timestamptz,
    closed_by_run  bigint,
    close_reason   text,
    CHECK ((state = 'reserved') = (closed_at IS NULL)),
    PRIMARY KEY (provider_id, hold_id),
    FOREIGN KEY (provider_id, voucher_id) REFERENCES vouchers,
    FOREIGN KEY (provider_id, claim_id) REFERENCES claims
);

CREATE INDEX voucher_holds_reserved ON voucher_holds (voucher_id) WHERE state = 'reserved';

-- Each usage record is redeemed at most once: the primary key is the record's own identity.
-- A voided or expired claim releases its records (their rows are deleted), so they can be
-- claimed again.
CREATE TABLE redeemed_usage (
    provider_id  text   NOT NULL,
    stream_id    text   NOT NULL,
    sequence     bigint NOT NULL,
    claim_id     bigint NOT NULL,
    PRIMARY KEY (provider_id, stream_id, sequence),
    FOREIGN KEY (provider_id, claim_id) REFERENCES claims
);

CREATE INDEX redeemed_usage_by_claim ON redeemed_usage (provider_id, claim_id);

-- ---------------------------------------------------------------- settlement runs

-- One row per closed day. The run that closes a day writes this row, its statements, lines,
-- stream marks and ledger entries in one transaction, so a day is either wholly closed or not
-- at all; the row is never updated or deleted.
CREATE TABLE settlement_runs (
    run_id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    day                 date        NOT NULL UNIQUE,
    statement_format    integer     NOT NULL,
    settled_by          text        NOT NULL,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL,
    day_records         bigint      NOT NULL CHECK (day_records >= 0),
    day_usage_npfh      bigint      NOT NULL CHECK (day_usage_npfh >= 0),
    adjustment_records  bigint      NOT NULL CHECK (adjustment_records >= 0),
    fee_fen             bigint      NOT NULL CHECK (fee_fen >= 0),
    subsidy_fen         bigint      NOT NULL CHECK (subsidy_fen >= 0),
    settlement_sha256   bytea       NOT NULL CHECK (length(settlement_sha256) = 32)
);

COMMENT ON TABLE settlement_runs IS 'Closed days. A day is closed once; records committed for it later are settled as adjustments by a later run.';

-- Each run's committed mark per usage stream, read in the run's snapshot. A run settles the
-- records of its own day up to its marks, and the records of earlier closed days above the
-- previous run's marks: so every record is settled exactly once, however late it arrives.
CREATE TABLE settlement_stream_marks (
    provider_id         text   NOT NULL,
    stream_id           text   NOT NULL,
    run_id              bigint NOT NULL REFERENCES settlement_runs,
    committed_sequence  bigint NOT NULL CHECK (committed_sequence >= 0),
    PRIMARY KEY (provider_id, stream_id, run_id)
);

CREATE INDEX settlement_stream_marks_by_run ON settlement_stream_marks (run_id);

-- The priced usage of a run: one line per provider, holder, contract, device model and usage
-- day (the run's own day, or an earlier closed day for an adjustment).
CREATE TABLE settlement_lines (
    provider_id    text    NOT NULL,
    run_id         bigint  NOT NULL REFERENCES settlement_runs,
    line_no        integer NOT NULL,
    kind           text    NOT NULL CHECK (kind IN ('usage', 'adjustment')),
    usage_day      date    NOT NULL,
    holder_code    text    NOT NULL,
    contract_id    bigint,
    device_model   text    NOT NULL,
    fee_unit       text    CHECK (fee_unit IN ('per_pflops_hour', 'per_card_hour')),
    records        bigint  NOT NULL CHECK (records > 0),
    usage_npfh     bigint  NOT NULL CHECK (usage_npfh >= 0),
    card_ms        bigint  NOT NULL CHECK (card_ms >= 0),
    price_fen      bigint  CHECK (price_fen > 0),
    fee_fen        bigint  NOT NULL CHECK (fee_fen >= 0),
    unpriced       text    CHECK (unpriced IN ('no_contract', 'no_filed_price')),
    CHECK ((unpriced IS NULL) = (price_fen IS NOT NULL)),
    CHECK (unpriced IS NULL OR fee_fen = 0),
    PRIMARY KEY (provider_id, run_id, line_no)
);

CREATE INDEX settlement_lines_by_run ON settlement_lines (run_id);

-- The statements of a run in their canonical form (UTF-8 CSV, see settlement.md) and the
-- SHA-256 of each; settlement_runs.settlement_sha256 is the hash over all of them in order.
CREATE TABLE settlement_statements (
    run_id         bigint  NOT NULL REFERENCES settlement_runs,
    party_kind     text    NOT NULL CHECK (party_kind IN ('programme', 'provider', 'holder')),
    party_code     text    NOT NULL,
    ordinal        integer NOT NULL,
    canonical_csv  bytea   NOT NULL,
    sha256         bytea   NOT NULL CHECK (length(sha256) = 32),
    PRIMARY KEY (run_id, party_kind, party_code),
    UNIQUE (run_id, ordinal)
);

-- ---------------------------------------------------------------- the ledger

-- Double-entry, in fen. Every entry's lines are written by one INSERT, after which a statement
-- trigger checks that each entry it touched has debits equal to credits; entries and lines are
-- never updated or deleted. Accounts are named kind:key (see settlement.md).
CREATE TABLE ledger_entries (
    entry_id    bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('voucher_issue', 'hold_reserve', 'hold_void', 'hold_post', 'hold_expire', 'usage_billing')),
    run_id      bigint      REFERENCES settlement_runs,
    reference   text        NOT NULL,
    booked_at   timestamptz NOT NULL,
    memo        text        NOT NULL
);

CREATE INDEX ledger_entries_by_run ON ledger_entries (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE ledger_lines (
    entry_id    bigint NOT NULL REFERENCES ledger_entries,
    line_no     integer NOT NULL CHECK (line_no > 0),
    account     text   NOT NULL CHECK (account ~ '^(programme_budget|voucher_available|voucher_held|payee_payable|holder_due|provider_receivable):[0-9A-Z]+$'),
    debit_fen   bigint NOT NULL CHECK (debit_fen >= 0),
    credit_fen  bigint NOT NULL CHECK (credit_fen >= 0),
    CHECK ((debit_fen > 0) <> (credit_fen > 0)),
    PRIMARY KEY (entry_id, line_no)
);

CREATE INDEX ledger_lines_by_account ON ledger_lines (account);

CREATE FUNCTION ledger_entries_balance() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    unbalanced bigint;
BEGIN
    SELECT l.entry_id INTO unbalanced
    FROM ledger_lines l
    WHERE l.entry_id IN (SELECT DISTINCT entry_id FROM inserted)
    GROUP BY l.entry_id
    HAVING sum(l.debit_fen) <> sum(l.credit_fen) OR count(*) < 2
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry % does not balance: debits must equal credits', unbalanced
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ledger_lines_balance AFTER INSERT ON ledger_lines
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION ledger_entries_balance();

-- Closed days, their evidence and the ledger are never rewritten (refuse_rewrite is from 0001).
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON ledger_entries FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER ledger_lines_append_only BEFORE UPDATE OR DELETE ON ledger_lines FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER ledger_lines_no_truncate BEFORE TRUNCATE ON ledger_lines FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER settlement_runs_append_only BEFORE UPDATE OR DELETE ON settlement_runs FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER settlement_runs_no_truncate BEFORE TRUNCATE ON settlement_runs FOR EACH STATEMENT EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER settlement_stream_marks_append_only BEFORE UPDATE OR DELETE ON settlement_stream_marks FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER settlement_lines_append_only BEFORE UPDATE OR DELETE ON settlement_lines FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
CREATE TRIGGER settlement_statements_append_only BEFORE UPDATE OR DELETE ON settlement_statements FOR EACH ROW EXECUTE FUNCTION refuse_rewrite();
