//! Server usage reports: what a customer's on-premises license server used of its server
//! license's grants over a period (peak concurrent use, checkouts, denials, leased time), as it
//! uploads them online (`ActivationService.ReportServerUsage`). The vendor's admin and the
//! license's customer read them back.
//!
//! A report is one per server activation and period: a retried upload (the same installation,
//! period start and period end) is the report stored the first time, never a second one.

use crate::clock::{Millis, DAY};
use crate::error::StoreError;
use crate::model::{AuditRecord, Page};
use crate::text::quoted;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Grants one report may carry at most.
pub const MAX_GRANT_USAGES: usize = 256;

/// The longest period one report may cover.
pub const MAX_PERIOD: Millis = 366 * DAY;

/// How far past the vendor's clock a period may end (the server's clock may run ahead).
pub const MAX_CLOCK_AHEAD: Millis = DAY;

/// How a grant is served: floating seats, or node-locked activations of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    /// Floating seats of a product or of one of its features.
    Floating,
    /// Node-locked activations of a product.
    NodeLocked,
}

impl GrantKind {
    /// `floating` or `node_locked`, as the wire names it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Floating => "floating",
            Self::NodeLocked => "node_locked",
        }
    }

    /// The kind a wire name names, if any.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "floating" => Some(Self::Floating),
            "node_locked" => Some(Self::NodeLocked),
            _ => None,
        }
    }
}

/// What a server used of one grant in the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerGrantUsage {
    /// The product's code.
    pub product_code: String,
    /// A feature (module) of the product; empty: the product itself.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub feature: String,
    /// Floating seats, or node-locked activations.
    pub kind: GrantKind,
    /// Seats (or activations) the server's file granted.
    pub granted: i32,
    /// The highest concurrent use in the period.
    pub peak_in_use: i32,
    /// Seats checked out (or machines activated) in the period.
    pub checkouts: i64,
    /// Checkouts refused for want of a seat in the period.
    pub denials: i64,
    /// Total leased time in the period, in seconds.
    pub seat_seconds: i64,
}

impl ServerGrantUsage {
    /// `product`, or `product/feature`, and the kind: `cad-pro/render floating`.
    pub fn name(&self) -> String {
        let grant = match self.feature.as_str() {
            "" => self.product_code.clone(),
            f => format!("{}/{f}", self.product_code),
        };
        format!("{grant} {}", self.kind.as_str())
    }
}

/// What a server uploads: its activation, the file it serves, the period and its use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUsage {
    /// The server's activation (`ins_…`), from its server license file.
    pub installation_id: String,
    /// The serial of the server license file it serves.
    pub serial: i64,
    /// Start of the period (Unix ms).
    pub period_start: Millis,
    /// End of the period (Unix ms); not before its start.
    pub period_end: Millis,
    /// The use of each grant.
    pub grants: Vec<ServerGrantUsage>,
}

/// A field of an upload refused by [`ServerUsage::validate`], and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct UsageFieldError {
    /// The request field: `period_end`, `grants.product_code`, …
    pub field: &'static str,
    /// Why, for people.
    pub message: String,
}

fn field_error(field: &'static str, message: impl Into<String>) -> UsageFieldError {
    UsageFieldError { field, message: message.into() }
}

/// A product or module code: 2-64 lowercase letters, digits or dashes, not starting with a dash.
fn is_code(value: &str) -> bool {
    (2..=64).contains(&value.len())
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
}

