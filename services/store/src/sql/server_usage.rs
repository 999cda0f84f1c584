//! [`ServerUsageStore`] on SQL: each upload decided in one transaction with the license row
//! locked (PostgreSQL `FOR UPDATE`; the embedded SQLite store has one writer), so a retried
//! upload racing the first finds its row and a report is stored once per installation and
//! period (the unique index `server_usage_reports_period` holds it regardless).

use super::catalog::insert_audit;
use super::*;
use async_trait::async_trait;
use licensing_domain::model::Page;
use licensing_domain::server_usage::{
    RecordServerUsage, ServerGrantUsage, ServerUsageRefused, ServerUsageReport, ServerUsageStore,
    ServerUsageStoreError, UsageRecorded,
};
use licensing_domain::text::quoted;

const REPORT_COLUMNS: &str =
    "sequence, report_id, license_id, installation_id, serial, period_start, period_end, grants_json, received_at";

fn report_from_row(row: &AnyRow) -> Result<ServerUsageReport, StoreError> {
    Ok(ServerUsageReport {
        report_id: get_str(row, "report_id")?,
        sequence: get_i64(row, "sequence")?,
        license_id: get_str(row, "license_id")?,
        installation_id: get_str(row, "installation_id")?,
        serial: get_i64(row, "serial")?,
        period_start: get_i64(row, "period_start")?,
        period_end: get_i64(row, "period_end")?,
        grants: from_json::<Vec<ServerGrantUsage>>("grants_json", &get_str(row, "grants_json")?)?,
        received_at: get_i64(row, "received_at")?,
    })
}

#[async_trait]
impl ServerUsageStore for SqlStore {
    #[tracing::instrument(name = "store.record_server_usage", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn record_server_usage(&self, command: &RecordServerUsage) -> Result<UsageRecorded, ServerUsageStoreError> {
        let usage = &command.usage;
        let mut tx = self.begin().await?;
        self.lock_license(&mut tx, &command.license_id)
            .await?
            .ok_or_else(|| ServerUsageStoreError::LicenseNotFound(command.license_id.clone()))?;
        let activation = sqlx::query(
            "SELECT deactivated_at, server_serial FROM activations WHERE installation_id = $1 AND license_id = $2",
        )
        .bind(&usage.installation_id)
        .bind(&command.license_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .ok_or_else(|| ServerUsageRefused::InstallationNotFound {
            license_id: command.license_id.clone(),
            installation_id: usage.installation_id.clone(),
        })?;

        // A report of this period stored before is answered again, whatever happened since: the
        // server may be retrying after a lost answer.
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM server_usage_reports \
             WHERE installation_id = $1 AND period_start = $2 AND period_end = $3"
        );
        let stored = sqlx::query(&sql)
            .bind(&usage.installation_id)
            .bind(usage.period_start)
            .bind(usage.period_end)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(row) = stored {
            let report = report_from_row(&row)?;
            tx.rollback().await.map_err(map_err)?;
            if report.serial != usage.serial || report.grants != usage.grants {
                return Err(ServerUsageRefused::Conflict {
                    installation_id: usage.installation_id.clone(),
                    report_id: report.report_id,
                }
                .into());
            }
            return Ok(UsageRecorded { report, replayed: true });
        }

        if let Some(deactivated_at) = get_opt_i64(&activation, "deactivated_at")? {
            return Err(ServerUsageRefused::Deactivated {
                license_id: command.license_id.clone(),
                installation_id: usage.installation_id.clone(),
                deactivated_at,
            }
            .into());
        }
        let latest = get_i64(&activation, "server_serial")?;
        if usage.serial > latest {
            return Err(ServerUsageRefused::UnknownSerial {
                installation_id: usage.installation_id.clone(),
                serial: usage.serial,
                latest,
            }
            .into());
        }
        let sql = format!(
            "INSERT INTO server_usage_reports (report_id, license_id, installation_id, serial, period_start, period_end, \
             grants_json, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {REPORT_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(&command.report_id)
            .bind(&command.license_id)
            .bind(&usage.installation_id)
            .bind(usage.serial)
            .bind(usage.period_start)
            .bind(usage.period_end)
            .bind(to_json(&usage.grants))
            .bind(command.received_at)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        let report = report_from_row(&row)?;
        insert_audit(&mut tx, &command.audit, command.received_at).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(UsageRecorded { report, replayed: false })
    }

    #[tracing::instrument(name = "store.list_server_usage_reports", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn list_server_usage_reports(
        &self,
        license_id: &str,
        page: &Page,
    ) -> Result<Vec<ServerUsageReport>, StoreError> {
        let before = match page.after.as_deref() {
            None => i64::MAX,
            Some(token) => token
                .parse::<i64>()
                .map_err(|_| StoreError::Other(format!("page token {} is not a report sequence", quoted(token))))?,
        };
        let sql = format!(
            "SELECT {REPORT_COLUMNS} FROM server_usage_reports WHERE license_id = $1 AND sequence < $2 \
             ORDER BY sequence DESC LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(license_id)
            .bind(before)
            .bind(limit(page))
            .fetch_all(&self.readers)
            .await
            .map_err(map_err)?;
        rows.iter().map(report_from_row).collect()
    }
}
