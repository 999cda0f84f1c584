//! [`LeaseStore`] on SQL, for the embedded default: the same semantics as Redis, with the pool
//! row locked for each decision and the server process's clock as the one clock. Persisted, so a
//! restart loses no lease.

use super::*;
use async_trait::async_trait;
use licensing_domain::clock::{Millis, SharedClock};
use licensing_domain::model::Lease;
use licensing_domain::store::*;
use sqlx::{Any, Transaction};

#[derive(Clone)]
pub struct SqlLeaseStore {
    sql: SqlStore,
    clock: SharedClock,
}

fn lease_from_row(row: &AnyRow) -> Result<Lease, StoreError> {
    let expires_at = get_i64(row, "expires_at")?;
    let ttl_ms = get_i64(row, "ttl_ms")?;
    Ok(Lease {
        lease_id: get_str(row, "lease_id")?,
        license_id: get_str(row, "license_id")?,
        client_instance_id: get_str(row, "client_instance_id")?,
        user: get_str(row, "user_name")?,
        host: get_str(row, "host")?,
        feature: get_str(row, "feature")?,
        checked_out_at: get_i64(row, "checked_out_at")?,
        last_heartbeat_at: expires_at - ttl_ms,
        expires_at,
        ttl_ms,
        fence: get_i64(row, "fence")?,
        seats_held: get_i32(row, "seats_held")?,
    })
}

impl SqlLeaseStore {
    pub fn new(sql: SqlStore, clock: SharedClock) -> Self {
        Self { sql, clock }
    }

