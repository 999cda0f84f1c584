//! Metered features: products record use of a license's meters and read what is left.

use crate::service::Activations;
use crate::ActivationError;
use licensing_domain::meter::{MeterUsage, RecordUse, UseRecorded};
use licensing_domain::model::License;
use licensing_domain::store::MeterStoreError;
use licensing_runtime::credentials::{CredentialError, Credentials};

/// A use a product reports: how much of which meter, under which idempotency key.
#[derive(Debug, Clone)]
pub struct UseReport {
    /// The meter's code, e.g. `exports`.
    pub meter: String,
    /// How much was used.
    pub amount: i64,
    /// Unique per use, chosen by the product; a retry sends the same key and counts once.
    pub idempotency_key: String,
}

impl Activations {
    /// Counts a use of the credentials' license's meter, decided by the store with the license
    /// locked: within the period's limit and overage, or refused with nothing counted; a key
    /// already recorded answers as it did the first time.
    pub async fn record_use(
        &self,
        credentials: &Credentials,
        report: UseReport,
    ) -> Result<UseRecorded, ActivationError> {
        let license = self.credentials().resolve(credentials).await?;
        let now = self.now();
        let command = RecordUse {
            license_id: license.license_id.clone(),
            meter: report.meter,
            amount: report.amount,
            idempotency_key: report.idempotency_key,
            at: now,
        };
        command.validate().map_err(|e| ActivationError::invalid(e.field, e.message))?;
        // Any kind of license may carry meters; only its state and dates decide.
        let usable = move |l: &License| l.usability(now, l.kind);
        self.meter_store().record_use(&command, &usable).await.map_err(|e| match e {
            MeterStoreError::Store(e) => ActivationError::Store(e),
            MeterStoreError::LicenseNotFound(id) => CredentialError::UnknownLicense(id).into(),
            MeterStoreError::Refused(refused) => ActivationError::Meter(refused),
        })
    }

    /// The credentials' license and its meters' counts in their current periods.
    pub async fn meter_usage(&self, credentials: &Credentials) -> Result<(License, Vec<MeterUsage>), ActivationError> {
        let license = self.credentials().resolve(credentials).await?;
        let usage = self.meter_store().current_meter_usage(&license, self.now()).await?;
        Ok((license, usage))
    }
}
