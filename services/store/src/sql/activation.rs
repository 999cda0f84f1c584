//! [`ActivationStore`] on SQL: the license row is locked for the whole decision, and the count
//! moves only through conditional updates, so racing activations never exceed the seats.

use super::catalog::license_from_row;
use super::*;
use async_trait::async_trait;
use licensing_domain::clock::Millis;
use licensing_domain::fingerprint::{self, ComponentDigest};
use licensing_domain::model::{Activation, ActivationEvent, License, Refusal};
use licensing_domain::store::*;
use sqlx::{Any, Transaction};

fn activation_from_row(row: &AnyRow) -> Result<Activation, StoreError> {
    Ok(Activation {
        installation_id: get_str(row, "installation_id")?,
        license_id: get_str(row, "license_id")?,
        fingerprint: from_json("fingerprint_json", &get_str(row, "fingerprint_json")?)?,
        machine_name: get_str(row, "machine_name")?,
        platform: get_str(row, "platform")?,
        product_version: get_str(row, "product_version")?,
        activated_at: get_i64(row, "activated_at")?,
        last_seen_at: get_i64(row, "last_seen_at")?,
        deactivated_at: get_opt_i64(row, "deactivated_at")?,
        offline: get_i64(row, "offline")? != 0,
    })
}

async fn insert_event(tx: &mut Transaction<'_, Any>, license_id: &str, e: &ActivationEvent) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO activation_events (license_id, installation_id, action, machine_name, fingerprint_digest, outcome, occurred_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(license_id)
    .bind(&e.installation_id)
    .bind(&e.action)
    .bind(&e.machine_name)
    .bind(&e.fingerprint_digest)
    .bind(&e.outcome)
    .bind(e.occurred_at)
    .execute(&mut **tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

async fn live_activations(tx: &mut Transaction<'_, Any>, license_id: &str) -> Result<Vec<Activation>, StoreError> {
    let rows = sqlx::query("SELECT * FROM activations WHERE license_id = $1 AND deactivated_at IS NULL")
        .bind(license_id)
        .fetch_all(&mut **tx)
        .await
        .map_err(map_err)?;
    rows.iter().map(activation_from_row).collect()
}

/// The live activation whose stored fingerprint best matches, if at or above the threshold.
fn best_match(live: Vec<Activation>, presented: &[ComponentDigest], threshold: f64) -> Option<Activation> {
    live.into_iter()
        .map(|a| (fingerprint::match_share(&a.fingerprint, presented), a))
        .filter(|(share, _)| *share >= threshold)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, a)| a)
}

impl SqlStore {
    /// The license as it is after a change to its activations, read inside the change's
    /// transaction. On PostgreSQL the same statement queues the change's NOTIFY (sent at commit,
    /// not at all on rollback) for other processes' caches, so the hot path pays no round trip
    /// for it.
    async fn license_after_activations_changed(
        &self,
        tx: &mut Transaction<'_, Any>,
        license_id: &str,
    ) -> Result<License, StoreError> {
        let query = match self.dialect {
            Dialect::Postgres => sqlx::query(
                "SELECT *, CAST(pg_notify($2, license_id) AS TEXT) AS notified FROM licenses WHERE license_id = $1",
            )
            .bind(license_id)
            .bind(LICENSE_CHANNEL),
            Dialect::Sqlite => sqlx::query("SELECT * FROM licenses WHERE license_id = $1").bind(license_id),
        };
        let row = query.fetch_one(&mut **tx).await.map_err(map_err)?;
        license_from_row(&row)
    }
}

