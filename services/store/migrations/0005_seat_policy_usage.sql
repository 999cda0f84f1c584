-- Seat policies (issue 7): the policy of a concurrent license, seat groups of leases, and the
-- usage log behind reports.
ALTER TABLE licenses ADD COLUMN seat_policy_json TEXT NOT NULL DEFAULT '{}';

ALTER TABLE leases ADD COLUMN group_id TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN share_key TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN bucket TEXT NOT NULL DEFAULT '';
ALTER TABLE leases ADD COLUMN principals_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE leases ADD COLUMN borrowed BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN overdraft BIGINT NOT NULL DEFAULT 0;
ALTER TABLE leases ADD COLUMN lingering BIGINT NOT NULL DEFAULT 0;
CREATE INDEX leases_client ON leases (license_id, client_instance_id);

CREATE TABLE usage_events (
    sequence    BIGSERIAL PRIMARY KEY,
    license_id  TEXT NOT NULL,
    occurred_at BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    lease_id    TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    host        TEXT NOT NULL,
    feature     TEXT NOT NULL,
    seats_delta BIGINT NOT NULL,
    overdraft   BIGINT NOT NULL,
    borrowed    BIGINT NOT NULL,
    reason      TEXT NOT NULL,
    event_count BIGINT NOT NULL
);
CREATE INDEX usage_events_license ON usage_events (license_id, occurred_at);

-- Leases moved out of their pool when found expired, until the sweep records them.
CREATE TABLE expired_leases (
    sequence           BIGSERIAL PRIMARY KEY,
    lease_id           TEXT NOT NULL,
    license_id         TEXT NOT NULL,
    client_instance_id TEXT NOT NULL,
    user_name          TEXT NOT NULL,
    host               TEXT NOT NULL,
    feature            TEXT NOT NULL,
    checked_out_at     BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    ttl_ms             BIGINT NOT NULL,
    fence              BIGINT NOT NULL,
    seats_held         BIGINT NOT NULL,
    group_id           TEXT NOT NULL,
    share_key          TEXT NOT NULL,
    bucket             TEXT NOT NULL,
    principals_json    TEXT NOT NULL,
    borrowed           BIGINT NOT NULL,
    overdraft          BIGINT NOT NULL,
    lingering          BIGINT NOT NULL,
    seats_freed        BIGINT NOT NULL
);
CREATE INDEX expired_leases_lease ON expired_leases (lease_id);
