-- The customer portal: sessions, password reset tokens (both stored as keyed digests), receipts.
CREATE TABLE sessions (
    digest      TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX sessions_customer ON sessions (customer_id);

CREATE TABLE reset_tokens (
    digest      TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL REFERENCES customers(customer_id),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

CREATE TABLE receipts (
    receipt_id       TEXT PRIMARY KEY,
    license_id       TEXT NOT NULL REFERENCES licenses(license_id),
    customer_id      TEXT NOT NULL REFERENCES customers(customer_id),
    kind             TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    currency         TEXT NOT NULL,
    paid_at          BIGINT NOT NULL,
    recurring_months BIGINT NOT NULL
);
CREATE INDEX receipts_customer ON receipts (customer_id, paid_at);
