//! The tonic adapter of the Activation service: decode, delegate to [`Activations`], encode.

use crate::metering::UseReport;
use crate::service::{Activations, DeactivationRequest, InstallationProof, Machine, ValidationCode};
use crate::ActivationError;
use licensing_domain::certificate::{certificate_file, SignedBlob};
use licensing_domain::fingerprint::Component;
use licensing_domain::model::Activation;
use licensing_domain::server_usage::{GrantKind, ServerGrantUsage, ServerUsage};
use licensing_domain::text::quoted;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_server::{ActivationService, ActivationServiceServer};
use licensing_proto::common::v1::FingerprintComponent;
use licensing_runtime::auth::{bearer_token, caller_address};
use licensing_runtime::convert::{from_timestamp, opt_timestamp, proto as conv, to_duration, to_timestamp};
use licensing_runtime::credentials::{CredentialError, Credentials};
use licensing_runtime::server::CancellationToken;
use licensing_runtime::status::{to_status, OrStatus};
use std::pin::Pin;
use std::time::Duration;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// The `licensing.activation.v1.ActivationService` gRPC adapter over [`Activations`].
#[derive(Clone)]
pub struct ActivationApi {
    activations: Activations,
    /// How often a `WatchLicense` stream looks for changes made by the vendor (in any process).
    watch_poll: Duration,
    /// Cancelled when the server drains: open `WatchLicense` streams end with UNAVAILABLE.
    drain: CancellationToken,
}

impl ActivationApi {
    /// The adapter; `WatchLicense` streams look for vendor changes every `watch_poll`.
    pub fn new(activations: Activations, watch_poll: Duration) -> Self {
        Self { activations, watch_poll, drain: CancellationToken::new() }
    }

    /// Ends open `WatchLicense` streams when `drain` is cancelled (the server's drain signal).
    pub fn with_drain(self, drain: CancellationToken) -> Self {
        Self { drain, ..self }
    }

    /// The tonic service, decoding and encoding messages of up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> ActivationServiceServer<Self> {
        ActivationServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }
}

fn credentials(c: Option<pb::LicenseCredentials>, client: &str) -> Result<Credentials, Status> {
    use pb::license_credentials::Credential;
    match c.and_then(|c| c.credential) {
        Some(Credential::LicenseKey(key)) => Ok(Credentials::LicenseKey(key)),
        Some(Credential::LicenseIdAndPassword(p)) => {
            Ok(Credentials::IdAndPassword { license_id: p.license_id, password: p.password, client: client.to_owned() })
        }
        None => Err(to_status(&CredentialError::Missing)),
    }
}

fn components(fingerprint: Vec<FingerprintComponent>) -> Vec<Component> {
    fingerprint.into_iter().map(|c| Component { name: c.name, value: c.value }).collect()
}

fn machine(m: Option<pb::MachineInfo>) -> Result<Machine, Status> {
    let m = m.ok_or_else(|| {
        to_status(&ActivationError::invalid(
            "machine",
            "is required (fingerprint, machine_name, platform, product_version)",
        ))
    })?;
    Ok(Machine {
        fingerprint: components(m.fingerprint),
        machine_name: m.machine_name,
        platform: m.platform,
        product_version: m.product_version,
    })
}

/// A required instant of a usage report.
fn period(field: &'static str, ts: Option<prost_types::Timestamp>) -> Result<i64, Status> {
    let ts = ts.ok_or_else(|| to_status(&ActivationError::invalid(field, "is required")))?;
    from_timestamp(field, &ts).map_err(|e| to_status(&ActivationError::invalid(e.field, e.message)))
}

fn grant_usage(g: pb::ServerGrantUsage) -> Result<ServerGrantUsage, Status> {
    let kind = GrantKind::parse(&g.kind).ok_or_else(|| {
        to_status(&ActivationError::invalid(
            "grants.kind",
            format!("{} is not a grant kind: send floating or node_locked", quoted(&g.kind)),
        ))
    })?;
    Ok(ServerGrantUsage {
        product_code: g.product_code,
        feature: g.feature,
        kind,
        granted: g.granted,
        peak_in_use: g.peak_in_use,
        checkouts: g.checkouts,
        denials: g.denials,
        seat_seconds: g.seat_seconds,
    })
}

fn certificate(blob: SignedBlob) -> pb::SignedCertificate {
    pb::SignedCertificate {
        certificate_file: certificate_file(&blob),
        payload: blob.payload,
        signature: blob.signature,
        key_id: blob.key_id,
    }
}

fn activation(a: &Activation) -> pb::Activation {
    pb::Activation {
        installation_id: a.installation_id.clone(),
        license_id: a.license_id.clone(),
        machine_name: a.machine_name.clone(),
        platform: a.platform.clone(),
        activated_at: Some(to_timestamp(a.activated_at)),
        last_seen_at: Some(to_timestamp(a.last_seen_at)),
        deactivated_at: opt_timestamp(a.deactivated_at),
        offline: a.offline,
    }
}

