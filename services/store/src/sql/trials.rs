//! [`TrialStore`] on SQL: trials are decided with the product row locked, so racing requests
//! from one machine make one trial; a machine is matched through `trial_components` (the
//! component digests of the product's trial machines), never by reading every trial.

use super::activation::{distinct_digests, placeholders};
use super::catalog::{insert_audit, insert_license_row, license_from_row, LICENSE_COLUMNS};
use super::*;
use async_trait::async_trait;
use licensing_domain::change::ChangeError;
use licensing_domain::clock::Millis;
use licensing_domain::fingerprint::{self, ComponentDigest};
use licensing_domain::model::{AuditRecord, License};
use licensing_domain::policy::Policy;
use licensing_domain::store::UpdateError;
use licensing_domain::trial::{TrialCommand, TrialStart, TrialStats, TrialStore, TRIAL_CUSTOMER_ID};
use sqlx::{Any, Transaction};

/// Trial machines sharing the most components with the presented machine that are compared
/// with it: a machine within the match threshold shares more than almost any other.
const CANDIDATES: i64 = 64;

/// Remembers a trial machine's components for matching.
async fn insert_trial_components(
    tx: &mut Transaction<'_, Any>,
    product_code: &str,
    license_id: &str,
    fingerprint: &[ComponentDigest],
) -> Result<(), StoreError> {
    let digests = distinct_digests(fingerprint);
    if digests.is_empty() {
        return Ok(());
    }
    let rows: Vec<String> = (0..digests.len()).map(|i| format!("($1, ${}, $2)", 3 + i)).collect();
    let sql = format!("INSERT INTO trial_components (product_code, digest, license_id) VALUES {}", rows.join(", "));
    let mut query = sqlx::query(&sql).bind(product_code).bind(license_id);
    for d in &digests {
        query = query.bind(*d);
    }
    query.execute(&mut **tx).await.map_err(map_err)?;
    Ok(())
}

/// The product's trial (license ID, remembered fingerprint, converted at) best matching
/// `presented`, at least `min_share` of its components (ties: the lowest License ID).
async fn best_trial_match(
    tx: &mut Transaction<'_, Any>,
    product_code: &str,
    presented: &[ComponentDigest],
    min_share: f64,
) -> Result<Option<(String, Vec<ComponentDigest>, Option<Millis>)>, StoreError> {
    let digests = distinct_digests(presented);
    if digests.is_empty() {
        return Ok(None);
    }
    let sql = format!(
        "SELECT t.license_id, t.fingerprint_json, t.converted_at FROM trial_machines t WHERE t.license_id IN \
         (SELECT c.license_id FROM trial_components c WHERE c.product_code = $1 AND c.digest IN ({}) \
         GROUP BY c.license_id ORDER BY COUNT(*) DESC, c.license_id LIMIT {CANDIDATES})",
        placeholders(2, digests.len())
    );
    let mut query = sqlx::query(&sql).bind(product_code);
    for d in &digests {
        query = query.bind(*d);
    }
    let mut best: Option<(f64, String, Vec<ComponentDigest>, Option<Millis>)> = None;
    for row in query.fetch_all(&mut **tx).await.map_err(map_err)? {
        let license_id = get_str(&row, "license_id")?;
        let stored: Vec<ComponentDigest> = from_json("fingerprint_json", &get_str(&row, "fingerprint_json")?)?;
        let share = fingerprint::match_share(&stored, presented);
        if share < min_share {
            continue;
        }
        let better = best.as_ref().is_none_or(|b| share > b.0 || (share == b.0 && license_id < b.1));
        if better {
            best = Some((share, license_id, stored, get_opt_i64(&row, "converted_at")?));
        }
    }
    Ok(best.map(|(_, id, stored, converted)| (id, stored, converted)))
}

async fn read_license(tx: &mut Transaction<'_, Any>, license_id: &str) -> Result<License, StoreError> {
    let sql = format!("SELECT {LICENSE_COLUMNS} FROM licenses WHERE license_id = $1");
    let row = sqlx::query(&sql).bind(license_id).fetch_one(&mut **tx).await.map_err(map_err)?;
    license_from_row(&row)
}

fn same_components(a: &[ComponentDigest], b: &[ComponentDigest]) -> bool {
    let sorted = |f: &[ComponentDigest]| {
        let mut v: Vec<(String, String)> = f.iter().map(|c| (c.name.clone(), c.digest.clone())).collect();
        v.sort_unstable();
        v
    };
    sorted(a) == sorted(b)
}

