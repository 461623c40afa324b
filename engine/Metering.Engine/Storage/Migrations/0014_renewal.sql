-- Renewal without a gap, and holders that leave their role.
--
-- An admitted provider applies for the same service item in a later batch while its admission
-- runs; the application and, once admitted, the service item name the admission they continue.
-- A renewal admitted before that admission ends starts exactly at its end, so the two intervals
-- touch and ingest sees one continuous admission.
ALTER TABLE applications ADD COLUMN renews_application_id bigint REFERENCES applications (application_id);
ALTER TABLE service_items ADD COLUMN renews_application_id bigint REFERENCES applications (application_id);

COMMENT ON COLUMN applications.renews_application_id IS 'The admission (its application id) this application renews; null for a new application.';
COMMENT ON COLUMN service_items.renews_application_id IS 'The admission this one continues; null unless admitted as a renewal.';

-- An organisation is a provider or a voucher holder, never both at the same time: a holder with
-- nothing left running may leave the role and then apply as a provider. Its row stays, since its
-- contracts and vouchers refer to it.
ALTER TABLE voucher_holders DROP CONSTRAINT voucher_holders_status_check;
ALTER TABLE voucher_holders ADD CONSTRAINT voucher_holders_status_check CHECK (status IN ('applicant', 'holder', 'left'));
ALTER TABLE voucher_holders
    ADD COLUMN left_at     timestamptz,
    ADD COLUMN left_by     text,
    ADD COLUMN left_reason text,
    ADD CONSTRAINT voucher_holders_left_recorded CHECK ((status = 'left') = (left_at IS NOT NULL AND left_by IS NOT NULL AND left_reason IS NOT NULL));

COMMENT ON COLUMN voucher_holders.status IS 'applicant: registered, not yet approved to hold vouchers; holder: approved; left: left the holder role (LeaveHolderRole).';
