//! [`PortalStore`] on SQL.

use super::catalog::{customer_from_row, insert_audit, insert_license_row};
use super::*;
use async_trait::async_trait;
use licensing_domain::change::{resplit, LicenseChange, SplitPart};
use licensing_domain::clock::Millis;
use licensing_domain::model::{AuditRecord, ContactDetails, Customer, License, NewLicense, Receipt};
use licensing_domain::store::{PortalStore, ResetTokenError, UpdateError};

#[async_trait]
impl PortalStore for SqlStore {
    #[tracing::instrument(name = "store.create_session", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn create_session(
        &self,
        digest: &str,
        customer_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO sessions (digest, customer_id, created_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, NULL)")
            .bind(digest)
            .bind(customer_id)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.session_customer", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn session_customer(&self, digest: &str, now: Millis) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT customer_id FROM sessions WHERE digest = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(digest)
        .bind(now)
        .fetch_optional(&self.readers)
        .await
        .map_err(map_err)?;
        row.as_ref().map(|r| get_str(r, "customer_id")).transpose()
    }

    #[tracing::instrument(name = "store.revoke_session", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn revoke_session(&self, digest: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE digest = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(digest)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.create_reset_token", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn create_reset_token(
        &self,
        digest: &str,
        customer_id: &str,
        now: Millis,
        expires_at: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO reset_tokens (digest, customer_id, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, NULL)")
            .bind(digest)
            .bind(customer_id)
            .bind(now)
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.use_reset_token", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn use_reset_token(&self, digest: &str, password_hash: &str, now: Millis) -> Result<String, ResetTokenError> {
        let mut tx = self.begin().await?;
        // Conditional: only an unused, unexpired token is consumed, exactly once.
        let row = sqlx::query("UPDATE reset_tokens SET used_at = $1 WHERE digest = $2 AND used_at IS NULL AND expires_at > $1 RETURNING customer_id")
            .bind(now)
            .bind(digest)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let Some(row) = row else {
            let state = sqlx::query("SELECT used_at, expires_at FROM reset_tokens WHERE digest = $1")
                .bind(digest)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            return Err(match state {
                None => ResetTokenError::Unknown,
                Some(r) if get_opt_i64(&r, "used_at")?.is_some() => ResetTokenError::Used,
                Some(_) => ResetTokenError::Expired,
            });
        };
        let customer_id = get_str(&row, "customer_id")?;
        sqlx::query("UPDATE customers SET password_hash = $1 WHERE customer_id = $2")
            .bind(password_hash)
            .bind(&customer_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("UPDATE sessions SET revoked_at = $1 WHERE customer_id = $2 AND revoked_at IS NULL")
            .bind(now)
            .bind(&customer_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(customer_id)
    }

    #[tracing::instrument(name = "store.replace_license", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn return_and_resplit(
        &self,
        old_id: &str,
        parts: &[SplitPart],
        now: Millis,
        audit: AuditRecord,
    ) -> Result<(License, Vec<License>), UpdateError> {
        let mut tx = self.begin().await?;
        let mut old = self
            .lock_license(&mut tx, old_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("license {old_id}")))?;
        // Decided on the license as locked: a seat change made meanwhile is seen.
        let reissued = resplit(&old, parts, now)?;
        let product = sqlx::query("SELECT * FROM products WHERE code = $1")
            .bind(&old.product_code)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        LicenseChange::Retire.apply(&mut old, &super::catalog::product_from_row(&product)?, now)?;
        sqlx::query("UPDATE licenses SET status = $1, updated_at = $2 WHERE license_id = $3")
            .bind(old.status.as_str())
            .bind(now)
            .bind(old_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        for (license, part) in reissued.iter().zip(parts) {
            let new = NewLicense {
                license: license.clone(),
                key_digest: part.key_digest.clone(),
                activation_password_salt: part.activation_password_salt.clone(),
            };
            insert_license_row(&mut tx, &new).await?;
        }
        insert_audit(&mut tx, &audit, now).await?;
        self.notify_license_change(&mut tx, old_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.license_changed(old_id).await;
        Ok((old, reissued))
    }

    #[tracing::instrument(name = "store.list_receipts", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_receipts(&self, customer_id: &str) -> Result<Vec<Receipt>, StoreError> {
        let rows = sqlx::query("SELECT * FROM receipts WHERE customer_id = $1 ORDER BY paid_at DESC, receipt_id")
            .bind(customer_id)
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(Receipt {
                    receipt_id: get_str(r, "receipt_id")?,
                    license_id: get_str(r, "license_id")?,
                    customer_id: get_str(r, "customer_id")?,
                    kind: get_str(r, "kind")?,
                    amount_minor: get_i64(r, "amount_minor")?,
                    currency: get_str(r, "currency")?,
                    paid_at: get_i64(r, "paid_at")?,
                    recurring_months: get_i32(r, "recurring_months")?,
                })
            })
            .collect()
    }

    #[tracing::instrument(name = "store.update_contact_details", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn update_contact_details(
        &self,
        customer_id: &str,
        details: &ContactDetails,
        audit: AuditRecord,
    ) -> Result<Customer, StoreError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE customers SET contact_name = $1, contact_email = $2, phone = $3 WHERE customer_id = $4",
        )
        .bind(&details.contact_name)
        .bind(&details.contact_email)
        .bind(&details.phone)
        .bind(customer_id)
        .execute(&mut *tx)
        .await
        .map_err(|e| match map_err(e) {
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists(format!("an account with contact email {}", details.contact_email))
            }
            other => other,
        })?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("customer {customer_id}")));
        }
        let row = sqlx::query("SELECT * FROM customers WHERE customer_id = $1")
            .bind(customer_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let customer = customer_from_row(&row)?;
        insert_audit(&mut tx, &audit, super::catalog::now()).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(customer)
    }

    #[tracing::instrument(name = "store.change_password", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn change_password(
        &self,
        customer_id: &str,
        verified_hash: &str,
        new_hash: &str,
        keep_session: &str,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Compare and set: a password changed since it was verified is not overwritten.
        let updated =
            sqlx::query("UPDATE customers SET password_hash = $1 WHERE customer_id = $2 AND password_hash = $3")
                .bind(new_hash)
                .bind(customer_id)
                .bind(verified_hash)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::Conflict(
                "the password was changed meanwhile (another session or a reset); log in again".into(),
            ));
        }
        sqlx::query(
            "UPDATE sessions SET revoked_at = $1 WHERE customer_id = $2 AND revoked_at IS NULL AND digest <> $3",
        )
        .bind(now)
        .bind(customer_id)
        .bind(keep_session)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await.map_err(map_err)
    }
}
