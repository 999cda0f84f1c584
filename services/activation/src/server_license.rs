//! Server licenses on the vendor's side: activating a customer's on-premises license server
//! online ([`Activations::activate_server`]) or through the request files of an air-gapped one
//! ([`Activations::process_server_request`]), signing its server license file, and freeing its
//! activation when it gives back its latest file (a return, so another server may be
//! activated), and storing the usage reports an activated server uploads
//! ([`Activations::report_server_usage`]). The on-premises server itself (which writes the
//! requests, serves the grants and sums their use) is not part of this service.

use crate::service::{Activations, Machine};
use crate::ActivationError;
use licensing_domain::clock::Millis;
use licensing_domain::fingerprint::{self, Component};
use licensing_domain::ids;
use licensing_domain::model::{Activation, AuditRecord, License, LicenseKind, Refusal};
use licensing_domain::server_license::{
    decode_server_request, encode_server_request, server_license_file, ServerLicensePayload, ServerRequest,
    ServerRequestKind,
};
use licensing_domain::server_usage::{RecordServerUsage, ServerUsage, ServerUsageStoreError, UsageRecorded};
use licensing_domain::store::{ActivationStoreError, DeactivateCommand, DeactivateTarget};
use licensing_domain::text::quoted;
use licensing_runtime::credentials::Credentials;

/// A server activated (or re-activated) and the file signed for it.
#[derive(Debug, Clone)]
pub struct ServerActivation {
    /// The server's activation; `server_serial` is the file's serial.
    pub activation: Activation,
    /// The server license as it now stands.
    pub license: License,
    /// The server was activated already: nothing was consumed.
    pub already_activated: bool,
    /// What the signed file asserts.
    pub payload: ServerLicensePayload,
    /// The signed server license file, as text.
    pub file: String,
}

/// What a request file from an air-gapped server did.
#[derive(Debug, Clone)]
pub enum ServerRequestOutcome {
    /// An activation request: the server is activated and its file signed.
    Activated(Box<ServerActivation>),
    /// A return: the server's activation was freed.
    Returned(Box<ServerReturn>),
}

/// A server's activation freed by the return of its latest file.
#[derive(Debug, Clone)]
pub struct ServerReturn {
    /// The activation, now deactivated.
    pub activation: Activation,
    /// The server license as it now stands.
    pub license: License,
    /// The serial of the file given back.
    pub serial: i64,
}

/// A request file as `field` carries it, or INVALID_ARGUMENT naming `field` and why.
fn decode_request(field: &str, what: &str, text: &str) -> Result<ServerRequest, ActivationError> {
    decode_server_request(text).map_err(|e| {
        let why = match e {
            licensing_domain::certificate::VerifyError::Malformed(why) => why,
            other => other.to_string(),
        };
        ActivationError::ServerRequest(format!(
            "{field}: not a server {what} file (-----BEGIN LICENSING SERVER REQUEST-----): {why}"
        ))
    })
}

impl Activations {
    /// Activates an on-premises server on the server license the credentials name, and signs
    /// its server license file. Idempotent per machine: the same server again consumes nothing
    /// and gets a fresh file with a higher serial. Refused: a license of another kind
    /// (WRONG_KIND), every server activation in use ([`ActivationError::ServerLimit`]).
    pub async fn activate_server(
        &self,
        credentials: &Credentials,
        machine: &Machine,
    ) -> Result<ServerActivation, ActivationError> {
        self.activate_server_as(credentials, machine, false).await
    }

    async fn activate_server_as(
        &self,
        credentials: &Credentials,
        machine: &Machine,
        offline: bool,
    ) -> Result<ServerActivation, ActivationError> {
        let (activation, license, already_activated, presented) =
            self.activate_machine(credentials, machine, offline, LicenseKind::Server).await?;
        let payload = self.server_license_payload(&license, &activation, &presented);
        let file = server_license_file(&self.signer().sign_server_license(&payload));
        Ok(ServerActivation { activation, license, already_activated, payload, file })
    }

