-- Module entitlements (issue 25): per license, the value and own expiry of some of the modules
-- it includes, as a JSON object {module code: {"value": ..., "expires_at": ...}}. A module past
-- its own expiry is no longer licensed while the rest of the license goes on.
ALTER TABLE licenses ADD COLUMN module_entitlements_json TEXT NOT NULL DEFAULT '{}';
