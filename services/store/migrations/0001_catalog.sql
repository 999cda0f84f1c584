-- The license catalog, admin tokens and the audit log. Instants are milliseconds since the epoch.
CREATE TABLE products (
    code          TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    modules_json  TEXT NOT NULL,
    versions_json TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE customers (
    customer_id   TEXT PRIMARY KEY,
    company_name  TEXT NOT NULL,
    contact_email TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    created_at    BIGINT NOT NULL
);

CREATE TABLE licenses (
    license_id                 TEXT PRIMARY KEY,
    product_code               TEXT NOT NULL REFERENCES products(code),
    customer_id                TEXT NOT NULL REFERENCES customers(customer_id),
    kind                       TEXT NOT NULL,
    status                     TEXT NOT NULL,
    seats                      BIGINT NOT NULL,
    allowed_deactivations      BIGINT NOT NULL,
    activations_used           BIGINT NOT NULL DEFAULT 0 CHECK (activations_used >= 0),
    deactivations_used         BIGINT NOT NULL DEFAULT 0 CHECK (deactivations_used >= 0),
    modules_json               TEXT NOT NULL,
    valid_from                 BIGINT NOT NULL,
    expires_at                 BIGINT,
    upgrades_until             BIGINT,
    associated_customer_id     TEXT REFERENCES customers(customer_id),
    portal_deactivation_counts BIGINT NOT NULL,
    replaces_license_id        TEXT,
    notes                      TEXT NOT NULL,
    key_digest                 TEXT NOT NULL UNIQUE,
    -- Salt of the activation password (derived with the server key; see secrets.rs).
    password_salt              TEXT NOT NULL,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL
);
CREATE INDEX licenses_customer ON licenses (customer_id);
CREATE INDEX licenses_associated ON licenses (associated_customer_id);

CREATE TABLE admin_tokens (
    token_id   TEXT PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    sequence     BIGSERIAL PRIMARY KEY,
    occurred_at  BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    subject      TEXT NOT NULL,
    details_json TEXT NOT NULL
);
CREATE INDEX audit_events_subject ON audit_events (subject, sequence);
