//! Node-locked licenses: activate once, then validate at each start, online when the server
//! answers and offline from the stored certificate when it does not.

use crate::storage::{Stored, TrustedStorage};
use crate::{Client, ClientError, Credentials};
use licensing_domain::certificate::{
    encode_offline_request, parse_certificate_file, verify_certificate, CertificatePayload, OfflineRequest,
};
use licensing_domain::clock::{Millis, MINUTE};
use licensing_domain::fingerprint::{self, Component};
use licensing_domain::offline_deactivation::{
    encode_deactivation_request, DeactivationCredential, DeactivationRequest,
};
use licensing_proto::activation::v1 as pb;
use licensing_proto::common::v1::FingerprintComponent;

/// How far the clock may appear to go back (NTP corrections) before offline use is refused.
pub const CLOCK_TOLERANCE: Millis = 5 * MINUTE;

/// What a validation established.
#[derive(Debug, Clone, PartialEq)]
pub enum Validity {
    /// The server said valid; the fresh certificate is stored.
    Online(CertificatePayload),
    /// The server was unreachable; the stored certificate allows use until its `valid_until`.
    Offline(CertificatePayload),
    /// The server said not valid: its code (e.g. "VALIDATION_CODE_EXPIRED") and explanation.
    Invalid {
        /// The server's validation code, e.g. `VALIDATION_CODE_EXPIRED`.
        code: String,
        /// The server's explanation, for a person.
        detail: String,
    },
}

impl Validity {
    /// `Some(grace end)` (Unix ms) when the license is valid but past its expiry, in its grace
    /// period at `now`: the product keeps working and should warn that it needs renewing. Online
    /// and offline alike, from the certificate (the server signs the grace period's end in it).
    pub fn in_grace(&self, now: Millis) -> Option<Millis> {
        match self {
            Self::Online(payload) | Self::Offline(payload) => payload.in_grace(now),
            Self::Invalid { .. } => None,
        }
    }

    /// The value the license grants for `module` at `now` (e.g. `"4096"` for
    /// `max-resolution`), from the certificate the server signed, online and offline alike.
    /// `None` when the module has no value, is not licensed, or its own expiry passed.
    pub fn entitlement_value(&self, module: &str, now: Millis) -> Option<&str> {
        match self {
            Self::Online(payload) | Self::Offline(payload) => payload.entitlement_value(module, now),
            Self::Invalid { .. } => None,
        }
    }
}

pub(crate) fn credentials(c: &Credentials) -> Option<pb::LicenseCredentials> {
    use pb::license_credentials::Credential;
    Some(pb::LicenseCredentials {
        credential: Some(match c {
            Credentials::LicenseKey(k) => Credential::LicenseKey(k.clone()),
            Credentials::IdAndPassword { license_id, password } => {
                Credential::LicenseIdAndPassword(pb::LicenseIdAndPassword {
                    license_id: license_id.clone(),
                    password: password.clone(),
                })
            }
        }),
    })
}

fn wire(components: &[Component]) -> Vec<FingerprintComponent> {
    components.iter().map(|c| FingerprintComponent { name: c.name.clone(), value: c.value.clone() }).collect()
}

/// What a heartbeat told the product ([`NodeLocked::heartbeat`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// This machine's Installation ID.
    pub installation_id: String,
    /// Send the next heartbeat within this; `None` when the license requires no heartbeats.
    pub interval: Option<std::time::Duration>,
    /// The server deactivates this machine unless it is seen again by this instant (Unix ms);
    /// `None` when the license requires no heartbeats.
    pub deactivated_after: Option<Millis>,
}

/// How long [`NodeLocked::keep_alive`] waits before trying an unreachable server again.
const HEARTBEAT_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// A product's node-locked license on this machine.
pub struct NodeLocked {
    client: Client,
    storage: TrustedStorage,
    credentials: Credentials,
    fingerprint: Vec<Component>,
}

impl NodeLocked {
    /// The license `credentials` name on the machine `fingerprint` describes, with its certificate
    /// kept in `storage`.
    pub fn new(client: Client, storage: TrustedStorage, credentials: Credentials, fingerprint: Vec<Component>) -> Self {
        Self { client, storage, credentials, fingerprint }
    }

    /// Verifies a certificate file with the embedded key and keeps it, with the time seen.
    fn accept(&self, certificate_file: &str) -> Result<CertificatePayload, ClientError> {
        let blob = parse_certificate_file(certificate_file).map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let payload = verify_certificate(&self.client.public_key, &blob)
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let last_seen = self.storage.load()?.map_or(0, |s| s.last_seen_ms);
        let now = self.client.clock.now();
        // A certificate accepted ends an offline deactivation: the machine is activated again.
        self.storage.save(&Stored {
            certificate_file: certificate_file.to_owned(),
            last_seen_ms: now.max(last_seen),
            offline_deactivation: None,
        })?;
        Ok(payload)
    }

