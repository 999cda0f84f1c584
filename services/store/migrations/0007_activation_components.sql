-- The fingerprint components of live activations, so a machine is matched against the few
-- activations that share a component with it, not against every activation of its license (a
-- site license may hold 100,000). Rows live exactly as long as their activation is live.
CREATE TABLE activation_components (
    license_id      TEXT NOT NULL,
    -- Keyed digest of one component (it names the component too).
    digest          TEXT NOT NULL,
    -- Components of the activation's stored fingerprint: what a match's share is taken of.
    component_count BIGINT NOT NULL,
    installation_id TEXT NOT NULL REFERENCES activations(installation_id),
    PRIMARY KEY (license_id, digest, component_count, installation_id)
);
CREATE INDEX activation_components_installation ON activation_components (installation_id);

-- The live activations made before this migration (on SQLite the array's elements come from
-- json_each; see sqlite_dialect in sql.rs).
INSERT INTO activation_components (license_id, digest, component_count, installation_id)
SELECT DISTINCT a.license_id, c.value ->> 'digest',
       (SELECT COUNT(*) FROM jsonb_array_elements(CAST(a.fingerprint_json AS JSONB)) AS n),
       a.installation_id
FROM activations a, jsonb_array_elements(CAST(a.fingerprint_json AS JSONB)) AS c
WHERE a.deactivated_at IS NULL;

-- The portal pages a license's installations newest first.
CREATE INDEX activations_license_newest ON activations (license_id, activated_at, installation_id);
