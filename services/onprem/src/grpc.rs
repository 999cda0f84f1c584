//! The on-premises server's gRPC adapters: `OnPremisesService` (its administration, with the
//! local admin token) and [`Gated`], which wraps the Seat and Activation services so that only
//! what an on-premises server may do is served, and new seats and activations only while
//! [`OnPremises::may_grant`] allows.

use crate::error::OnPremError;
use crate::service::{OnPremises, ServerStatus};
use licensing_domain::error::{ClassifiedError, ErrorClass};
use licensing_domain::model::LicenseKind;
use licensing_proto::onpremises::v1 as pb;
use licensing_proto::onpremises::v1::on_premises_service_server::{OnPremisesService, OnPremisesServiceServer};
use licensing_runtime::auth::AdminAuth;
use licensing_runtime::convert::{opt_timestamp, to_timestamp};
use licensing_runtime::status::{to_status, OrStatus};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// `OnPremisesService` over [`OnPremises`]; every call needs the local admin token.
pub struct OnPremisesApi {
    onprem: OnPremises,
    admin: AdminAuth,
}

impl OnPremisesApi {
    /// The API over `onprem`, authorized by `admin`.
    pub fn new(onprem: OnPremises, admin: AdminAuth) -> Self {
        Self { onprem, admin }
    }

    /// The tonic service, with the process's message size bound.
    pub fn into_server(self, max_message_bytes: usize) -> OnPremisesServiceServer<Self> {
        OnPremisesServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admin.authorize(request.metadata()).await.or_status()?;
        Ok(())
    }
}