#[async_trait]
impl ActivationStore for SqlStore {
    #[tracing::instrument(name = "store.activate", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn activate(
        &self,
        c: &ActivateCommand,
        usable: &(dyn for<'l> Fn(&'l License) -> Result<(), Refusal> + Send + Sync),
    ) -> Result<ActivateOutcome, ActivationStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, &c.license_id)
            .await?
            .ok_or_else(|| ActivationStoreError::LicenseNotFound(c.license_id.clone()))?;
        usable(&license).map_err(ActivationStoreError::Refused)?;
        let action = if c.offline { "offline_activate" } else { "activate" };
        if let Some(mut existing) =
            best_match(live_activations(&mut tx, &c.license_id).await?, &c.fingerprint, c.match_threshold)
        {
            // The same machine: refresh what it looks like now, so gradual hardware changes keep matching.
            sqlx::query("UPDATE activations SET fingerprint_json = $1, last_seen_at = $2, machine_name = $3, product_version = $4 WHERE installation_id = $5")
                .bind(to_json(&c.fingerprint))
                .bind(c.now)
                .bind(&c.machine_name)
                .bind(&c.product_version)
                .bind(&existing.installation_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            let event = ActivationEvent {
                occurred_at: c.now,
                action: action.into(),
                installation_id: existing.installation_id.clone(),
                machine_name: c.machine_name.clone(),
                fingerprint_digest: c.fingerprint_summary.clone(),
                outcome: "ok: already activated".into(),
            };
            insert_event(&mut tx, &c.license_id, &event).await?;
            // The stored fingerprint moved: validation caches must match against the new one.
            self.notify_license_change(&mut tx, &c.license_id).await?;
            tx.commit().await.map_err(map_err)?;
            self.tell_subscribers(&c.license_id);
            existing.fingerprint = c.fingerprint.clone();
            existing.last_seen_at = c.now;
            existing.machine_name = c.machine_name.clone();
            existing.product_version = c.product_version.clone();
            return Ok(ActivateOutcome::Existing(existing, license));
        }
        let raised = sqlx::query("UPDATE licenses SET activations_used = activations_used + 1 WHERE license_id = $1 AND activations_used < seats")
            .bind(&c.license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if raised.rows_affected() == 0 {
            return Err(ActivationStoreError::LimitReached { seats: license.seats });
        }
        let activation = Activation {
            installation_id: c.installation_id.clone(),
            license_id: c.license_id.clone(),
            fingerprint: c.fingerprint.clone(),
            machine_name: c.machine_name.clone(),
            platform: c.platform.clone(),
            product_version: c.product_version.clone(),
            activated_at: c.now,
            last_seen_at: c.now,
            deactivated_at: None,
            offline: c.offline,
        };
        sqlx::query(
            "INSERT INTO activations (installation_id, license_id, fingerprint_json, machine_name, platform, product_version, \
             activated_at, last_seen_at, deactivated_at, offline) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)",
        )
        .bind(&activation.installation_id)
        .bind(&activation.license_id)
        .bind(to_json(&activation.fingerprint))
        .bind(&activation.machine_name)
        .bind(&activation.platform)
        .bind(&activation.product_version)
        .bind(c.now)
        .bind(c.now)
        .bind(i64::from(c.offline))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let event = ActivationEvent {
            occurred_at: c.now,
            action: action.into(),
            installation_id: activation.installation_id.clone(),
            machine_name: c.machine_name.clone(),
            fingerprint_digest: c.fingerprint_summary.clone(),
            outcome: "ok".into(),
        };
        insert_event(&mut tx, &c.license_id, &event).await?;
        let license = self.license_after_activations_changed(&mut tx, &c.license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(&c.license_id);
        Ok(ActivateOutcome::New(activation, license))
    }

    #[tracing::instrument(name = "store.deactivate", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn deactivate(&self, c: &DeactivateCommand) -> Result<(Activation, License), ActivationStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, &c.license_id)
            .await?
            .ok_or_else(|| ActivationStoreError::LicenseNotFound(c.license_id.clone()))?;
        let live = live_activations(&mut tx, &c.license_id).await?;
        let mut activation = match &c.target {
            DeactivateTarget::Installation(id) => live.into_iter().find(|a| &a.installation_id == id),
            DeactivateTarget::Fingerprint { digests, match_threshold } => best_match(live, digests, *match_threshold),
        }
        .ok_or(ActivationStoreError::NoActivation)?;
        let spent = sqlx::query(
            "UPDATE licenses SET activations_used = activations_used - 1, deactivations_used = deactivations_used + $2 \
             WHERE license_id = $1 AND activations_used > 0 \
             AND ($2 = 0 OR allowed_deactivations = -1 OR deactivations_used < allowed_deactivations)",
        )
        .bind(&c.license_id)
        .bind(i64::from(c.counts))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if spent.rows_affected() == 0 {
            return Err(ActivationStoreError::DeactivationLimit { allowed: license.allowed_deactivations });
        }
        sqlx::query("UPDATE activations SET deactivated_at = $1 WHERE installation_id = $2")
            .bind(c.now)
            .bind(&activation.installation_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let event = ActivationEvent {
            occurred_at: c.now,
            action: c.action.into(),
            installation_id: activation.installation_id.clone(),
            machine_name: activation.machine_name.clone(),
            fingerprint_digest: fingerprint::summary(&activation.fingerprint),
            outcome: if c.counts { "ok".into() } else { "ok: not counted".into() },
        };
        insert_event(&mut tx, &c.license_id, &event).await?;
        let license = self.license_after_activations_changed(&mut tx, &c.license_id).await?;
        tx.commit().await.map_err(map_err)?;
        self.tell_subscribers(&c.license_id);
        activation.deactivated_at = Some(c.now);
        Ok((activation, license))
    }

    #[tracing::instrument(name = "store.get_activation", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn get_activation(&self, installation_id: &str) -> Result<Option<Activation>, StoreError> {
        let row = sqlx::query("SELECT * FROM activations WHERE installation_id = $1")
            .bind(installation_id)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
        row.as_ref().map(activation_from_row).transpose()
    }

    #[tracing::instrument(name = "store.list_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError> {
        let rows =
            sqlx::query("SELECT * FROM activations WHERE license_id = $1 ORDER BY activated_at DESC, installation_id")
                .bind(license_id)
                .fetch_all(&self.readers)
                .await
                .map_err(map_err)?;
        rows.iter().map(activation_from_row).collect()
    }

    #[tracing::instrument(name = "store.list_live_activations", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_live_activations(&self, license_id: &str) -> Result<Vec<Activation>, StoreError> {
        let sql = "SELECT * FROM activations WHERE license_id = $1 AND deactivated_at IS NULL \
                   ORDER BY activated_at DESC, installation_id";
        let rows = sqlx::query(sql).bind(license_id).fetch_all(&self.readers).await.map_err(map_err)?;
        rows.iter().map(activation_from_row).collect()
    }

    #[tracing::instrument(name = "store.record_refresh", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_refresh(
        &self,
        installation_id: &str,
        event: &ActivationEvent,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let row =
            sqlx::query("UPDATE activations SET last_seen_at = $1 WHERE installation_id = $2 RETURNING license_id")
                .bind(now)
                .bind(installation_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let license_id = match row {
            Some(row) => get_str(&row, "license_id")?,
            None => return Err(StoreError::NotFound(format!("installation {installation_id}"))),
        };
        insert_event(&mut tx, &license_id, event).await?;
        tx.commit().await.map_err(map_err)
    }

    #[tracing::instrument(name = "store.list_activation_events", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_activation_events(&self, license_id: &str) -> Result<Vec<ActivationEvent>, StoreError> {
        let rows = sqlx::query("SELECT * FROM activation_events WHERE license_id = $1 ORDER BY sequence")
            .bind(license_id)
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(ActivationEvent {
                    occurred_at: get_i64(row, "occurred_at")?,
                    action: get_str(row, "action")?,
                    installation_id: get_str(row, "installation_id")?,
                    machine_name: get_str(row, "machine_name")?,
                    fingerprint_digest: get_str(row, "fingerprint_digest")?,
                    outcome: get_str(row, "outcome")?,
                })
            })
            .collect()
    }
}
