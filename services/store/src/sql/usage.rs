//! [`UsageStore`] on SQL: the usage log behind reports.

use super::*;
use async_trait::async_trait;
use licensing_domain::clock::Millis;
use licensing_domain::model::{UsageEvent, UsageKind};
use licensing_domain::store::UsageStore;

/// Columns of one `usage_events` row as inserted.
const USAGE_COLUMNS: usize = 13;
/// Rows a single INSERT carries: 64 × 13 parameters stays far below SQLite's and PostgreSQL's limits.
const USAGE_ROWS_PER_INSERT: usize = 64;

fn event_from_row(row: &AnyRow) -> Result<UsageEvent, StoreError> {
    let kind = get_str(row, "kind")?;
    Ok(UsageEvent {
        license_id: get_str(row, "license_id")?,
        occurred_at: get_i64(row, "occurred_at")?,
        kind: UsageKind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("usage kind: {kind}")))?,
        lease_id: get_str(row, "lease_id")?,
        group_id: get_str(row, "group_id")?,
        user: get_str(row, "user_name")?,
        host: get_str(row, "host")?,
        feature: get_str(row, "feature")?,
        seats_delta: get_i32(row, "seats_delta")?,
        overdraft: get_i64(row, "overdraft")? != 0,
        borrowed: get_i64(row, "borrowed")? != 0,
        reason: get_str(row, "reason")?,
        count: get_i64(row, "event_count")?,
    })
}

#[async_trait]
impl UsageStore for SqlStore {
    #[tracing::instrument(name = "store.append_usage", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn append_usage(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        // Many rows a statement: each statement is a round trip (a hand-off to the SQLite
        // writer's thread), and the writer is shared with every seat decision.
        for chunk in events.chunks(USAGE_ROWS_PER_INSERT) {
            let rows = (0..chunk.len())
                .map(|i| {
                    let params = (1..=USAGE_COLUMNS).map(|c| format!("${}", i * USAGE_COLUMNS + c));
                    format!("({})", params.collect::<Vec<_>>().join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO usage_events (license_id, occurred_at, kind, lease_id, group_id, user_name, host, feature, \
                 seats_delta, overdraft, borrowed, reason, event_count) VALUES {rows}"
            );
            let mut query = sqlx::query(&sql);
            for e in chunk {
                query = query
                    .bind(&e.license_id)
                    .bind(e.occurred_at)
                    .bind(e.kind.as_str())
                    .bind(&e.lease_id)
                    .bind(&e.group_id)
                    .bind(&e.user)
                    .bind(&e.host)
                    .bind(&e.feature)
                    .bind(i64::from(e.seats_delta))
                    .bind(i64::from(e.overdraft))
                    .bind(i64::from(e.borrowed))
                    .bind(&e.reason)
                    .bind(e.count);
            }
            query.execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(())
    }

    #[tracing::instrument(name = "store.usage_events", skip_all, fields(otel.kind = "client", store = "sql"))]
    async fn usage_events(&self, license_id: &str, until: Millis) -> Result<Vec<UsageEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM usage_events WHERE license_id = $1 AND occurred_at < $2 ORDER BY occurred_at, sequence",
        )
        .bind(license_id)
        .bind(until)
        .fetch_all(&self.readers)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }
}
