-- Mutual TLS for API keys: a credential may be pinned to the SHA-256 of a client certificate (its
-- DER bytes, what `openssl x509 -fingerprint -sha256` prints). A pinned key is accepted only on a
-- TLS connection that presented exactly that certificate, so a leaked key alone is not enough.
-- NULL leaves the key unpinned: it works with or without a client certificate.
ALTER TABLE credentials
    ADD COLUMN client_cert_sha256 bytea CHECK (client_cert_sha256 IS NULL OR length(client_cert_sha256) = 32);
