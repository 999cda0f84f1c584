//! Metered features: record use of a license's meters (`exports`, `cpu-hours`) and read what
//! is left. Each use carries an idempotency key, so a use retried after a lost answer (this
//! module retries transient failures itself) is counted once.

use crate::error::ClientError;
use crate::floating::ts_millis;
use crate::node_locked::credentials;
use crate::{Client, Credentials};
use licensing_domain::clock::Millis;
use licensing_proto::activation::v1 as pb;
use licensing_proto::common::v1 as common;

/// A meter's count in its current period, as the server reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeterCount {
    /// The meter's code, e.g. `exports`.
    pub meter: String,
    /// Counted in the period.
    pub used: i64,
    /// Use allowed per period.
    pub limit: i64,
    /// Use allowed beyond the limit per period.
    pub overage: i64,
    /// Left within the limit (0 once in overage).
    pub remaining: i64,
    /// When the count starts again (Unix ms); `None` when it never resets.
    pub period_end_ms: Option<Millis>,
}

impl From<common::MeterUsage> for MeterCount {
    fn from(u: common::MeterUsage) -> Self {
        let meter = u.meter.unwrap_or_default();
        Self {
            meter: meter.code,
            used: u.used,
            limit: meter.limit,
            overage: meter.overage,
            remaining: u.remaining,
            period_end_ms: u.period_end.as_ref().map(|t| ts_millis(Some(t))),
        }
    }
}

/// What the server made of a use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UseRecorded {
    /// The meter's count after the use.
    pub count: MeterCount,
    /// True when the server had counted this key before (a retry): nothing was added.
    pub replayed: bool,
    /// True when the use went past the limit, into the overage allowance.
    pub in_overage: bool,
}

/// Attempts of one use before a transient failure is reported (same key each time).
const ATTEMPTS: u32 = 4;

/// A fresh idempotency key for one use.
pub fn new_idempotency_key() -> String {
    licensing_domain::ids::new_id("use")
}

impl Client {
    /// Records `amount` of `meter` under `idempotency_key` (one key per use: see
    /// [`new_idempotency_key`]). Retries an unreachable or overloaded server a few times with
    /// the same key, so the use counts once whatever was lost. A use beyond the meter's limit
    /// and overage fails with `RESOURCE_EXHAUSTED` (`METER_LIMIT_REACHED`) and counts nothing.
    pub async fn record_usage(
        &self,
        license: &Credentials,
        meter: &str,
        amount: i64,
        idempotency_key: &str,
    ) -> Result<UseRecorded, ClientError> {
        let request = pb::RecordUsageRequest {
            credentials: credentials(license),
            meter: meter.to_owned(),
            amount,
            idempotency_key: idempotency_key.to_owned(),
        };
        let mut attempt = 0;
        loop {
            match self.activation.clone().record_usage(request.clone()).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    let usage = reply.usage.ok_or(ClientError::Config("the server's answer lacked the meter"))?;
                    return Ok(UseRecorded {
                        count: usage.into(),
                        replayed: reply.replayed,
                        in_overage: reply.in_overage,
                    });
                }
                Err(status) if transient(&status) && attempt + 1 < ATTEMPTS => {
                    tokio::time::sleep(crate::floating::backoff(attempt)).await;
                    attempt += 1;
                }
                Err(status) => return Err(ClientError::from_status(status)),
            }
        }
    }

    /// The license's meters with their counts in the current period.
    pub async fn meter_usage(&self, license: &Credentials) -> Result<Vec<MeterCount>, ClientError> {
        let request = pb::GetMeterUsageRequest { credentials: credentials(license) };
        let reply = self.activation.clone().get_meter_usage(request).await.map_err(ClientError::from_status)?;
        Ok(reply.into_inner().meters.into_iter().map(MeterCount::from).collect())
    }
}

/// Failures a retry with the same key may get past.
fn transient(status: &tonic::Status) -> bool {
    matches!(status.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted)
}
