-- Batches carry their rules as data: the capacity bar, the materials required, the year rules of
-- the financial report, whether a capital verification report may stand in for an audit report,
-- and which programme year's voucher parameters apply. Until now these were constants in code,
-- so the bureau could not open a batch with other rules without a release.
--
-- admission_batches holds each batch's rules in force; admission_batch_versions holds every
-- version of them, written once (the four-eyes setting and the reconsideration days are settings,
-- recorded in the history but not versions of the rules). Once a batch's filing window has opened its rules change only
-- by a correction: a new version that carries its reason (see ProviderRegistry.PutBatchAsync).
ALTER TABLE admission_batches
    ADD COLUMN capacity_minimum_gflops              bigint  NOT NULL DEFAULT 300000000 CHECK (capacity_minimum_gflops > 0),
    ADD COLUMN materials_required                   text[]  NOT NULL DEFAULT ARRAY['business_licence', 'financial_report', 'tax_certificate', 'idc_isp_licence',
        'capacity_proof', 'metering_log_proof', 'service_and_fees', 'commitment_letters']
        CHECK (cardinality(materials_required) BETWEEN 1 AND 8 AND materials_required <@ ARRAY['business_licence', 'financial_report', 'tax_certificate',
            'idc_isp_licence', 'capacity_proof', 'metering_log_proof', 'service_and_fees', 'commitment_letters']),
    ADD COLUMN audit_report_prior_year_with_reason  boolean NOT NULL DEFAULT true,
    ADD COLUMN capital_verification_for_new_entities boolean NOT NULL DEFAULT true,
    ADD COLUMN voucher_programme_year               integer NOT NULL DEFAULT 2025 CHECK (voucher_programme_year BETWEEN 2024 AND 2100),
    ADD COLUMN rules_version                        integer NOT NULL DEFAULT 1 CHECK (rules_version > 0);

-- Batches that exist already ran under the 2025 guide's rules, which the defaults above are; from
-- here on every batch states its own, so the defaults go.
ALTER TABLE admission_batches
    ALTER COLUMN capacity_minimum_gflops DROP DEFAULT,
    ALTER COLUMN materials_required DROP DEFAULT,
    ALTER COLUMN audit_report_prior_year_with_reason DROP DEFAULT,
    ALTER COLUMN capital_verification_for_new_entities DROP DEFAULT,
    ALTER COLUMN voucher_programme_year DROP DEFAULT,
    ALTER COLUMN rules_version DROP DEFAULT;

COMMENT ON COLUMN admission_batches.capacity_minimum_gflops IS 'The capacity bar: least dense FP16 capacity, declared at filing and verified, in GFLOPS (300 PFLOPS = 300000000).';
COMMENT ON COLUMN admission_batches.materials_required IS 'The material kinds a filing must carry (a public institution files no tax_certificate).';
COMMENT ON COLUMN admission_batches.audit_report_prior_year_with_reason IS 'Whether an audit report of the year before audit_report_year is accepted with a stated reason.';
COMMENT ON COLUMN admission_batches.capital_verification_for_new_entities IS 'Whether an organisation established under a year before filing may file a capital verification report in place of the audit report (the guide: 可提供, optional).';
COMMENT ON COLUMN admission_batches.voucher_programme_year IS 'The programme year whose voucher parameters (programme_parameters) apply to this batch; the minimum annual rental is read there, not copied.';
COMMENT ON COLUMN admission_batches.rules_version IS 'The version of the rules in force, the latest row of admission_batch_versions for the batch.';

-- The 2025 guide (附件1): filing 2025-03-14 to 2025-04-07 18:00, valid to the end of 2026-12-31,
-- 300P FLOPS (FP16) or more, the eight materials of section 五, the 2024 audit report or the 2023
-- one where the 2024 one cannot be had, a capital verification report for an organisation
-- registered under a year (可提供), and the 2025 programme year's voucher parameters. Migration
-- 0003 seeded the window, validity, notice days and audit year; this states the rest explicitly.
UPDATE admission_batches SET
    capacity_minimum_gflops = 300000000,
    materials_required = ARRAY['business_licence', 'financial_report', 'tax_certificate', 'idc_isp_licence',
        'capacity_proof', 'metering_log_proof', 'service_and_fees', 'commitment_letters'],
    audit_report_prior_year_with_reason = true,
    capital_verification_for_new_entities = true,
    voucher_programme_year = 2025
WHERE batch_id = '2025';

-- Every other batch that exists takes its window's year as its voucher programme year.
UPDATE admission_batches
SET voucher_programme_year = least(2100, greatest(2024, extract(year FROM window_opens_at AT TIME ZONE 'Asia/Shanghai')::integer))
WHERE batch_id <> '2025';

CREATE TABLE admission_batch_versions (
    batch_id     text        NOT NULL REFERENCES admission_batches,
    version      integer     NOT NULL CHECK (version > 0),
    rules        jsonb       NOT NULL,
    recorded_by  text        NOT NULL,
    recorded_at  timestamptz NOT NULL,
    reason       text        CHECK (reason IS NULL OR length(reason) BETWEEN 1 AND 4000),
    PRIMARY KEY (batch_id, version)
);

COMMENT ON TABLE admission_batch_versions IS 'Every version of every batch''s rules, written once: the batch row as it stood, who recorded it, when, and the reason a correction gives.';

INSERT INTO admission_batch_versions (batch_id, version, rules, recorded_by, recorded_at, reason)
SELECT batch_id, 1, to_jsonb(b) - 'rules_version' - 'single_operator_decisions' - 'reconsideration_days', 'migration batch_rules', now(), NULL
FROM admission_batches b;