    fn server_license_payload(
        &self,
        license: &License,
        activation: &Activation,
        presented: &[Component],
    ) -> ServerLicensePayload {
        let now = self.now();
        let grace_ends_at = license.grace_ends_at();
        let refresh_after = now.saturating_add(self.settings().refresh_after);
        ServerLicensePayload {
            v: 1,
            license_id: license.license_id.clone(),
            customer_id: license.customer_id.clone(),
            installation_id: activation.installation_id.clone(),
            server_name: activation.machine_name.clone(),
            fingerprint: fingerprint::public_digests(presented),
            match_threshold: self.settings().match_threshold,
            grants: license.server_grants.clone(),
            valid_from_ms: license.valid_from,
            expires_at_ms: license.expires_at,
            grace_ends_at_ms: grace_ends_at.filter(|_| license.grace_period_ms > 0),
            issued_at_ms: now,
            // Never later than the end of the license: a server asks for its renewal by then.
            refresh_after_ms: grace_ends_at.map_or(refresh_after, |end| refresh_after.min(end)),
            serial: activation.server_serial,
        }
    }

    /// Answers a request file of an air-gapped on-premises server, processed by the vendor
    /// (`actor`): an activation request as [`Self::activate_server`] answers online; a return
    /// frees the server's activation when it names the latest file's serial (refused with
    /// SUPERSEDED_SERVER_LICENSE otherwise, and audited either way).
    pub async fn process_server_request(
        &self,
        actor: &str,
        request_text: &str,
    ) -> Result<ServerRequestOutcome, ActivationError> {
        let request = decode_request("request_file", "request", request_text)?;
        // What the file carries is judged as the file's, so the refusal names it.
        let in_file = |message: String| ActivationError::ServerRequest(format!("request_file: {message}"));
        licensing_domain::text::bounded_text(&request.server_name, 200, false)
            .map_err(|m| in_file(format!("server_name: {m}")))?;
        fingerprint::normalize(&request.fingerprint).map_err(|e| in_file(e.to_string()))?;
        let credentials = Credentials::LicenseKey(request.license_key.clone());
        match request.kind {
            ServerRequestKind::Activate => {
                let machine = Machine {
                    fingerprint: request.fingerprint,
                    machine_name: request.server_name,
                    platform: String::new(),
                    product_version: String::new(),
                };
                let activated = self.activate_server_as(&credentials, &machine, true).await?;
                Ok(ServerRequestOutcome::Activated(Box::new(activated)))
            }
            ServerRequestKind::Return => {
                Ok(ServerRequestOutcome::Returned(Box::new(self.return_server(actor, &credentials, &request).await?)))
            }
        }
    }

    /// Takes back, online, the file an on-premises server gave back: `return_text` is the
    /// return file it wrote when it stopped serving (the same proof an air-gapped operator
    /// carries). Decided exactly as [`Self::process_server_request`] decides a return; an
    /// activation request is refused here (`ActivateServer` is the online activation).
    pub async fn return_server_online(&self, return_text: &str) -> Result<ServerReturn, ActivationError> {
        let request = decode_request("return_file", "return", return_text)?;
        if request.kind != ServerRequestKind::Return {
            return Err(ActivationError::ServerRequest(
                "return_file: this is an activation request; activate online with ActivateServer".into(),
            ));
        }
        let credentials = Credentials::LicenseKey(request.license_key.clone());
        self.return_server("server", &credentials, &request).await
    }