    /// Refuses with [`ClientError::DeactivatedOffline`] once the product gave its activation
    /// back offline (until it activates again).
    fn not_deactivated_offline(&self) -> Result<(), ClientError> {
        match self.storage.load()? {
            Some(Stored { offline_deactivation: Some(_), .. }) => Err(ClientError::DeactivatedOffline),
            _ => Ok(()),
        }
    }

    /// The request an air-gapped machine's operator submits with `ActivateOffline` from a
    /// connected machine (license keys only: the request format carries a key). Store the
    /// certificate it returns with [`Self::install_certificate`].
    pub fn offline_activation_request(
        &self,
        machine_name: &str,
        platform: &str,
        product_version: &str,
    ) -> Result<String, ClientError> {
        let Credentials::LicenseKey(key) = &self.credentials else {
            return Err(ClientError::Config("an offline activation request needs the license key"));
        };
        Ok(encode_offline_request(&OfflineRequest {
            v: 1,
            license_key: key.clone(),
            fingerprint: self.fingerprint.clone(),
            machine_name: machine_name.into(),
            platform: platform.into(),
            product_version: product_version.into(),
            created_at_ms: self.client.clock.now(),
        }))
    }

    /// Stores the certificate file `ActivateOffline` answered (carried to this air-gapped
    /// machine), once it verifies with the embedded key and is for this machine.
    pub fn install_certificate(&self, certificate_file: &str) -> Result<CertificatePayload, ClientError> {
        let blob = parse_certificate_file(certificate_file).map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let payload = verify_certificate(&self.client.public_key, &blob)
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        self.check_machine(&payload)?;
        self.accept(certificate_file)
    }

    fn check_machine(&self, payload: &CertificatePayload) -> Result<(), ClientError> {
        let mine = fingerprint::public_digests(
            &fingerprint::normalize(&self.fingerprint).map_err(|e| ClientError::BadCertificate(e.to_string()))?,
        );
        match fingerprint::matches(&payload.fingerprint, &mine, payload.match_threshold) {
            true => Ok(()),
            false => Err(ClientError::FingerprintMismatch),
        }
    }

    /// Gives the activation back without the server (an air-gapped machine): FIRST deletes the
    /// stored certificate, so the product can no longer be used offline from it, THEN returns
    /// the offline deactivation request for the operator to submit with
    /// `ActivationService/DeactivateOffline` (or `licensectl activations deactivate-offline`),
    /// which frees the activation on the server. The request names the certificate deleted (its
    /// Installation ID and `issued_at_ms`), so it frees nothing once the machine has been
    /// activated again.
    ///
    /// Only a product holding a valid certificate for this machine can write one
    /// ([`ClientError::NoCertificate`] otherwise; nothing changes on a refusal). Afterwards
    /// `validate`, `validate_offline` and `refresh` answer [`ClientError::DeactivatedOffline`]
    /// until the product activates again, and calling this again returns the same request
    /// (see [`Self::pending_offline_deactivation`]).
    pub fn deactivate_offline(&self) -> Result<String, ClientError> {
        let stored = self.storage.load()?.ok_or(ClientError::NoCertificate)?;
        if let Some(request) = stored.offline_deactivation {
            return Ok(request);
        }
        let blob =
            parse_certificate_file(&stored.certificate_file).map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let payload = verify_certificate(&self.client.public_key, &blob)
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        self.check_machine(&payload)?;
        let credential = match &self.credentials {
            Credentials::LicenseKey(key) => DeactivationCredential::LicenseKey(key.clone()),
            Credentials::IdAndPassword { license_id, password } => {
                if *license_id != payload.license_id {
                    return Err(ClientError::BadCertificate(format!(
                        "the stored certificate is of license {}, not {license_id}",
                        payload.license_id
                    )));
                }
                DeactivationCredential::Password(password.clone())
            }
        };
        let now = self.client.clock.now();
        let request = encode_deactivation_request(&DeactivationRequest::for_certificate(
            &payload,
            credential,
            self.fingerprint.clone(),
            now,
        ));
        // One atomic write replaces the certificate by the request: the request exists only
        // once the certificate is gone.
        self.storage.save(&Stored {
            certificate_file: String::new(),
            last_seen_ms: now.max(stored.last_seen_ms),
            offline_deactivation: Some(request.clone()),
        })?;
        Ok(request)
    }