fn validation_code(code: ValidationCode) -> pb::ValidationCode {
    match code {
        ValidationCode::Valid => pb::ValidationCode::Valid,
        ValidationCode::NotFound => pb::ValidationCode::NotFound,
        ValidationCode::Suspended => pb::ValidationCode::Suspended,
        ValidationCode::Retired => pb::ValidationCode::Retired,
        ValidationCode::Expired => pb::ValidationCode::Expired,
        ValidationCode::NotYetValid => pb::ValidationCode::NotYetValid,
        ValidationCode::NotActivated => pb::ValidationCode::NotActivated,
        ValidationCode::FingerprintMismatch => pb::ValidationCode::FingerprintMismatch,
        ValidationCode::ModuleNotLicensed => pb::ValidationCode::ModuleNotLicensed,
        ValidationCode::VersionNotCovered => pb::ValidationCode::VersionNotCovered,
        ValidationCode::WrongKind => pb::ValidationCode::WrongKind,
        ValidationCode::ValidInGrace => pb::ValidationCode::ValidInGrace,
    }
}

type WatchStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WatchLicenseResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ActivationService for ActivationApi {
    async fn activate(&self, request: Request<pb::ActivateRequest>) -> Result<Response<pb::ActivateResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let (creds, machine) = (credentials(r.credentials, &client)?, machine(r.machine)?);
        let (a, already, cert) = self.activations.activate(&creds, &machine).await.or_status()?;
        Ok(Response::new(pb::ActivateResponse {
            activation: Some(activation(&a)),
            already_activated: already,
            certificate: Some(certificate(cert)),
        }))
    }

    async fn activate_trial(
        &self,
        request: Request<pb::ActivateTrialRequest>,
    ) -> Result<Response<pb::ActivateTrialResponse>, Status> {
        let r = request.into_inner();
        let machine = machine(r.machine)?;
        let trial = self.activations.activate_trial(&r.product_code, &machine).await.or_status()?;
        Ok(Response::new(pb::ActivateTrialResponse {
            activation: Some(activation(&trial.activation)),
            existing_trial: trial.existing_trial,
            certificate: Some(certificate(trial.certificate)),
            license_id: trial.license.license_id.clone(),
            license_key: trial.license_key,
            expires_at: opt_timestamp(trial.license.expires_at),
        }))
    }

    async fn activate_server(
        &self,
        request: Request<pb::ActivateServerRequest>,
    ) -> Result<Response<pb::ActivateServerResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let (creds, machine) = (credentials(r.credentials, &client)?, machine(r.machine)?);
        let server = self.activations.activate_server(&creds, &machine).await.or_status()?;
        Ok(Response::new(pb::ActivateServerResponse {
            activation: Some(activation(&server.activation)),
            already_activated: server.already_activated,
            serial: server.payload.serial,
            server_license_file: server.file,
        }))
    }

    async fn return_server(
        &self,
        request: Request<pb::ReturnServerRequest>,
    ) -> Result<Response<pb::ReturnServerResponse>, Status> {
        let returned = self.activations.return_server_online(&request.get_ref().return_file).await.or_status()?;
        Ok(Response::new(pb::ReturnServerResponse {
            activation: Some(activation(&returned.activation)),
            serial: returned.serial,
        }))
    }

    async fn deactivate_offline(
        &self,
        request: Request<pb::DeactivateOfflineRequest>,
    ) -> Result<Response<pb::DeactivateOfflineResponse>, Status> {
        let client = caller_address(&request);
        let (a, license) =
            self.activations.deactivate_offline(&request.get_ref().request_file, &client).await.or_status()?;
        Ok(Response::new(pb::DeactivateOfflineResponse {
            activation: Some(activation(&a)),
            deactivations_left: license.deactivations_left(),
            license: Some(conv::customer_license(&license)),
        }))
    }

    async fn report_server_usage(
        &self,
        request: Request<pb::ReportServerUsageRequest>,
    ) -> Result<Response<pb::ReportServerUsageResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let usage = ServerUsage {
            installation_id: r.installation_id,
            serial: r.serial,
            period_start: period("period_start", r.period_start)?,
            period_end: period("period_end", r.period_end)?,
            grants: r.grants.into_iter().map(grant_usage).collect::<Result<_, _>>()?,
        };
        let recorded = self.activations.report_server_usage(&creds, usage).await.or_status()?;
        Ok(Response::new(pb::ReportServerUsageResponse {
            report_id: recorded.report.report_id,
            received_at: Some(to_timestamp(recorded.report.received_at)),
        }))
    }

    async fn deactivate(
        &self,
        request: Request<pb::DeactivateRequest>,
    ) -> Result<Response<pb::DeactivateResponse>, Status> {
        use pb::deactivate_request::Target;
        let client = caller_address(&request);
        // The installation ID alone may be proven by a portal session of the license's owner.
        let session = bearer_token(request.metadata()).map(str::to_owned);
        let target = match request.into_inner().target {
            Some(Target::InstallationId(installation_id)) => DeactivationRequest::ByInstallation {
                installation_id,
                proof: session.map_or(InstallationProof::Missing, InstallationProof::PortalSession),
            },
            Some(Target::LicenseAndInstallation(i)) => DeactivationRequest::ByInstallation {
                installation_id: i.installation_id,
                proof: InstallationProof::Credentials(credentials(i.credentials, &client)?),
            },
            Some(Target::LicenseAndMachine(m)) => DeactivationRequest::ByMachine {
                credentials: credentials(m.credentials, &client)?,
                fingerprint: components(m.fingerprint),
            },
            None => {
                return Err(to_status(&ActivationError::invalid(
                    "target",
                    "send license_and_machine, license_and_installation, or installation_id with a portal session",
                )))
            }
        };
        let (a, license) = self.activations.deactivate(target).await.or_status()?;
        Ok(Response::new(pb::DeactivateResponse {
            activation: Some(activation(&a)),
            deactivations_left: license.deactivations_left(),
        }))
    }

    async fn validate(&self, request: Request<pb::ValidateRequest>) -> Result<Response<pb::ValidateResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let v = self
            .activations
            .validate(&creds, &components(r.fingerprint), &r.modules, &r.product_version)
            .await
            .or_status()?;
        Ok(Response::new(pb::ValidateResponse {
            valid: v.code.is_valid(),
            code: validation_code(v.code) as i32,
            detail: v.detail,
            certificate: v.certificate.map(certificate),
            license: v.license.as_deref().map(conv::customer_license),
            grace_ends_at: opt_timestamp(v.grace_ends_at),
            entitlements: v.entitlements.iter().map(|(m, e)| conv::module_entitlement(m, e)).collect(),
        }))
    }

    async fn refresh_certificate(
        &self,
        request: Request<pb::RefreshCertificateRequest>,
    ) -> Result<Response<pb::RefreshCertificateResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let cert = self.activations.refresh(&creds, &components(r.fingerprint)).await.or_status()?;
        Ok(Response::new(pb::RefreshCertificateResponse { certificate: Some(certificate(cert)) }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let beat = self.activations.heartbeat(&creds, &components(r.fingerprint)).await.or_status()?;
        let timeout = beat.license.heartbeat_timeout_ms;
        Ok(Response::new(pb::HeartbeatResponse {
            installation_id: beat.activation.installation_id.clone(),
            last_seen_at: Some(to_timestamp(beat.activation.last_seen_at)),
            heartbeat_timeout: timeout.map(to_duration),
            // A third of the timeout, as for floating leases: two heartbeats may be lost.
            heartbeat_interval: timeout.map(|t| to_duration((t / 3).max(1))),
            deactivated_after: opt_timestamp(beat.deadline),
        }))
    }

    async fn activate_offline(
        &self,
        request: Request<pb::ActivateOfflineRequest>,
    ) -> Result<Response<pb::ActivateOfflineResponse>, Status> {
        let (a, already, cert) =
            self.activations.activate_offline(&request.get_ref().activation_request).await.or_status()?;
        Ok(Response::new(pb::ActivateOfflineResponse {
            activation: Some(activation(&a)),
            already_activated: already,
            certificate: Some(certificate(cert)),
        }))
    }

    type WatchLicenseStream = WatchStream;

    async fn watch_license(
        &self,
        request: Request<pb::WatchLicenseRequest>,
    ) -> Result<Response<Self::WatchLicenseStream>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let presented = components(r.fingerprint);
        let changes =
            self.activations.watch_license(creds, presented, self.watch_poll, self.drain.clone()).await.or_status()?;
        let responses = changes.map(|change| {
            let change = change.or_status()?;
            Ok(pb::WatchLicenseResponse {
                certificate: change.certificate.map(certificate),
                license: Some(conv::customer_license(&change.license)),
            })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn record_usage(
        &self,
        request: Request<pb::RecordUsageRequest>,
    ) -> Result<Response<pb::RecordUsageResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let creds = credentials(r.credentials, &client)?;
        let report = UseReport { meter: r.meter, amount: r.amount, idempotency_key: r.idempotency_key };
        let recorded = self.activations.record_use(&creds, report).await.or_status()?;
        Ok(Response::new(pb::RecordUsageResponse {
            in_overage: recorded.usage.overage_used() > 0,
            usage: Some(conv::meter_usage(&recorded.usage)),
            replayed: recorded.replayed,
        }))
    }

    async fn get_meter_usage(
        &self,
        request: Request<pb::GetMeterUsageRequest>,
    ) -> Result<Response<pb::GetMeterUsageResponse>, Status> {
        let client = caller_address(&request);
        let creds = credentials(request.into_inner().credentials, &client)?;
        let (_, usage) = self.activations.meter_usage(&creds).await.or_status()?;
        Ok(Response::new(pb::GetMeterUsageResponse { meters: usage.iter().map(conv::meter_usage).collect() }))
    }

    async fn get_verifying_key(
        &self,
        _request: Request<pb::GetVerifyingKeyRequest>,
    ) -> Result<Response<pb::GetVerifyingKeyResponse>, Status> {
        use base64::Engine;
        let signer = self.activations.signer();
        Ok(Response::new(pb::GetVerifyingKeyResponse {
            public_key: base64::engine::general_purpose::STANDARD.encode(signer.verifying_key().as_bytes()),
            key_id: signer.key_id(),
        }))
    }
}
