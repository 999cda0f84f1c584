-- Node-locked heartbeats: a license may require its activated machines to check in (activate,
-- refresh their certificate or send a heartbeat) at least this often (ms); the cull deactivates
-- a machine not seen for that long. NULL: no heartbeats required (every license until now).
ALTER TABLE licenses ADD COLUMN heartbeat_timeout_ms BIGINT;

-- The cull's scan: only licenses that require heartbeats, and in each only its live
-- activations by when they were last seen, so its cost follows the silent machines, not every
-- activation ever made.
CREATE INDEX licenses_heartbeat ON licenses (license_id) WHERE heartbeat_timeout_ms IS NOT NULL;
CREATE INDEX activations_live_last_seen ON activations (license_id, last_seen_at) WHERE deactivated_at IS NULL;
