//! The vendor's licensing server as the on-premises server reaches it when online: activation
//! (and every refresh) with `ActivationService/ActivateServer`, the return with `ReturnServer`.
//! [`Vendor`] is what the use cases need; [`GrpcVendor`] is the gRPC client of it.

use licensing_domain::fingerprint::Component;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::FingerprintComponent;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::Code;
use tonic_types::StatusExt as _;

/// Why the vendor gave no answer the server can use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VendorError {
    /// The vendor said no: the license is suspended, retired, returned, its servers all in use,
    /// or the key is unknown. New seats stop until a file arrives.
    #[error("the vendor refused ({reason}): {message}")]
    Refused {
        /// The vendor's reason code (ErrorInfo), e.g. `SUSPENDED`.
        reason: String,
        /// The vendor's message.
        message: String,
    },
    /// No answer (network, TLS, the vendor down): the file in force serves on until its end.
    #[error("the vendor could not be reached: {0}")]
    Unreachable(String),
    /// An answer that is neither a file nor a refusal (a bug on one side).
    #[error("the vendor answered unexpectedly: {0}")]
    Unexpected(String),
}

/// What a server used of one grant over a period, as it reports it to the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantUsage {
    /// The product's code.
    pub product_code: String,
    /// The feature; empty: the product itself.
    pub feature: String,
    /// `floating` or `node_locked`.
    pub kind: &'static str,
    /// Seats or activations the file granted.
    pub granted: i32,
    /// The highest use at once in the period.
    pub peak_in_use: i32,
    /// Seats checked out (machines activated) in the period.
    pub checkouts: i64,
    /// Checkouts refused in the period.
    pub denials: i64,
    /// Leased time in the period, in seconds.
    pub seat_seconds: i64,
}

/// A usage report for the vendor: whose, which period, per grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageUpload {
    /// The server license's key.
    pub license_key: String,
    /// The server's activation (from its file).
    pub installation_id: String,
    /// The serial of the file in force.
    pub serial: i64,
    /// The period, `[from, to)`, Unix ms.
    pub from: licensing_domain::clock::Millis,
    /// Its end.
    pub to: licensing_domain::clock::Millis,
    /// One entry per served license.
    pub grants: Vec<GrantUsage>,
}

/// The vendor's side of an online on-premises server.
#[async_trait::async_trait]
pub trait Vendor: Send + Sync + 'static {
    /// Activates this server (or again: a refresh) and returns its signed server license file.
    async fn activate_server(
        &self,
        license_key: &str,
        machine: &[Component],
        server_name: &str,
    ) -> Result<String, VendorError>;
    /// Gives the file back with the return file the server wrote.
    async fn return_server(&self, return_file: &str) -> Result<(), VendorError>;
    /// Uploads a usage report; the vendor's report ID.
    async fn report_usage(&self, upload: &UsageUpload) -> Result<String, VendorError>;
}

/// The vendor's Activation service over gRPC.
#[derive(Clone)]
pub struct GrpcVendor {
    client: ActivationServiceClient<Channel>,
}

impl GrpcVendor {
    /// Connects lazily to `url` (`http://` or `https://`; with `ca_pem`, TLS verified with it).
    pub fn new(url: &str, ca_pem: Option<&[u8]>) -> Result<Self, String> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("'{url}' is not a usable URL: {e}"))?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30));
        if let Some(pem) = ca_pem {
            endpoint = endpoint
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| format!("TLS to the vendor: {e}"))?;
        }
        Ok(Self { client: ActivationServiceClient::new(endpoint.connect_lazy()) })
    }
}

fn key_credentials(license_key: &str) -> pb::LicenseCredentials {
    pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(license_key.to_owned())) }
}

/// A vendor's status as a [`VendorError`]: its refusals, and the rest.
fn vendor_error(status: tonic::Status) -> VendorError {
    let reason = status.get_details_error_info().map(|i| i.reason).unwrap_or_else(|| format!("{:?}", status.code()));
    let message = licensing_domain::text::bounded_message(status.message(), 300);
    match status.code() {
        Code::FailedPrecondition | Code::PermissionDenied | Code::NotFound | Code::Unauthenticated => {
            VendorError::Refused { reason, message }
        }
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            VendorError::Unreachable(format!("{:?}: {message}", status.code()))
        }
        code => VendorError::Unexpected(format!("{code:?} ({reason}): {message}")),
    }
}

#[async_trait::async_trait]
impl Vendor for GrpcVendor {
    async fn activate_server(
        &self,
        license_key: &str,
        machine: &[Component],
        server_name: &str,
    ) -> Result<String, VendorError> {
        let request = pb::ActivateServerRequest {
            credentials: Some(key_credentials(license_key)),
            machine: Some(pb::MachineInfo {
                fingerprint: machine
                    .iter()
                    .map(|c| FingerprintComponent { name: c.name.clone(), value: c.value.clone() })
                    .collect(),
                machine_name: server_name.to_owned(),
                platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
                product_version: String::new(),
            }),
        };
        let response = self.client.clone().activate_server(request).await.map_err(vendor_error)?;
        Ok(response.into_inner().server_license_file)
    }

    async fn return_server(&self, return_file: &str) -> Result<(), VendorError> {
        let request = pb::ReturnServerRequest { return_file: return_file.to_owned() };
        self.client.clone().return_server(request).await.map_err(vendor_error)?;
        Ok(())
    }

    async fn report_usage(&self, upload: &UsageUpload) -> Result<String, VendorError> {
        let request = pb::ReportServerUsageRequest {
            credentials: Some(key_credentials(&upload.license_key)),
            installation_id: upload.installation_id.clone(),
            serial: upload.serial,
            period_start: Some(licensing_runtime::convert::to_timestamp(upload.from)),
            period_end: Some(licensing_runtime::convert::to_timestamp(upload.to)),
            grants: upload
                .grants
                .iter()
                .map(|g| pb::ServerGrantUsage {
                    product_code: g.product_code.clone(),
                    feature: g.feature.clone(),
                    kind: g.kind.to_owned(),
                    granted: g.granted,
                    peak_in_use: g.peak_in_use,
                    checkouts: g.checkouts,
                    denials: g.denials,
                    seat_seconds: g.seat_seconds,
                })
                .collect(),
        };
        let response = self.client.clone().report_server_usage(request).await.map_err(vendor_error)?;
        Ok(response.into_inner().report_id)
    }
}
