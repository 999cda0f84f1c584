-- Trials (issue 25): machines that started a trial of a product without a key, remembered by
-- their fingerprint's component digests so a reinstall never starts another trial.
CREATE TABLE trial_machines (
    -- The trial's license (one machine per trial license).
    license_id       TEXT PRIMARY KEY REFERENCES licenses(license_id),
    product_code     TEXT NOT NULL,
    -- The machine's fingerprint as last presented (keyed digests), matched like activations.
    fingerprint_json TEXT NOT NULL,
    started_at       BIGINT NOT NULL,
    -- Set when the trial was converted to a paid license.
    converted_at     BIGINT
);
CREATE INDEX trial_machines_product ON trial_machines (product_code);

-- The component digests of each trial machine, so a machine is matched through the components
-- it shares instead of by reading every trial of the product.
CREATE TABLE trial_components (
    product_code TEXT NOT NULL,
    digest       TEXT NOT NULL,
    license_id   TEXT NOT NULL,
    PRIMARY KEY (product_code, digest, license_id)
);