    async fn return_server(
        &self,
        actor: &str,
        credentials: &Credentials,
        request: &ServerRequest,
    ) -> Result<ServerReturn, ActivationError> {
        let installation_id = &request.installation_id;
        if !ids::is_well_formed(ids::INSTALLATION, installation_id) {
            return Err(ActivationError::ServerRequest(format!(
                "request_file: installation_id {} is not an Installation ID (ins_…)",
                quoted(installation_id)
            )));
        }
        if request.serial < 1 {
            return Err(ActivationError::ServerRequest(format!(
                "request_file: serial must be the serial of the server license file returned (1 or more), got {}",
                request.serial
            )));
        }
        let license = self.credentials().resolve(credentials).await?;
        if license.kind != LicenseKind::Server {
            return Err(ActivationError::LicenseState(Refusal {
                reason: "WRONG_KIND",
                message: format!(
                    "license {} is a {} license, not a server license: only server licenses are returned this way",
                    license.license_id,
                    license.kind.as_str()
                ),
            }));
        }
        let details = serde_json::json!({
            "installation_id": installation_id,
            "serial": request.serial,
            "server_name": licensing_domain::text::bounded_message(&request.server_name, 200),
        });
        let now: Millis = self.now();
        let command = DeactivateCommand {
            license_id: license.license_id.clone(),
            target: DeactivateTarget::ServerLicenseFile {
                installation_id: installation_id.clone(),
                serial: request.serial,
                audit: AuditRecord::new(actor, "server_license.returned", &license.license_id)
                    .with_details(details.clone()),
            },
            // The vendor takes the server back: no product deactivation is spent.
            counts: false,
            action: "server_return",
            now,
        };
        match self.activation_store().deactivate(&command).await {
            Ok((activation, license)) => Ok(ServerReturn { activation, license, serial: request.serial }),
            Err(ActivationStoreError::NoActivation) => {
                Err(ActivationError::InstallationNotFound(installation_id.clone()))
            }
            Err(ActivationStoreError::Refused(refusal)) => {
                // A replayed or stale return is worth knowing about: it is audited, and changes nothing.
                let audit = AuditRecord::new(actor, "server_license.return_refused", &license.license_id)
                    .with_details(serde_json::json!({ "request": details, "reason": refusal.reason }));
                self.catalog().append_audit(audit).await?;
                Err(ActivationError::LicenseState(refusal))
            }
            Err(e) => Err(ActivationError::from_store(e, &license.license_id)),
        }
    }

    /// Stores what an activated on-premises server used of its server license's grants over a
    /// period. Checked first: the upload's fields ([`ServerUsage::validate`], INVALID_ARGUMENT
    /// naming the field), then the credentials, which must name a server license (WRONG_KIND);
    /// the store then decides with the license locked (see
    /// [`licensing_domain::server_usage::ServerUsageStore::record_server_usage`]): one report
    /// per installation and period, a retry answered with the first. The license's status does
    /// not matter: a suspended or expired license's server still reports what it used. A new
    /// report is audited (`server_license.usage_reported`, by `server:<installation_id>`).
    pub async fn report_server_usage(
        &self,
        credentials: &Credentials,
        usage: ServerUsage,
    ) -> Result<UsageRecorded, ActivationError> {
        let now = self.now();
        usage.validate(now).map_err(|e| ActivationError::invalid(e.field, e.message))?;
        let license = self.credentials().resolve(credentials).await?;
        if license.kind != LicenseKind::Server {
            return Err(ActivationError::LicenseState(Refusal {
                reason: "WRONG_KIND",
                message: format!(
                    "license {} is a {} license, not a server license: only on-premises servers report usage this way",
                    license.license_id,
                    license.kind.as_str()
                ),
            }));
        }
        let report_id = ids::new_id(ids::SERVER_USAGE_REPORT);
        let audit = AuditRecord::new(
            format!("server:{}", usage.installation_id),
            "server_license.usage_reported",
            &license.license_id,
        )
        .with_details(serde_json::json!({
            "report_id": report_id,
            "installation_id": usage.installation_id,
            "serial": usage.serial,
            "period_start": licensing_domain::clock::rfc3339(usage.period_start),
            "period_end": licensing_domain::clock::rfc3339(usage.period_end),
            "grants": usage.grants.len(),
        }));
        let command =
            RecordServerUsage { report_id, license_id: license.license_id.clone(), usage, received_at: now, audit };
        self.server_usage_store().record_server_usage(&command).await.map_err(|e| match e {
            ServerUsageStoreError::Store(e) => ActivationError::Store(e),
            ServerUsageStoreError::LicenseNotFound(id) => {
                licensing_runtime::credentials::CredentialError::UnknownLicense(id).into()
            }
            ServerUsageStoreError::Refused(refused) => ActivationError::ServerUsage(refused),
        })
    }

    /// Writes the request an on-premises server would (for tools and tests).
    pub fn server_request(request: &ServerRequest) -> String {
        encode_server_request(request)
    }
}
