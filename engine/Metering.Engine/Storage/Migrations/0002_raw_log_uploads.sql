-- Raw log uploads: how far each upload has committed, so that it resumes exactly, and the lines
-- it refused, so that a provider can fix them.

CREATE TABLE raw_log_uploads (
    provider_id        text        NOT NULL,
    upload_id          text        NOT NULL,
    stream_id          text        NOT NULL,
    format             text        NOT NULL,
    -- SHA-256 of the mapping's canonical text: a resumed upload must map lines the same way.
    mapping_sha256     text        NOT NULL,
    total_bytes        bigint      NOT NULL CHECK (total_bytes >= 0),
    -- The parser needs the header line again when an upload resumes past it.
    header_line        text,
    committed_offset   bigint      NOT NULL DEFAULT 0 CHECK (committed_offset >= 0 AND committed_offset <= total_bytes),
    lines              bigint      NOT NULL DEFAULT 0,
    records            bigint      NOT NULL DEFAULT 0,
    lines_skipped      bigint      NOT NULL DEFAULT 0,
    lines_refused      bigint      NOT NULL DEFAULT 0,
    lines_duplicate    bigint      NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    completed_at       timestamptz,
    PRIMARY KEY (provider_id, upload_id)
);

-- At most the first 1,000 refused lines of an upload are kept; lines_refused counts them all.
CREATE TABLE raw_log_line_errors (
    provider_id  text    NOT NULL,
    upload_id    text    NOT NULL,
    line         bigint  NOT NULL,
    reason       text    NOT NULL,
    message      text    NOT NULL,
    PRIMARY KEY (provider_id, upload_id, line)
);

-- Every job a raw log metered, per stream: the same job in a later, overlapping export (a job that
-- crosses midnight appears in both days' sacct output) is recognised and not metered twice.
CREATE TABLE raw_log_jobs (
    provider_id  text        NOT NULL,
    stream_id    text        NOT NULL,
    job_id       text        NOT NULL,
    start_at     timestamptz NOT NULL,
    sequence     bigint      NOT NULL,
    upload_id    text        NOT NULL,
    PRIMARY KEY (provider_id, stream_id, job_id, start_at)
);