impl ServerUsage {
    /// Checks an upload against `now` (the vendor's clock): an Installation ID, a serial of 1 or
    /// more, a period that ends no earlier than it starts, is at most [`MAX_PERIOD`] long and
    /// ends at most [`MAX_CLOCK_AHEAD`] after now; 1 to [`MAX_GRANT_USAGES`] grants, each a
    /// product (and feature) code, a kind, figures not negative, named once per kind.
    pub fn validate(&self, now: Millis) -> Result<(), UsageFieldError> {
        if !crate::ids::is_well_formed(crate::ids::INSTALLATION, &self.installation_id) {
            return Err(field_error(
                "installation_id",
                format!(
                    "{} is not an Installation ID (ins_…): send the installation_id of the server license file",
                    quoted(&self.installation_id)
                ),
            ));
        }
        if self.serial < 1 {
            return Err(field_error(
                "serial",
                format!("must be the serial of the server license file served (1 or more), got {}", self.serial),
            ));
        }
        if self.period_end < self.period_start {
            return Err(field_error("period_end", "must not be before period_start"));
        }
        if self.period_end - self.period_start > MAX_PERIOD {
            return Err(field_error("period_end", "a report covers at most 366 days after period_start"));
        }
        if self.period_end > now.saturating_add(MAX_CLOCK_AHEAD) {
            return Err(field_error(
                "period_end",
                format!(
                    "{} is more than a day after the vendor's clock ({}): report a period that has ended",
                    crate::clock::rfc3339(self.period_end),
                    crate::clock::rfc3339(now)
                ),
            ));
        }
        if self.grants.is_empty() {
            return Err(field_error("grants", "report the use of at least one grant"));
        }
        if self.grants.len() > MAX_GRANT_USAGES {
            return Err(field_error(
                "grants",
                format!("at most {MAX_GRANT_USAGES} grants per report, got {}", self.grants.len()),
            ));
        }
        for (i, g) in self.grants.iter().enumerate() {
            if !is_code(&g.product_code) {
                return Err(field_error(
                    "grants.product_code",
                    format!(
                        "{} must be 2-64 lowercase letters, digits or dashes, not starting with a dash",
                        quoted(&g.product_code)
                    ),
                ));
            }
            if !g.feature.is_empty() && !is_code(&g.feature) {
                return Err(field_error(
                    "grants.feature",
                    format!(
                        "{} must be empty (the product itself) or 2-64 lowercase letters, digits or dashes",
                        quoted(&g.feature)
                    ),
                ));
            }
            if g.kind == GrantKind::NodeLocked && !g.feature.is_empty() {
                return Err(field_error("grants.kind", "node_locked use is of a product, not of a feature"));
            }
            let figures = [
                ("grants.granted", i64::from(g.granted)),
                ("grants.peak_in_use", i64::from(g.peak_in_use)),
                ("grants.checkouts", g.checkouts),
                ("grants.denials", g.denials),
                ("grants.seat_seconds", g.seat_seconds),
            ];
            if let Some((field, value)) = figures.iter().find(|(_, v)| *v < 0) {
                return Err(field_error(field, format!("must not be negative, got {value}")));
            }
            if self.grants[..i]
                .iter()
                .any(|o| o.product_code == g.product_code && o.feature == g.feature && o.kind == g.kind)
            {
                return Err(field_error("grants", format!("{} is reported twice", quoted(&g.name()))));
            }
        }
        Ok(())
    }
}

/// An upload to store, decided by [`ServerUsageStore::record_server_usage`].
#[derive(Debug, Clone)]
pub struct RecordServerUsage {
    /// The Report ID to use if the report is new (`sur_…`).
    pub report_id: String,
    /// The server license the credentials named.
    pub license_id: String,
    /// What the server uploaded (already validated).
    pub usage: ServerUsage,
    /// Now (Unix ms), by the service's clock: when the report was received.
    pub received_at: Millis,
    /// Written with a new report, in its transaction.
    pub audit: AuditRecord,
}

/// A stored usage report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUsageReport {
    /// Its Report ID (`sur_…`).
    pub report_id: String,
    /// Grows with every report stored (the page token of lists, newest first).
    pub sequence: i64,
    /// The server license.
    pub license_id: String,
    /// The server's activation.
    pub installation_id: String,
    /// The serial of the file the server served.
    pub serial: i64,
    /// Start of the period (Unix ms).
    pub period_start: Millis,
    /// End of the period (Unix ms).
    pub period_end: Millis,
    /// The use of each grant, as uploaded.
    pub grants: Vec<ServerGrantUsage>,
    /// When the vendor's server received it (Unix ms).
    pub received_at: Millis,
}

/// What recording an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecorded {
    /// The report as stored (the first time, for a retry).
    pub report: ServerUsageReport,
    /// The same upload was stored before: nothing new was stored.
    pub replayed: bool,
}

/// Why an upload was refused; nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUsageRefused {
    /// No activation of this server license has the Installation ID (another license's
    /// answers the same: nothing is told about other licenses).
    #[error("server license {license_id} has no activation {installation_id}")]
    InstallationNotFound {
        /// The server license.
        license_id: String,
        /// The Installation ID sent.
        installation_id: String,
    },
    /// The activation was freed (returned, or re-hosted).
    #[error(
        "installation {installation_id} of server license {license_id} is not activated any more (deactivated at \
         {}): activate the server again (ActivateServer) before reporting its use",
        crate::clock::rfc3339(*.deactivated_at)
    )]
    Deactivated {
        /// The server license.
        license_id: String,
        /// The Installation ID sent.
        installation_id: String,
        /// When it was deactivated (Unix ms).
        deactivated_at: Millis,
    },
    /// No file with this serial was signed for the activation.
    #[error("serial: no server license file with serial {serial} was signed for installation {installation_id} (the latest is {latest})")]
    UnknownSerial {
        /// The Installation ID sent.
        installation_id: String,
        /// The serial sent.
        serial: i64,
        /// The latest serial signed for it.
        latest: i64,
    },
    /// A report of the same installation and period was stored with other figures.
    #[error(
        "a report of installation {installation_id} for this period was stored already ({report_id}) with other \
         figures: a retry must send the same report; report a new period instead"
    )]
    Conflict {
        /// The Installation ID sent.
        installation_id: String,
        /// The report stored before.
        report_id: String,
    },
}

