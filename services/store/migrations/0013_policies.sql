-- License policies (issue 25): named terms per product that licenses are issued from, and time
-- counted from first use. A license records the policy and revision it got.
CREATE TABLE policies (
    policy_id    TEXT PRIMARY KEY,
    product_code TEXT NOT NULL,
    name         TEXT NOT NULL,
    revision     BIGINT NOT NULL,
    terms_json   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    UNIQUE (product_code, name)
);

ALTER TABLE licenses ADD COLUMN policy_id TEXT;
ALTER TABLE licenses ADD COLUMN policy_revision BIGINT NOT NULL DEFAULT 0;
-- JSON of the terms still to start at first use, and when they did; NULL when time counts
-- from issue.
ALTER TABLE licenses ADD COLUMN first_use_json TEXT;
CREATE INDEX licenses_policy ON licenses (policy_id);
