-- How long after its expiry a license stays usable, flagged as in its grace period (ms; 0: none).
-- Validation, certificates and seat leases all end at expires_at + grace_period_ms.
ALTER TABLE licenses ADD COLUMN grace_period_ms BIGINT NOT NULL DEFAULT 0;