    /// The offline deactivation request written by [`Self::deactivate_offline`], while the
    /// product has not activated again; `None` otherwise.
    pub fn pending_offline_deactivation(&self) -> Result<Option<String>, ClientError> {
        Ok(self.storage.load()?.and_then(|s| s.offline_deactivation))
    }

    /// Activates this machine and stores the certificate the server signs for it.
    pub async fn activate(
        &self,
        machine_name: &str,
        platform: &str,
        product_version: &str,
    ) -> Result<CertificatePayload, ClientError> {
        let request = pb::ActivateRequest {
            credentials: credentials(&self.credentials),
            machine: Some(pb::MachineInfo {
                fingerprint: wire(&self.fingerprint),
                machine_name: machine_name.into(),
                platform: platform.into(),
                product_version: product_version.into(),
            }),
        };
        let reply =
            self.client.activation.clone().activate(request).await.map_err(ClientError::from_status)?.into_inner();
        let certificate =
            reply.certificate.ok_or_else(|| ClientError::BadCertificate("the server sent none".into()))?;
        self.accept(&certificate.certificate_file)
    }

    /// Starts (or, on a machine that started one before, finds again) a trial of `product_code`
    /// on the machine `fingerprint` describes, without a key: the server issues a trial license
    /// from the product's trial policy once per machine, however often the product is
    /// reinstalled. Its certificate is kept in `storage`; the [`NodeLocked`] returned validates,
    /// refreshes and heartbeats the trial with its license key like any license (and keeps
    /// working when the vendor converts the trial to a paid license). The trial's end is the
    /// certificate's `expires_at_ms`.
    pub async fn start_trial(
        client: Client,
        storage: TrustedStorage,
        product_code: &str,
        fingerprint: Vec<Component>,
        machine_name: &str,
        platform: &str,
        product_version: &str,
    ) -> Result<(Self, CertificatePayload), ClientError> {
        let request = pb::ActivateTrialRequest {
            product_code: product_code.into(),
            machine: Some(pb::MachineInfo {
                fingerprint: wire(&fingerprint),
                machine_name: machine_name.into(),
                platform: platform.into(),
                product_version: product_version.into(),
            }),
        };
        let reply =
            client.activation.clone().activate_trial(request).await.map_err(ClientError::from_status)?.into_inner();
        let certificate =
            reply.certificate.ok_or_else(|| ClientError::BadCertificate("the server sent none".into()))?;
        let trial = Self::new(client, storage, Credentials::LicenseKey(reply.license_key), fingerprint);
        let payload = trial.accept(&certificate.certificate_file)?;
        Ok((trial, payload))
    }

