-- Facts a deployment must remember across restarts of its other stores, e.g. that Redis held
-- leases before (so an empty Redis means they were lost, not that this is a first start).
CREATE TABLE markers (
    name   TEXT PRIMARY KEY,
    set_at BIGINT NOT NULL
);
