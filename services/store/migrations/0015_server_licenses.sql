-- Server licenses (issue 26): a license a customer's on-premises license server activates.
-- Its grants (what that server may serve) are a JSON array of
-- {"product_code", "feature", "floating_seats", "node_locked_activations"}; '[]' for every
-- other kind of license.
ALTER TABLE licenses ADD COLUMN server_grants_json TEXT NOT NULL DEFAULT '[]';
-- The serial of the latest server license file signed for the license: raised by one, with
-- the license row locked, for every file, so a newer file always has a higher serial.
ALTER TABLE licenses ADD COLUMN server_license_serial BIGINT NOT NULL DEFAULT 0;
-- The serial of the latest file signed for a server's activation: a return frees the
-- activation only when it names this serial (an older file's return is refused).
ALTER TABLE activations ADD COLUMN server_serial BIGINT NOT NULL DEFAULT 0;