    /// Online validation when the server answers; offline from trusted storage when it does not.
    pub async fn validate(&self, modules: &[&str], product_version: &str) -> Result<Validity, ClientError> {
        self.not_deactivated_offline()?;
        let request = pb::ValidateRequest {
            credentials: credentials(&self.credentials),
            fingerprint: wire(&self.fingerprint),
            modules: modules.iter().map(|m| m.to_string()).collect(),
            product_version: product_version.into(),
        };
        match self.client.activation.clone().validate(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                if !reply.valid {
                    let code = pb::ValidationCode::try_from(reply.code)
                        .map(|c| c.as_str_name().to_owned())
                        .unwrap_or_default();
                    return Ok(Validity::Invalid { code, detail: reply.detail });
                }
                match reply.certificate {
                    Some(c) => Ok(Validity::Online(self.accept(&c.certificate_file)?)),
                    None => Err(ClientError::BadCertificate("the server sent none".into())),
                }
            }
            Err(status) if ClientError::is_unreachable(&status) => {
                self.validate_offline(modules).map(Validity::Offline)
            }
            Err(status) => Err(ClientError::from_status(status)),
        }
    }

    /// Validation from the stored certificate alone: signature, clock, offline period,
    /// fingerprint and modules (a module past its own expiry is refused). A license in its grace period validates (the certificate's
    /// offline period reaches into it); [`Self::in_grace`] tells.
    pub fn validate_offline(&self, modules: &[&str]) -> Result<CertificatePayload, ClientError> {
        let stored = self.storage.load()?.ok_or(ClientError::NoCertificate)?;
        if stored.offline_deactivation.is_some() {
            return Err(ClientError::DeactivatedOffline);
        }
        let blob =
            parse_certificate_file(&stored.certificate_file).map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let payload = verify_certificate(&self.client.public_key, &blob)
            .map_err(|e| ClientError::BadCertificate(e.to_string()))?;
        let now = self.client.clock.now();
        if now + CLOCK_TOLERANCE < stored.last_seen_ms || now + CLOCK_TOLERANCE < payload.issued_at_ms {
            return Err(ClientError::ClockSetBack { now, last_seen: stored.last_seen_ms.max(payload.issued_at_ms) });
        }
        if now >= payload.valid_until_ms {
            return Err(ClientError::OfflinePeriodOver(payload.valid_until_ms));
        }
        self.check_machine(&payload)?;
        for module in modules {
            match payload.module_licensed(module, now) {
                Ok(()) => {}
                Err(None) => return Err(ClientError::ModuleNotLicensed(module.to_string())),
                Err(Some(expired_at)) => {
                    return Err(ClientError::ModuleExpired { module: module.to_string(), expired_at })
                }
            }
        }
        self.storage.save(&Stored { last_seen_ms: now.max(stored.last_seen_ms), ..stored })?;
        Ok(payload)
    }

    /// `Some(grace end)` (Unix ms) when `validity` is of a license in its grace period now, by
    /// this client's clock: see [`Validity::in_grace`].
    pub fn in_grace(&self, validity: &Validity) -> Option<Millis> {
        validity.in_grace(self.client.clock.now())
    }

    /// The value the license grants for `module` now, by this client's clock: see
    /// [`Validity::entitlement_value`]. Online and offline alike, from the signed certificate.
    pub fn entitlement_value(&self, validity: &Validity, module: &str) -> Option<String> {
        validity.entitlement_value(module, self.client.clock.now()).map(str::to_owned)
    }

    /// Asks the server for a fresh certificate (for a longer offline period) and stores it.
    pub async fn refresh(&self) -> Result<CertificatePayload, ClientError> {
        self.not_deactivated_offline()?;
        let request = pb::RefreshCertificateRequest {
            credentials: credentials(&self.credentials),
            fingerprint: wire(&self.fingerprint),
        };
        let reply = self
            .client
            .activation
            .clone()
            .refresh_certificate(request)
            .await
            .map_err(ClientError::from_status)?
            .into_inner();
        let certificate =
            reply.certificate.ok_or_else(|| ClientError::BadCertificate("the server sent none".into()))?;
        self.accept(&certificate.certificate_file)
    }

    /// Tells the server this activated machine is still running. A license with a heartbeat
    /// timeout (the certificate's `heartbeat_timeout_secs`) frees a machine not seen for that
    /// long; a machine freed so is answered [`ClientError::Server`] with reason `NOT_ACTIVATED`:
    /// activate again.
    pub async fn heartbeat(&self) -> Result<Heartbeat, ClientError> {
        let request =
            pb::HeartbeatRequest { credentials: credentials(&self.credentials), fingerprint: wire(&self.fingerprint) };
        let reply =
            self.client.activation.clone().heartbeat(request).await.map_err(ClientError::from_status)?.into_inner();
        let interval = reply.heartbeat_interval.map(|d| {
            std::time::Duration::from_secs(d.seconds.max(0) as u64)
                + std::time::Duration::from_nanos(d.nanos.max(0) as u64)
        });
        let deactivated_after =
            reply.deactivated_after.map(|t| t.seconds.saturating_mul(1000) + i64::from(t.nanos / 1_000_000));
        Ok(Heartbeat { installation_id: reply.installation_id, interval, deactivated_after })
    }

    /// Heartbeats in the background, each within the interval the server asks for, for as long
    /// as the license asks for heartbeats: the task ends `Ok` when it asks for none, or with the
    /// error that stopped it (the machine holds no activation any more, reason `NOT_ACTIVATED`;
    /// the license may not be used). An unreachable server is tried again every few seconds.
    pub fn keep_alive(license: std::sync::Arc<Self>) -> tokio::task::JoinHandle<Result<(), ClientError>> {
        tokio::spawn(async move {
            loop {
                let wait = match license.heartbeat().await {
                    Ok(Heartbeat { interval: None, .. }) => return Ok(()),
                    Ok(Heartbeat { interval: Some(interval), .. }) => interval,
                    Err(ClientError::Unreachable(_)) => HEARTBEAT_RETRY,
                    Err(e) => return Err(e),
                };
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// Returns the activation to the server and forgets the stored certificate.
    pub async fn deactivate(&self) -> Result<(), ClientError> {
        let request = pb::DeactivateRequest {
            target: Some(pb::deactivate_request::Target::LicenseAndMachine(pb::LicenseAndMachine {
                credentials: credentials(&self.credentials),
                fingerprint: wire(&self.fingerprint),
            })),
        };
        self.client.activation.clone().deactivate(request).await.map_err(ClientError::from_status)?;
        self.storage.clear()
    }
}