#[async_trait]
impl TrialStore for SqlStore {
    #[tracing::instrument(name = "store.start_trial", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn start_trial(&self, c: &TrialCommand) -> Result<TrialStart, StoreError> {
        let mut tx = self.begin().await?;
        // The product row is the lock every trial request of the product takes: of two racing
        // requests from one machine, the second sees the first's trial.
        let sql = format!("SELECT code FROM products WHERE code = $1{}", self.dialect.for_update());
        if sqlx::query(&sql).bind(&c.product_code).fetch_optional(&mut *tx).await.map_err(map_err)?.is_none() {
            return Err(StoreError::NotFound(format!("product '{}'", c.product_code)));
        }
        if let Some((license_id, stored, converted_at)) =
            best_trial_match(&mut tx, &c.product_code, &c.fingerprint, c.match_threshold).await?
        {
            // The same machine: remember what it looks like now, so gradual hardware changes
            // keep matching.
            if !same_components(&stored, &c.fingerprint) {
                sqlx::query("UPDATE trial_machines SET fingerprint_json = $1 WHERE license_id = $2")
                    .bind(to_json(&c.fingerprint))
                    .bind(&license_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                sqlx::query("DELETE FROM trial_components WHERE product_code = $1 AND license_id = $2")
                    .bind(&c.product_code)
                    .bind(&license_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                insert_trial_components(&mut tx, &c.product_code, &license_id, &c.fingerprint).await?;
            }
            let license = read_license(&mut tx, &license_id).await?;
            tx.commit().await.map_err(map_err)?;
            return Ok(TrialStart::Existing { license, converted_at });
        }
        // The customer trial licenses belong to, made with the first trial.
        sqlx::query(
            "INSERT INTO customers (customer_id, company_name, contact_email, password_hash, created_at) \
             VALUES ($1, 'Trials (internal)', 'trials@trials.invalid', NULL, $2) ON CONFLICT DO NOTHING",
        )
        .bind(TRIAL_CUSTOMER_ID)
        .bind(c.now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let license = &c.new_license.license;
        insert_license_row(&mut tx, &c.new_license).await?;
        sqlx::query(
            "INSERT INTO trial_machines (license_id, product_code, fingerprint_json, started_at, converted_at) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(&license.license_id)
        .bind(&c.product_code)
        .bind(to_json(&c.fingerprint))
        .bind(c.now)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_trial_components(&mut tx, &c.product_code, &license.license_id, &c.fingerprint).await?;
        let audit =
            AuditRecord::new("product", "license.trial_started", &license.license_id).with_details(serde_json::json!({
                "product_code": c.product_code,
                "policy_id": license.policy_id,
                "expires_at": license.expires_at,
                "fingerprint": fingerprint::summary(&c.fingerprint),
            }));
        insert_audit(&mut tx, &audit, c.now).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(TrialStart::New(license.clone()))
    }

    #[tracing::instrument(name = "store.convert_trial", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn convert_trial(
        &self,
        license_id: &str,
        customer_id: &str,
        associate: bool,
        policy: &Policy,
        now: Millis,
        audit: AuditRecord,
    ) -> Result<License, UpdateError> {
        let mut tx = self.begin().await?;
        let mut license = self
            .lock_license(&mut tx, license_id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("license {license_id}")))?;
        let trial = sqlx::query("SELECT converted_at FROM trial_machines WHERE license_id = $1")
            .bind(license_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        match trial {
            None => {
                return Err(ChangeError::NotAllowed(format!(
                    "license {license_id} is not a trial (ActivateTrial makes trials); change it with ApplyPolicy"
                ))
                .into())
            }
            Some(row) if get_opt_i64(&row, "converted_at")?.is_some() => {
                return Err(ChangeError::NotAllowed(format!(
                    "trial license {license_id} was converted already (to customer {})",
                    license.customer_id
                ))
                .into())
            }
            Some(_) => {}
        }
        license.convert_trial(customer_id, associate, policy, now);
        sqlx::query(
            "UPDATE licenses SET customer_id = $1, associated_customer_id = $2, valid_from = $3, notes = $4, seats = $5, \
             allowed_deactivations = $6, modules_json = $7, module_entitlements_json = $8, expires_at = $9, \
             upgrades_until = $10, grace_period_ms = $11, heartbeat_timeout_ms = $12, meters_json = $13, \
             policy_id = $14, policy_revision = $15, first_use_json = $16, updated_at = $17 WHERE license_id = $18",
        )
        .bind(&license.customer_id)
        .bind(license.associated_customer_id.clone())
        .bind(license.valid_from)
        .bind(&license.notes)
        .bind(i64::from(license.seats))
        .bind(i64::from(license.allowed_deactivations))
        .bind(to_json(&license.modules))
        .bind(to_json(&license.module_entitlements))
        .bind(license.expires_at)
        .bind(license.upgrades_until)
        .bind(license.grace_period_ms)
        .bind(license.heartbeat_timeout_ms)
        .bind(to_json(&license.meters))
        .bind(license.policy_id.clone())
        .bind(license.policy_revision)
        .bind(license.first_use.as_ref().map(to_json))
        .bind(license.updated_at)
        .bind(license_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("UPDATE trial_machines SET converted_at = $1 WHERE license_id = $2")
            .bind(now)
            .bind(license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let audit = audit.with_details(serde_json::json!({
            "customer_id": customer_id,
            "policy_id": policy.policy_id,
            "policy_revision": policy.revision,
            "expires_at": license.expires_at,
            "associated": associate,
        }));
        insert_audit(&mut tx, &audit, now).await?;
        self.notify_license_change(&mut tx, license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.license_changed(license_id).await;
        Ok(license)
    }

    async fn trial_stats(&self, product_code: &str, now: Millis) -> Result<TrialStats, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS started, \
             COALESCE(SUM(CASE WHEN t.converted_at IS NOT NULL THEN 1 ELSE 0 END), 0) AS converted, \
             COALESCE(SUM(CASE WHEN t.converted_at IS NULL AND l.expires_at IS NOT NULL AND l.expires_at <= $2 \
             THEN 1 ELSE 0 END), 0) AS expired \
             FROM trial_machines t JOIN licenses l ON l.license_id = t.license_id WHERE t.product_code = $1",
        )
        .bind(product_code)
        .bind(now)
        .fetch_one(&self.readers)
        .await
        .map_err(map_err)?;
        let (started, converted, expired) =
            (get_i64(&row, "started")?, get_i64(&row, "converted")?, get_i64(&row, "expired")?);
        Ok(TrialStats { started, active: started - converted - expired, expired, converted })
    }
}
