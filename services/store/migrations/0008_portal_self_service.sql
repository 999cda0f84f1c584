-- What a customer keeps up to date itself in the portal: the contact person and phone of the
-- account, and the licensee name a license is shown with (empty: the company name).
ALTER TABLE customers ADD COLUMN contact_name TEXT NOT NULL DEFAULT '';
ALTER TABLE customers ADD COLUMN phone TEXT NOT NULL DEFAULT '';
ALTER TABLE licenses ADD COLUMN licensee_name TEXT NOT NULL DEFAULT '';
