//! [`MeterStore`] on SQL: each use decided in one transaction with the license row locked
//! (PostgreSQL `FOR UPDATE`; the embedded SQLite store has one writer), so concurrent uses of a
//! meter are decided one after another and never exceed its limit.

use super::*;
use async_trait::async_trait;
use licensing_domain::clock::Millis;
use licensing_domain::meter::{Meter, MeterReset, MeterUsage, Period, RecordUse, UseRecorded, UseRefused};
use licensing_domain::model::License;
use licensing_domain::store::{MeterStore, MeterStoreError, UsableCheck};
use sqlx::{Any, Transaction};

const PERIOD_COLUMNS: &str = "meter, period_start, period_end, reset, usage_limit, overage, used";

fn usage_from_row(row: &AnyRow) -> Result<MeterUsage, StoreError> {
    let reset = get_str(row, "reset")?;
    Ok(MeterUsage {
        meter: Meter {
            code: get_str(row, "meter")?,
            limit: get_i64(row, "usage_limit")?,
            overage: get_i64(row, "overage")?,
            reset: MeterReset::parse(&reset).ok_or_else(|| StoreError::Corrupt(format!("meter reset: {reset}")))?,
        },
        period: Period { start: get_i64(row, "period_start")?, end: get_opt_i64(row, "period_end")? },
        used: get_i64(row, "used")?,
    })
}

/// The count of one meter's period as the transaction sees it (0 before its first use).
async fn period_used(
    tx: &mut Transaction<'_, Any>,
    license_id: &str,
    meter: &str,
    period_start: Millis,
) -> Result<i64, StoreError> {
    let row = sqlx::query("SELECT used FROM meter_periods WHERE license_id = $1 AND meter = $2 AND period_start = $3")
        .bind(license_id)
        .bind(meter)
        .bind(period_start)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_err)?;
    row.as_ref().map_or(Ok(0), |r| get_i64(r, "used"))
}

#[async_trait]
impl MeterStore for SqlStore {
    #[tracing::instrument(name = "store.record_use", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_use(&self, command: &RecordUse, usable: &UsableCheck) -> Result<UseRecorded, MeterStoreError> {
        let mut tx = self.begin().await?;
        let license = self
            .lock_license(&mut tx, &command.license_id)
            .await?
            .ok_or_else(|| MeterStoreError::LicenseNotFound(command.license_id.clone()))?;

        // A use already counted under this key is answered again, whatever happened since:
        // the product may be retrying after a lost answer.
        let recorded = sqlx::query(
            "SELECT meter, amount, period_start FROM meter_uses WHERE license_id = $1 AND idempotency_key = $2",
        )
        .bind(&command.license_id)
        .bind(&command.idempotency_key)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        if let Some(row) = recorded {
            let (meter, amount) = (get_str(&row, "meter")?, get_i64(&row, "amount")?);
            if meter != command.meter || amount != command.amount {
                return Err(UseRefused::KeyReused {
                    key: command.idempotency_key.clone(),
                    recorded_meter: meter,
                    recorded_amount: amount,
                }
                .into());
            }
            let sql = format!(
                "SELECT {PERIOD_COLUMNS} FROM meter_periods WHERE license_id = $1 AND meter = $2 AND period_start = $3"
            );
            let period = sqlx::query(&sql)
                .bind(&command.license_id)
                .bind(&meter)
                .bind(get_i64(&row, "period_start")?)
                .fetch_one(&mut *tx)
                .await
                .map_err(map_err)?;
            tx.rollback().await.map_err(map_err)?;
            return Ok(UseRecorded { usage: usage_from_row(&period)?, replayed: true });
        }

        usable(&license).map_err(UseRefused::NotUsable)?;
        let Some(meter) = license.meters.iter().find(|m| m.code == command.meter) else {
            let known: Vec<&str> = license.meters.iter().map(|m| m.code.as_str()).collect();
            return Err(UseRefused::UnknownMeter {
                license_id: license.license_id.clone(),
                meter: command.meter.clone(),
                known: if known.is_empty() { "none".into() } else { known.join(", ") },
            }
            .into());
        };
        let period = meter.reset.period(command.at);
        let used = period_used(&mut tx, &license.license_id, &meter.code, period.start).await?;
        if used + command.amount > meter.ceiling() {
            return Err(UseRefused::LimitReached {
                license_id: license.license_id.clone(),
                meter: meter.code.clone(),
                amount: command.amount,
                used,
                limit: meter.limit,
                overage: meter.overage,
                left: (meter.ceiling() - used).max(0),
            }
            .into());
        }
        sqlx::query(
            "INSERT INTO meter_periods (license_id, meter, period_start, period_end, reset, usage_limit, overage, used) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (license_id, meter, period_start) DO UPDATE SET used = meter_periods.used + EXCLUDED.used, \
             period_end = EXCLUDED.period_end, reset = EXCLUDED.reset, usage_limit = EXCLUDED.usage_limit, \
             overage = EXCLUDED.overage",
        )
        .bind(&license.license_id)
        .bind(&meter.code)
        .bind(period.start)
        .bind(period.end)
        .bind(meter.reset.as_str())
        .bind(meter.limit)
        .bind(meter.overage)
        .bind(command.amount)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO meter_uses (license_id, meter, idempotency_key, amount, period_start, recorded_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&license.license_id)
        .bind(&meter.code)
        .bind(&command.idempotency_key)
        .bind(command.amount)
        .bind(period.start)
        .bind(command.at)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(UseRecorded {
            usage: MeterUsage { meter: meter.clone(), period, used: used + command.amount },
            replayed: false,
        })
    }

    #[tracing::instrument(name = "store.current_meter_usage", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn current_meter_usage(&self, license: &License, now: Millis) -> Result<Vec<MeterUsage>, StoreError> {
        let mut usage = Vec::with_capacity(license.meters.len());
        for meter in &license.meters {
            let period = meter.reset.period(now);
            let row = sqlx::query(
                "SELECT used FROM meter_periods WHERE license_id = $1 AND meter = $2 AND period_start = $3",
            )
            .bind(&license.license_id)
            .bind(&meter.code)
            .bind(period.start)
            .fetch_optional(&self.readers)
            .await
            .map_err(map_err)?;
            let used = row.as_ref().map_or(Ok(0), |r| get_i64(r, "used"))?;
            usage.push(MeterUsage { meter: meter.clone(), period, used });
        }
        Ok(usage)
    }

    #[tracing::instrument(name = "store.meter_history", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn meter_history(&self, license_id: &str) -> Result<Vec<MeterUsage>, StoreError> {
        let sql =
            format!("SELECT {PERIOD_COLUMNS} FROM meter_periods WHERE license_id = $1 ORDER BY meter, period_start");
        let rows = sqlx::query(&sql).bind(license_id).fetch_all(&self.readers).await.map_err(map_err)?;
        rows.iter().map(usage_from_row).collect()
    }
}
