-- Node-locked activations and their history.
CREATE TABLE activations (
    installation_id  TEXT PRIMARY KEY,
    license_id       TEXT NOT NULL REFERENCES licenses(license_id),
    fingerprint_json TEXT NOT NULL,
    machine_name     TEXT NOT NULL,
    platform         TEXT NOT NULL,
    product_version  TEXT NOT NULL,
    activated_at     BIGINT NOT NULL,
    last_seen_at     BIGINT NOT NULL,
    deactivated_at   BIGINT,
    offline          BIGINT NOT NULL
);
CREATE INDEX activations_license ON activations (license_id, deactivated_at);

CREATE TABLE activation_events (
    sequence           BIGSERIAL PRIMARY KEY,
    license_id         TEXT NOT NULL,
    installation_id    TEXT NOT NULL,
    action             TEXT NOT NULL,
    machine_name       TEXT NOT NULL,
    fingerprint_digest TEXT NOT NULL,
    outcome            TEXT NOT NULL,
    occurred_at        BIGINT NOT NULL
);
CREATE INDEX activation_events_license ON activation_events (license_id, sequence);