    /// Begins a pool decision: the pool row exists and is locked; returns its fence.
    async fn lock_pool(&self, license_id: &str) -> Result<(Transaction<'static, Any>, i64), StoreError> {
        let mut tx = self.sql.begin().await?;
        sqlx::query("INSERT INTO lease_pools (license_id, fence) VALUES ($1, 0) ON CONFLICT (license_id) DO NOTHING")
            .bind(license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let sql = format!("SELECT fence FROM lease_pools WHERE license_id = $1{}", self.sql.dialect.for_update());
        let row = sqlx::query(&sql).bind(license_id).fetch_one(&mut *tx).await.map_err(map_err)?;
        let fence = get_i64(&row, "fence")?;
        Ok((tx, fence))
    }

    async fn live_lease(
        tx: &mut Transaction<'static, Any>,
        license_id: &str,
        lease_id: &str,
    ) -> Result<Option<Lease>, StoreError> {
        let row = sqlx::query("SELECT * FROM leases WHERE license_id = $1 AND lease_id = $2")
            .bind(license_id)
            .bind(lease_id)
            .fetch_optional(&mut **tx)
            .await
            .map_err(map_err)?;
        row.as_ref().map(lease_from_row).transpose()
    }
}

#[async_trait]
impl LeaseStore for SqlLeaseStore {
    async fn checkout(&self, c: &CheckoutCommand) -> Result<CheckoutOutcome, StoreError> {
        let (mut tx, fence) = self.lock_pool(&c.license_id).await?;
        let now = self.clock.now();
        let existing =
            sqlx::query("SELECT * FROM leases WHERE license_id = $1 AND client_instance_id = $2 AND expires_at > $3")
                .bind(&c.license_id)
                .bind(&c.client_instance_id)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
        let usage = sqlx::query("SELECT CAST(COALESCE(SUM(seats_held), 0) AS BIGINT) AS used, MIN(expires_at) AS earliest FROM leases WHERE license_id = $1 AND expires_at > $2")
            .bind(&c.license_id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let in_use = get_i64(&usage, "used")? as i32;
        if let Some(row) = existing {
            let mut lease = lease_from_row(&row)?;
            lease.expires_at = now + lease.ttl_ms;
            lease.last_heartbeat_at = now;
            sqlx::query("UPDATE leases SET expires_at = $1 WHERE lease_id = $2")
                .bind(lease.expires_at)
                .bind(&lease.lease_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.commit().await.map_err(map_err)?;
            return Ok(CheckoutOutcome::Granted { lease, renewed: true, in_use });
        }
        if in_use + c.cost > c.seats {
            return Ok(CheckoutOutcome::Full { in_use, earliest_expiry: get_opt_i64(&usage, "earliest")? });
        }
        let lease = Lease {
            lease_id: c.lease_id.clone(),
            license_id: c.license_id.clone(),
            client_instance_id: c.client_instance_id.clone(),
            user: c.user.clone(),
            host: c.host.clone(),
            feature: c.feature.clone(),
            checked_out_at: now,
            last_heartbeat_at: now,
            expires_at: now + c.ttl_ms,
            ttl_ms: c.ttl_ms,
            fence: fence + 1,
            seats_held: c.cost,
        };
        sqlx::query("UPDATE lease_pools SET fence = $1 WHERE license_id = $2")
            .bind(lease.fence)
            .bind(&c.license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO leases (lease_id, license_id, client_instance_id, user_name, host, feature, checked_out_at, expires_at, ttl_ms, fence, seats_held) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&lease.lease_id)
        .bind(&lease.license_id)
        .bind(&lease.client_instance_id)
        .bind(&lease.user)
        .bind(&lease.host)
        .bind(&lease.feature)
        .bind(lease.checked_out_at)
        .bind(lease.expires_at)
        .bind(lease.ttl_ms)
        .bind(lease.fence)
        .bind(i64::from(lease.seats_held))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(CheckoutOutcome::Granted { lease, renewed: false, in_use: in_use + c.cost })
    }

    async fn heartbeat(&self, license_id: &str, lease_id: &str) -> Result<HeartbeatOutcome, StoreError> {
        let (mut tx, _) = self.lock_pool(license_id).await?;
        let now = self.clock.now();
        let Some(mut lease) = Self::live_lease(&mut tx, license_id, lease_id).await? else {
            let revoked = sqlx::query("SELECT 1 AS one FROM lease_tombstones WHERE lease_id = $1 AND license_id = $2")
                .bind(lease_id)
                .bind(license_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            return Ok(if revoked.is_some() { HeartbeatOutcome::Revoked } else { HeartbeatOutcome::Unknown });
        };
        if lease.expires_at <= now {
            // Left for the sweep to record; it no longer counts either way.
            return Ok(HeartbeatOutcome::Expired);
        }
        lease.expires_at = now + lease.ttl_ms;
        lease.last_heartbeat_at = now;
        sqlx::query("UPDATE leases SET expires_at = $1 WHERE lease_id = $2")
            .bind(lease.expires_at)
            .bind(lease_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(HeartbeatOutcome::Extended(lease))
    }

    async fn checkin(&self, license_id: &str, lease_id: &str) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let done = sqlx::query("DELETE FROM leases WHERE license_id = $1 AND lease_id = $2 AND expires_at > $3")
            .bind(license_id)
            .bind(lease_id)
            .bind(now)
            .execute(&self.sql.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke(&self, license_id: &str, lease_id: &str) -> Result<Option<i64>, StoreError> {
        let (mut tx, fence) = self.lock_pool(license_id).await?;
        let now = self.clock.now();
        let done = sqlx::query("DELETE FROM leases WHERE license_id = $1 AND lease_id = $2 AND expires_at > $3")
            .bind(license_id)
            .bind(lease_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        sqlx::query("UPDATE lease_pools SET fence = $1 WHERE license_id = $2")
            .bind(fence + 1)
            .bind(license_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        sqlx::query("INSERT INTO lease_tombstones (lease_id, license_id, revoked_at) VALUES ($1, $2, $3) ON CONFLICT (lease_id) DO NOTHING")
            .bind(lease_id)
            .bind(license_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(Some(fence + 1))
    }

    async fn list(&self, license_id: &str) -> Result<Vec<Lease>, StoreError> {
        let rows = sqlx::query("SELECT * FROM leases WHERE license_id = $1 AND expires_at > $2 ORDER BY expires_at")
            .bind(license_id)
            .bind(self.clock.now())
            .fetch_all(&self.sql.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(lease_from_row).collect()
    }

    async fn sweep_expired(&self, max: usize) -> Result<Vec<Lease>, StoreError> {
        let mut tx = self.sql.begin().await?;
        let rows = sqlx::query("SELECT * FROM leases WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2")
            .bind(self.clock.now())
            .bind(max as i64)
            .fetch_all(&mut *tx)
            .await
            .map_err(map_err)?;
        let expired: Vec<Lease> = rows.iter().map(lease_from_row).collect::<Result<_, _>>()?;
        for lease in &expired {
            sqlx::query("DELETE FROM leases WHERE lease_id = $1 AND expires_at <= $2")
                .bind(&lease.lease_id)
                .bind(lease.expires_at)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(expired)
    }

    async fn now(&self) -> Result<Millis, StoreError> {
        Ok(self.clock.now())
    }
}
