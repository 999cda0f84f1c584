-- Server usage reports: what a customer's on-premises license server used of its server
-- license's grants over a period, uploaded online (ActivationService.ReportServerUsage).
-- One report per server activation and period: a retried upload finds the row of the first
-- (the unique index), so it is stored once. The grants' use is a JSON array of
-- {"product_code", "feature"?, "kind", "granted", "peak_in_use", "checkouts", "denials",
-- "seat_seconds"}, as uploaded.
CREATE TABLE server_usage_reports (
    sequence        BIGSERIAL PRIMARY KEY,
    report_id       TEXT NOT NULL UNIQUE,
    license_id      TEXT NOT NULL REFERENCES licenses (license_id),
    installation_id TEXT NOT NULL,
    serial          BIGINT NOT NULL,
    period_start    BIGINT NOT NULL,
    period_end      BIGINT NOT NULL,
    grants_json     TEXT NOT NULL,
    received_at     BIGINT NOT NULL
);
CREATE UNIQUE INDEX server_usage_reports_period
    ON server_usage_reports (installation_id, period_start, period_end);
-- A license's reports, newest first.
CREATE INDEX server_usage_reports_license ON server_usage_reports (license_id, sequence);
