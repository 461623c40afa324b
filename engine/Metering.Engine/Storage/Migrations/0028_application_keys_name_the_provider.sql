-- The last unique keys of the applications component (applications and the tables that hang off
-- them, with the contract and voucher tables) that did not name provider_id, so that the
-- component can be distributed on provider_id on Citus (Storage/README.md, "Citus"), where a
-- unique key must include the distribution column. The same schema on both layouts.

-- An admission notice number is typed by an operator and must stay unique programme-wide: no
-- two admissions, of one provider or of two, may carry one number. A key on applications can hold
-- that only per provider once the table is sharded, so the number is written first into a small
-- registry-wide table (a reference table on Citus, one copy on every node) whose primary key holds
-- it, and the application names its row there: the foreign key says that every number on an
-- application is registered for that very provider and application.
CREATE TABLE admission_notice_numbers (
    notice_number   text        NOT NULL PRIMARY KEY CHECK (length(notice_number) BETWEEN 1 AND 64),
    provider_id     text        NOT NULL,
    application_id  bigint      NOT NULL,
    UNIQUE (provider_id, application_id, notice_number)
);

COMMENT ON TABLE admission_notice_numbers IS 'Every admission notice number issued, unique programme-wide; written once with the admission that carries it.';

INSERT INTO admission_notice_numbers (notice_number, provider_id, application_id)
SELECT notice_number, provider_id, application_id FROM applications WHERE notice_number IS NOT NULL;

ALTER TABLE applications DROP CONSTRAINT applications_notice_number_key,
    ADD CONSTRAINT applications_notice_number_fkey FOREIGN KEY (provider_id, application_id, notice_number)
        REFERENCES admission_notice_numbers (provider_id, application_id, notice_number);

-- Ids the database generates (GENERATED ALWAYS AS IDENTITY: an insert cannot choose one without
-- OVERRIDING SYSTEM VALUE, which the engine never writes) are unique by their generation, on
-- Citus too, where the coordinator's sequence numbers every row inserted through it; the keys
-- that held them unique by themselves go, and the primary keys (provider_id, id) that every
-- foreign key already names stay.
ALTER TABLE applications DROP CONSTRAINT applications_application_id_key;
ALTER TABLE contracts DROP CONSTRAINT contracts_contract_id_key;
ALTER TABLE vouchers DROP CONSTRAINT vouchers_voucher_id_key;
ALTER TABLE claims DROP CONSTRAINT claims_claim_id_key;
ALTER TABLE voucher_holds DROP CONSTRAINT voucher_holds_hold_id_key;

-- "One voucher per contract and programme year" and "one hold per claim": a contract and a claim
-- belong to one provider (their foreign keys name it), so the same keys with provider_id in front
-- say the same thing.
ALTER TABLE vouchers DROP CONSTRAINT vouchers_contract_id_programme_year_key,
    ADD CONSTRAINT vouchers_contract_id_programme_year_key UNIQUE (provider_id, contract_id, programme_year);
ALTER TABLE voucher_holds DROP CONSTRAINT voucher_holds_claim_id_key,
    ADD CONSTRAINT voucher_holds_claim_id_key UNIQUE (provider_id, claim_id);
