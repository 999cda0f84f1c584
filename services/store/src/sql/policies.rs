//! Policies on SQL, and the start of a license's time at its first use.

use super::catalog::insert_audit;
use super::*;
use licensing_domain::clock::Millis;
use licensing_domain::model::{AuditRecord, License};
use licensing_domain::policy::{LicenseTerms, Policy};
use licensing_domain::text::quoted;

fn policy_from_row(row: &AnyRow) -> Result<Policy, StoreError> {
    Ok(Policy {
        policy_id: get_str(row, "policy_id")?,
        product_code: get_str(row, "product_code")?,
        name: get_str(row, "name")?,
        revision: get_i64(row, "revision")?,
        terms: from_json("terms_json", &get_str(row, "terms_json")?)?,
        created_at: get_i64(row, "created_at")?,
        updated_at: get_i64(row, "updated_at")?,
    })
}

impl SqlStore {
    pub(crate) async fn insert_policy(&self, policy: &Policy, audit: AuditRecord) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO policies (policy_id, product_code, name, revision, terms_json, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&policy.policy_id)
        .bind(&policy.product_code)
        .bind(&policy.name)
        .bind(policy.revision)
        .bind(to_json(&policy.terms))
        .bind(policy.created_at)
        .bind(policy.updated_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| match map_err(e) {
            StoreError::AlreadyExists(_) => StoreError::AlreadyExists(format!(
                "product '{}' has a policy named {} already",
                policy.product_code,
                quoted(&policy.name)
            )),
            other => other,
        })?;
        insert_audit(&mut tx, &audit, policy.created_at).await?;
        tx.commit().await.map_err(map_err)
    }

    pub(crate) async fn select_policy(&self, policy_id: &str) -> Result<Option<Policy>, StoreError> {
        let row = sqlx::query("SELECT * FROM policies WHERE policy_id = $1")
            .bind(policy_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(policy_from_row).transpose()
    }

    pub(crate) async fn select_policies(&self, product_code: &str) -> Result<Vec<Policy>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM policies WHERE $1 = '' OR product_code = $1 ORDER BY product_code, name LIMIT 1000",
        )
        .bind(product_code)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    pub(crate) async fn replace_policy_terms(
        &self,
        policy_id: &str,
        terms: &LicenseTerms,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<Policy, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE policies SET terms_json = $1, revision = revision + 1, updated_at = $2 WHERE policy_id = $3",
        )
        .bind(to_json(terms))
        .bind(now)
        .bind(policy_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("policy {policy_id}")));
        }
        let row = sqlx::query("SELECT * FROM policies WHERE policy_id = $1")
            .bind(policy_id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let policy = policy_from_row(&row)?;
        let audit = audit.with_details(serde_json::json!({ "revision": policy.revision }));
        insert_audit(&mut tx, &audit, now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(policy)
    }

    /// Starts a license's time at its first use inside the caller's transaction, the license
    /// row locked by the caller; returns whether it started now.
    pub(crate) async fn start_first_use_in(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        license: &mut License,
        now: Millis,
    ) -> Result<bool, StoreError> {
        if !license.start_first_use(now) {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE licenses SET expires_at = $1, upgrades_until = $2, first_use_json = $3, updated_at = $4 \
             WHERE license_id = $5",
        )
        .bind(license.expires_at)
        .bind(license.upgrades_until)
        .bind(license.first_use.as_ref().map(to_json))
        .bind(license.updated_at)
        .bind(&license.license_id)
        .execute(&mut **tx)
        .await
        .map_err(map_err)?;
        let audit = AuditRecord::new("system", "license.first_used", &license.license_id).with_details(
            serde_json::json!({ "expires_at": license.expires_at, "upgrades_until": license.upgrades_until }),
        );
        insert_audit(tx, &audit, now).await?;
        Ok(true)
    }

    pub(crate) async fn start_first_use_locked(&self, license_id: &str, now: Millis) -> Result<License, StoreError> {
        let mut tx = self.begin().await?;
        let mut license = self
            .lock_license(&mut tx, license_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("license {license_id}")))?;
        if !self.start_first_use_in(&mut tx, &mut license, now).await? {
            tx.rollback().await.map_err(map_err)?;
            return Ok(license);
        }
        self.notify_license_change(&mut tx, license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.license_changed(license_id).await;
        Ok(license)
    }
}