fn status_pb(status: ServerStatus) -> pb::GetServerStatusResponse {
    let p = status.payload.as_ref();
    pb::GetServerStatusResponse {
        serving: status.not_serving.is_none(),
        not_serving_reason: status.not_serving.as_ref().map(|n| n.reason().to_owned()).unwrap_or_default(),
        not_serving_message: status.not_serving.as_ref().map(ToString::to_string).unwrap_or_default(),
        license_id: p.map(|p| p.license_id.clone()).unwrap_or_default(),
        installation_id: p.map(|p| p.installation_id.clone()).unwrap_or_default(),
        serial: p.map_or(0, |p| p.serial),
        issued_at: p.map(|p| to_timestamp(p.issued_at_ms)),
        expires_at: opt_timestamp(p.and_then(|p| p.expires_at_ms)),
        grace_ends_at: opt_timestamp(p.and_then(|p| p.grace_ends_at_ms)),
        licenses: status
            .licenses
            .into_iter()
            .map(|l| pb::ServedLicense {
                license_id: l.served.license_id,
                license_key: l.license_key,
                kind: match l.served.kind {
                    LicenseKind::NodeLocked => "node_locked",
                    _ => "concurrent",
                }
                .to_owned(),
                product_code: l.served.product_code,
                feature: l.served.feature,
                seats: l.served.seats,
                in_use: l.in_use,
            })
            .collect(),
        vendor_url: status.vendor_url,
        last_refresh_at: opt_timestamp(status.last_refresh_at),
        last_refresh_error: status.last_refresh_error.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl OnPremisesService for OnPremisesApi {
    async fn get_server_status(
        &self,
        request: Request<pb::GetServerStatusRequest>,
    ) -> Result<Response<pb::GetServerStatusResponse>, Status> {
        self.require_admin(&request).await?;
        Ok(Response::new(status_pb(self.onprem.status().await.or_status()?)))
    }

    async fn write_activation_request(
        &self,
        request: Request<pb::WriteActivationRequestRequest>,
    ) -> Result<Response<pb::WriteActivationRequestResponse>, Status> {
        self.require_admin(&request).await?;
        Ok(Response::new(pb::WriteActivationRequestResponse { request_file: self.onprem.activation_request() }))
    }

    async fn import_server_license(
        &self,
        request: Request<pb::ImportServerLicenseRequest>,
    ) -> Result<Response<pb::ImportServerLicenseResponse>, Status> {
        self.require_admin(&request).await?;
        let status = self.onprem.import(&request.get_ref().server_license_file).await.or_status()?;
        Ok(Response::new(pb::ImportServerLicenseResponse { status: Some(status_pb(status)) }))
    }

    async fn refresh_server_license(
        &self,
        request: Request<pb::RefreshServerLicenseRequest>,
    ) -> Result<Response<pb::RefreshServerLicenseResponse>, Status> {
        self.require_admin(&request).await?;
        let status = self.onprem.refresh().await.or_status()?;
        Ok(Response::new(pb::RefreshServerLicenseResponse { status: Some(status_pb(status)) }))
    }

    async fn return_server_license(
        &self,
        request: Request<pb::ReturnServerLicenseRequest>,
    ) -> Result<Response<pb::ReturnServerLicenseResponse>, Status> {
        self.require_admin(&request).await?;
        if !request.get_ref().confirm {
            return Err(to_status(&OnPremError::NotConfirmed));
        }
        let returned = self.onprem.return_license().await.or_status()?;
        Ok(Response::new(pb::ReturnServerLicenseResponse {
            return_file: returned.return_file,
            serial: returned.serial,
            returned_online: returned.returned_online,
            online_error: returned.online_error.unwrap_or_default(),
        }))
    }

    async fn upload_usage(
        &self,
        request: Request<pb::UploadUsageRequest>,
    ) -> Result<Response<pb::UploadUsageResponse>, Status> {
        self.require_admin(&request).await?;
        let sent = self.onprem.upload_usage().await.or_status()?;
        Ok(Response::new(pb::UploadUsageResponse {
            report_id: sent.report_id,
            period_start: Some(to_timestamp(sent.from)),
            period_end: Some(to_timestamp(sent.to)),
        }))
    }
}

/// Which methods of which service an on-premises server serves, and which of them grant
/// something new (refused while the file does not allow it). Everything else — the vendor's
/// admin API, trials, server activation, metered use — is not served here.
fn rule(service: &str, method: &str) -> Rule {
    match (service, method) {
        ("licensing.seat.v1.SeatService", "Checkout" | "WaitForSeat") => Rule::Grants,
        ("licensing.seat.v1.SeatService", _) => Rule::Served,
        ("licensing.activation.v1.ActivationService", "Activate" | "ActivateOffline") => Rule::Grants,
        (
            "licensing.activation.v1.ActivationService",
            "Deactivate" | "DeactivateOffline" | "Validate" | "RefreshCertificate" | "WatchLicense" | "GetVerifyingKey"
            | "Heartbeat",
        ) => Rule::Served,
        _ => Rule::NotServed,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Served,
    Grants,
    NotServed,
}

/// A method an on-premises server does not serve.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not served by an on-premises license server: it serves the seats and activations its server license file grants, and nothing else")]
struct NotServedHere(String);

impl ClassifiedError for NotServedHere {
    fn class(&self) -> ErrorClass {
        ErrorClass::Unimplemented
    }

    fn reason(&self) -> &'static str {
        "NOT_SERVED_ON_PREMISES"
    }
}

/// A Seat or Activation service as an on-premises server serves it (see [`rule`]).
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    onprem: OnPremises,
}

impl<S> Gated<S> {
    /// `inner`, gated by `onprem`.
    pub fn new(inner: S, onprem: OnPremises) -> Self {
        Self { inner, onprem }
    }
}

impl<S: NamedService> NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>
        + NamedService,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().rsplit('/').next().unwrap_or_default().to_owned();
        let refused = match rule(S::NAME, &method) {
            Rule::Served => None,
            Rule::Grants => self.onprem.may_grant().err().map(|why| to_status(&why)),
            Rule::NotServed => Some(to_status(&NotServedHere(format!("{}/{method}", S::NAME)))),
        };
        match refused {
            Some(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            None => Box::pin(self.inner.call(request)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_seats_and_node_locked_use_are_served_and_only_checkouts_and_activations_grant() {
        let seat = "licensing.seat.v1.SeatService";
        let activation = "licensing.activation.v1.ActivationService";
        assert_eq!(rule(seat, "Checkout"), Rule::Grants);
        assert_eq!(rule(seat, "Heartbeat"), Rule::Served);
        assert_eq!(rule(seat, "UpdateSeatPolicy"), Rule::Served);
        assert_eq!(rule(activation, "Activate"), Rule::Grants);
        assert_eq!(rule(activation, "Validate"), Rule::Served);
        for method in ["ActivateTrial", "ActivateServer", "ReturnServer", "RecordUsage", "GetMeterUsage", "Unknown"] {
            assert_eq!(rule(activation, method), Rule::NotServed, "{method}");
        }
        assert_eq!(rule("licensing.account.v1.AdminService", "IssueLicense"), Rule::NotServed);
    }
}