/// Why an upload was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerUsageStoreError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No license with this ID.
    #[error("license {0} not found")]
    LicenseNotFound(String),
    /// The upload was refused and nothing was stored.
    #[error(transparent)]
    Refused(#[from] ServerUsageRefused),
}

/// Server usage reports, one per server activation and period.
#[async_trait]
pub trait ServerUsageStore: Send + Sync + 'static {
    /// Stores an upload in one transaction with the license row locked: the installation must
    /// be an activation of the license ([`ServerUsageRefused::InstallationNotFound`]); a report
    /// of the same installation and period already stored is answered again (`replayed`) when
    /// its serial and grants are the same ([`ServerUsageRefused::Conflict`] otherwise); else the
    /// activation must be live and its latest serial at least the one sent, and the report is
    /// inserted with `audit`. A refusal stores nothing.
    async fn record_server_usage(&self, command: &RecordServerUsage) -> Result<UsageRecorded, ServerUsageStoreError>;
    /// A license's reports, newest first (by when they were received), after the report whose
    /// sequence is `page.after` (keyset paging).
    async fn list_server_usage_reports(
        &self,
        license_id: &str,
        page: &Page,
    ) -> Result<Vec<ServerUsageReport>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(kind: GrantKind, feature: &str) -> ServerGrantUsage {
        ServerGrantUsage {
            product_code: "cad-pro".into(),
            feature: feature.into(),
            kind,
            granted: 25,
            peak_in_use: 7,
            checkouts: 40,
            denials: 2,
            seat_seconds: 3600,
        }
    }

    fn usage() -> ServerUsage {
        ServerUsage {
            installation_id: "ins_0000000000000000".into(),
            serial: 1,
            period_start: 10 * DAY,
            period_end: 11 * DAY,
            grants: vec![
                grant(GrantKind::Floating, ""),
                grant(GrantKind::NodeLocked, ""),
                grant(GrantKind::Floating, "render"),
            ],
        }
    }

    fn field(u: ServerUsage) -> &'static str {
        u.validate(11 * DAY).unwrap_err().field
    }

    #[test]
    fn an_upload_is_checked_field_by_field() {
        assert_eq!(usage().validate(11 * DAY), Ok(()));
        assert_eq!(field(ServerUsage { installation_id: "lic_0000000000000000".into(), ..usage() }), "installation_id");
        assert_eq!(field(ServerUsage { serial: 0, ..usage() }), "serial");
        assert_eq!(field(ServerUsage { period_end: 9 * DAY, ..usage() }), "period_end");
        assert_eq!(field(ServerUsage { period_start: 0, period_end: 400 * DAY, ..usage() }), "period_end");
        assert_eq!(field(ServerUsage { period_end: 13 * DAY, ..usage() }), "period_end", "two days ahead");
        assert_eq!(ServerUsage { period_end: 11 * DAY + DAY / 2, ..usage() }.validate(11 * DAY), Ok(()), "skew");
        assert_eq!(ServerUsage { period_end: 10 * DAY, ..usage() }.validate(11 * DAY), Ok(()), "an empty period");
        assert_eq!(field(ServerUsage { grants: vec![], ..usage() }), "grants");
        assert_eq!(field(ServerUsage { grants: vec![grant(GrantKind::Floating, ""); 257], ..usage() }), "grants");
        let with = |f: fn(&mut ServerGrantUsage)| {
            let mut g = grant(GrantKind::Floating, "");
            f(&mut g);
            field(ServerUsage { grants: vec![g], ..usage() })
        };
        assert_eq!(with(|g| g.product_code = "Bad Code".into()), "grants.product_code");
        assert_eq!(with(|g| g.feature = "x".repeat(65)), "grants.feature");
        assert_eq!(with(|g| (g.kind, g.feature) = (GrantKind::NodeLocked, "render".into())), "grants.kind");
        assert_eq!(with(|g| g.granted = -1), "grants.granted");
        assert_eq!(with(|g| g.peak_in_use = -1), "grants.peak_in_use");
        assert_eq!(with(|g| g.checkouts = -1), "grants.checkouts");
        assert_eq!(with(|g| g.denials = i64::MIN), "grants.denials");
        assert_eq!(with(|g| g.seat_seconds = -5), "grants.seat_seconds");
        let twice = vec![grant(GrantKind::Floating, "render"), grant(GrantKind::Floating, "render")];
        assert_eq!(field(ServerUsage { grants: twice, ..usage() }), "grants");
    }

    #[test]
    fn grant_kinds_have_their_wire_names() {
        for kind in [GrantKind::Floating, GrantKind::NodeLocked] {
            assert_eq!(GrantKind::parse(kind.as_str()), Some(kind));
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        assert_eq!(GrantKind::parse("FLOATING"), None);
    }
}
