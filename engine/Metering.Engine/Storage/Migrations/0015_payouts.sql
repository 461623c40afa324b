-- Payouts and the year-end release of unused voucher balances (proto/metering/v1/settlement.md,
-- "Payouts" and "Year-end release"). Both move money on the double-entry ledger of 0005: a
-- payout clears what the programme owes a payee (payee_payable) against what the programme has
-- paid out in the payment's calendar year (programme_paid); a release returns a programme
-- year's unused voucher balances (voucher_available) to its budget (programme_budget). Money is
-- in fen; nothing here is a float.

-- ---------------------------------------------------------------- the ledger's new kinds and account

ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_kind_check;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_kind_check
    CHECK (kind IN ('voucher_issue', 'hold_reserve', 'hold_void', 'hold_post', 'hold_expire', 'usage_billing', 'payout', 'year_end_release'));

ALTER TABLE ledger_lines DROP CONSTRAINT ledger_lines_account_check;
ALTER TABLE ledger_lines ADD CONSTRAINT ledger_lines_account_check
    CHECK (account ~ '^(programme_budget|voucher_available|voucher_held|payee_payable|holder_due|provider_receivable|programme_paid):[0-9A-Z]+$');

-- ---------------------------------------------------------------- payouts

-- One row per bank transfer to a payee (a holder reimbursed, or a provider in deduction mode).
-- The bank reference identifies the transfer: it is unique, so the same transfer is never paid
-- twice, whoever records it. Evidence: written once with its ledger entry, never changed.
CREATE TABLE payouts (
    payee_code      text        NOT NULL CHECK (length(payee_code) = 18),
    payout_id       bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    bank_reference  text        NOT NULL UNIQUE CHECK (bank_reference ~ '^[0-9A-Za-z][0-9A-Za-z._/:-]{0,63}$'),
    amount_fen      bigint      NOT NULL CHECK (amount_fen > 0),
    paid_on         date        NOT NULL,
    entry_id        bigint      NOT NULL UNIQUE REFERENCES ledger_entries,
    recorded_by     text        NOT NULL,
    recorded_at     timestamptz NOT NULL,
    PRIMARY KEY (payee_code, payout_id)
);

CREATE INDEX payouts_by_payee_date ON payouts (payee_code, paid_on);

COMMENT ON COLUMN payouts.paid_on IS 'The transfer''s value date (Asia/Shanghai). It pays only subsidies posted by settlement runs of earlier days.';

-- ---------------------------------------------------------------- year-end release

-- Vouchers remember how much of their face value went back to the budget at year end, so that
-- issued − posted − held − released is still each one's available balance on the ledger.
ALTER TABLE vouchers ADD COLUMN released_fen bigint NOT NULL DEFAULT 0;
ALTER TABLE vouchers ADD CONSTRAINT vouchers_released_within_face
    CHECK (released_fen >= 0 AND held_fen + posted_fen + released_fen <= face_value_fen);

COMMENT ON COLUMN vouchers.released_fen IS 'Unused balance returned to the programme budget by year-end releases.';

-- One row per release run that returned something; a run that finds nothing to return writes
-- nothing. Evidence: written once with its ledger entries, never changed.
CREATE TABLE year_end_releases (
    release_id      bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    programme_year  integer     NOT NULL CHECK (programme_year BETWEEN 2024 AND 2100),
    vouchers        integer     NOT NULL CHECK (vouchers > 0),
    released_fen    bigint      NOT NULL CHECK (released_fen > 0),
    released_by     text        NOT NULL,
    released_at     timestamptz NOT NULL
);

CREATE INDEX year_end_releases_by_year ON year_end_releases (programme_year);
