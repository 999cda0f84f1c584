-- The embedded lease store (the all-in-one server's floating seats without Redis).
CREATE TABLE leases (
    lease_id           TEXT PRIMARY KEY,
    license_id         TEXT NOT NULL,
    client_instance_id TEXT NOT NULL,
    user_name          TEXT NOT NULL,
    host               TEXT NOT NULL,
    feature            TEXT NOT NULL,
    checked_out_at     BIGINT NOT NULL,
    expires_at         BIGINT NOT NULL,
    ttl_ms             BIGINT NOT NULL,
    fence              BIGINT NOT NULL,
    seats_held         BIGINT NOT NULL
);
CREATE INDEX leases_license ON leases (license_id, expires_at);
CREATE INDEX leases_expiry ON leases (expires_at);

-- One row per pool: its fencing counter, and the row locked while a pool decision is made.
CREATE TABLE lease_pools (
    license_id TEXT PRIMARY KEY,
    fence      BIGINT NOT NULL
);

CREATE TABLE lease_tombstones (
    lease_id   TEXT PRIMARY KEY,
    license_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL
);
