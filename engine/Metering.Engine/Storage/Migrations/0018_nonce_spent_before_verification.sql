-- A capacity nonce is now spent in two steps: marked used before the report's leaves are
-- recomputed (so that copies of one report are refused without costing a verification), then tied
-- to the attestation that used it once that is recorded. The trigger lets exactly that second
-- step through: a spent nonce gains its attestation once, and nothing else about it changes.
CREATE OR REPLACE FUNCTION capacity_nonce_spent_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.provider_id, NEW.nonce, NEW.validation_id, NEW.node_id, NEW.issued_at, NEW.expires_at)
          IS DISTINCT FROM (OLD.provider_id, OLD.nonce, OLD.validation_id, OLD.node_id, OLD.issued_at, OLD.expires_at)
       OR (OLD.used_at IS NOT NULL
           AND (NEW.used_at IS DISTINCT FROM OLD.used_at OR OLD.attestation_id IS NOT NULL OR NEW.attestation_id IS NULL)) THEN
        RAISE EXCEPTION 'capacity_nonces: a nonce is spent once and never rewritten'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
