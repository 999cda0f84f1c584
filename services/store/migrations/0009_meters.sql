-- Metered features (issue 25): the meters a license carries, each period's count, and every
-- counted use under its idempotency key (so a retried use is recognised and counted once).
ALTER TABLE licenses ADD COLUMN meters_json TEXT NOT NULL DEFAULT '[]';

-- One row per meter and period; the limit, overage and reset are those of the latest use, so
-- a period stays readable after its meter is changed or removed.
CREATE TABLE meter_periods (
    license_id   TEXT NOT NULL,
    meter        TEXT NOT NULL,
    period_start BIGINT NOT NULL,
    period_end   BIGINT,
    reset        TEXT NOT NULL,
    usage_limit  BIGINT NOT NULL,
    overage      BIGINT NOT NULL,
    used         BIGINT NOT NULL,
    PRIMARY KEY (license_id, meter, period_start)
);

CREATE TABLE meter_uses (
    sequence        BIGSERIAL PRIMARY KEY,
    license_id      TEXT NOT NULL,
    meter           TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    period_start    BIGINT NOT NULL,
    recorded_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX meter_uses_key ON meter_uses (license_id, idempotency_key);
