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

-- How many live activations of a license share each component (by the component count of
-- their fingerprints), so a component shared by very many is known as such without reading
-- them: an index scan of a common component bounded by LIMIT is not bounded when the planner
-- picks a bitmap scan, which PostgreSQL does when its statistics are stale.
CREATE TABLE activation_component_counts (
    license_id      TEXT NOT NULL,
    digest          TEXT NOT NULL,
    component_count BIGINT NOT NULL,
    activations     BIGINT NOT NULL,
    PRIMARY KEY (license_id, digest, component_count)
);
INSERT INTO activation_component_counts (license_id, digest, component_count, activations)
SELECT license_id, digest, component_count, COUNT(*) FROM activation_components
GROUP BY license_id, digest, component_count;

-- The portal pages a license's installations newest first.
CREATE INDEX activations_license_newest ON activations (license_id, activated_at, installation_id);
