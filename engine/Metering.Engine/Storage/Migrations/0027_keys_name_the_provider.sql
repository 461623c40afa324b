-- Keys that name provider_id, so that the per-provider tables still on the coordinator can be
-- distributed on Citus (Storage/README.md, "Citus"). The capacity tables' keys all lead with
-- provider_id but one: "a report is accepted once" was a unique index on
-- report_sha256 alone, which Citus cannot keep on a table sharded by provider_id (a unique key must
-- include the distribution column). It now holds per provider. A report accepted for one provider
-- gains nothing under another: its nonce was issued to the first provider only (NONCE_UNKNOWN for
-- any other), and it is signed by the first provider's node key (NODE_KEY_UNKNOWN or
-- SIGNATURE_INVALID). The same schema on both layouts: one node gets the per-provider index too.
DROP INDEX capacity_attestations_accepted_once;
CREATE UNIQUE INDEX capacity_attestations_accepted_once ON capacity_attestations (provider_id, report_sha256) WHERE accepted;

-- The applications component (applications and the tables that hang off them, with the contract
-- and voucher tables through contracts → service_items) stays on the coordinator until every key
-- and every lock by id names provider_id. These keys name it now, with the same meaning: an
-- application id is unique by itself (its identity), so "one open proposal per application" and
-- "one pending reconsideration per application" hold as before, and a renewal renews an
-- admission of the same provider, which the registry already requires.
DROP INDEX stage_proposals_one_open;
CREATE UNIQUE INDEX stage_proposals_one_open ON stage_proposals (provider_id, application_id) WHERE closed_as IS NULL;
DROP INDEX reconsiderations_one_pending;
CREATE UNIQUE INDEX reconsiderations_one_pending ON reconsiderations (provider_id, application_id) WHERE outcome IS NULL;
ALTER TABLE applications DROP CONSTRAINT applications_renews_application_id_fkey,
    ADD CONSTRAINT applications_renews_application_id_fkey FOREIGN KEY (provider_id, renews_application_id) REFERENCES applications (provider_id, application_id);
ALTER TABLE service_items DROP CONSTRAINT service_items_renews_application_id_fkey,
    ADD CONSTRAINT service_items_renews_application_id_fkey FOREIGN KEY (provider_id, renews_application_id) REFERENCES applications (provider_id, application_id);
