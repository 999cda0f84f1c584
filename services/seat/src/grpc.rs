//! The tonic adapter of the Seat service.

use crate::service::{CheckoutRequest, Grant, Seats, WaitEvent};
use crate::SeatError;
use licensing_domain::model::seats_held;
use licensing_proto::seat::v1 as pb;
use licensing_proto::seat::v1::seat_service_server::{SeatService, SeatServiceServer};
use licensing_runtime::auth::{caller_address, AdminAuth, AdminOrSessionAuth, Caller, SessionAuth};
use licensing_runtime::convert::{
    from_duration, from_opt_timestamp, opt_timestamp, proto as conv, seat as conv_seat, to_duration, to_timestamp,
    FieldError,
};
use licensing_runtime::credentials::{CredentialError, Credentials};
use licensing_runtime::server::CancellationToken;
use licensing_runtime::status::{to_status, OrStatus};
use std::pin::Pin;
use tokio_stream::StreamExt as _;
use tonic::{Request, Response, Status};

/// The `licensing.seat.v1.SeatService` gRPC adapter over [`Seats`].
#[derive(Clone)]
pub struct SeatApi {
    seats: Seats,
    admin: AdminAuth,
    /// For the calls a license's own customer may make too (its leases, its usage report).
    admin_or_owner: AdminOrSessionAuth,
    /// Cancelled when the server drains: open `WaitForSeat` streams end with UNAVAILABLE.
    drain: CancellationToken,
}

impl SeatApi {
    /// The adapter; admin calls check `admin`, calls a license's customer may make also accept `sessions`.
    pub fn new(seats: Seats, admin: AdminAuth, sessions: SessionAuth) -> Self {
        Self {
            seats,
            admin_or_owner: AdminOrSessionAuth::new(admin.clone(), sessions),
            admin,
            drain: CancellationToken::new(),
        }
    }

    /// Ends open `WaitForSeat` streams when `drain` is cancelled (the server's drain signal).
    pub fn with_drain(self, drain: CancellationToken) -> Self {
        Self { drain, ..self }
    }

    async fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        self.admin_or_owner.authorize(request.metadata()).await.map_err(SeatError::from).or_status()
    }

    /// The tonic service, decoding and encoding messages of up to `max_message_bytes`.
    pub fn into_server(self, max_message_bytes: usize) -> SeatServiceServer<Self> {
        SeatServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    async fn require_admin<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.admin.authorize(request.metadata()).await.map_err(SeatError::from).or_status()?;
        Ok(())
    }
}

fn credentials(c: Option<pb::SeatCredentials>, client: &str) -> Result<Credentials, Status> {
    use pb::seat_credentials::Credential;
    match c.and_then(|c| c.credential) {
        Some(Credential::LicenseKey(key)) => Ok(Credentials::LicenseKey(key)),
        Some(Credential::LicenseIdAndPassword(p)) => {
            Ok(Credentials::IdAndPassword { license_id: p.license_id, password: p.password, client: client.to_owned() })
        }
        None => Err(to_status(&CredentialError::Missing)),
    }
}

fn invalid(e: FieldError) -> Status {
    to_status(&SeatError::InvalidArgument { field: e.field, message: e.message })
}

fn millis(field: &'static str, d: Option<&prost_types::Duration>) -> Result<i64, Status> {
    from_duration(field, d).map_err(invalid)
}

fn timestamp(field: &'static str, t: Option<&prost_types::Timestamp>) -> Result<Option<i64>, Status> {
    from_opt_timestamp(field, t).map_err(invalid)
}

fn checkout_request(r: &pb::CheckoutRequest) -> Result<CheckoutRequest, Status> {
    Ok(CheckoutRequest {
        feature: r.feature.clone(),
        user: r.user.clone(),
        host: r.host.clone(),
        client_instance_id: r.client_instance_id.clone(),
        ttl_ms: millis("ttl", r.ttl.as_ref())?,
        borrow_for_ms: millis("borrow_for", r.borrow_for.as_ref())?,
        groups: r.groups.clone(),
    })
}

fn grant(g: Grant) -> pb::LeaseGrant {
    pb::LeaseGrant {
        lease_id: g.lease.lease_id.clone(),
        license_id: g.lease.license_id.clone(),
        ttl: Some(to_duration(g.lease.ttl_ms)),
        expires_at: Some(to_timestamp(g.lease.expires_at)),
        heartbeat_interval: Some(to_duration(g.heartbeat_interval_ms)),
        lease_token: g.token,
        fence: g.lease.fence,
        renewed: g.renewed,
        overdraft: g.lease.overdraft,
        borrowed: g.lease.borrowed,
        seats_total: g.seats_total,
        seats_in_use: g.seats_in_use,
        grace_ends_at: opt_timestamp(g.grace_ends_at),
    }
}

type WaitStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::WaitForSeatResponse, Status>> + Send>>;

#[tonic::async_trait]
impl SeatService for SeatApi {
    async fn checkout(&self, request: Request<pb::CheckoutRequest>) -> Result<Response<pb::CheckoutResponse>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let req = checkout_request(&r)?;
        let creds = credentials(r.credentials, &client)?;
        let g = self.seats.checkout(&creds, &req, None).await.or_status()?;
        Ok(Response::new(pb::CheckoutResponse { grant: Some(grant(g)) }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let r = request.get_ref();
        let beat = self.seats.heartbeat(&r.license_id, &r.lease_id, &r.lease_token).await.or_status()?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: Some(to_timestamp(beat.lease.expires_at)),
            heartbeat_interval: Some(to_duration(beat.lease.heartbeat_interval_ms())),
            lease_token: beat.token,
            grace_ends_at: opt_timestamp(beat.grace_ends_at),
        }))
    }

    async fn checkin(&self, request: Request<pb::CheckinRequest>) -> Result<Response<pb::CheckinResponse>, Status> {
        let r = request.get_ref();
        let released = self.seats.checkin(&r.license_id, &r.lease_id).await.or_status()?;
        Ok(Response::new(pb::CheckinResponse { released }))
    }

    type WaitForSeatStream = WaitStream;

    async fn wait_for_seat(
        &self,
        request: Request<pb::WaitForSeatRequest>,
    ) -> Result<Response<Self::WaitForSeatStream>, Status> {
        let client = caller_address(&request);
        let r = request.into_inner();
        let checkout = r.checkout.ok_or_else(|| to_status(&SeatError::invalid("checkout", "is required")))?;
        let req = checkout_request(&checkout)?;
        let creds = credentials(checkout.credentials, &client)?;
        let max_wait_ms = millis("max_wait", r.max_wait.as_ref())?;
        let events = self.seats.wait_for_seat(creds, req, max_wait_ms, self.drain.clone()).await.or_status()?;
        let responses = events.map(|event| {
            let event = match event.or_status()? {
                WaitEvent::Position(position) => {
                    pb::wait_for_seat_response::Event::QueuePosition(i32::try_from(position).unwrap_or(i32::MAX))
                }
                WaitEvent::Granted(g) => pb::wait_for_seat_response::Event::Grant(grant(*g)),
            };
            Ok(pb::WaitForSeatResponse { event: Some(event) })
        });
        Ok(Response::new(Box::pin(responses)))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesResponse>, Status> {
        let caller = self.caller(&request).await?;
        let (license, leases) = self.seats.list(&caller, &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::ListLeasesResponse {
            seats_total: license.seats,
            seats_in_use: seats_held(&leases),
            leases: leases.iter().map(conv::lease).collect(),
        }))
    }

    async fn revoke_lease(
        &self,
        request: Request<pb::RevokeLeaseRequest>,
    ) -> Result<Response<pb::RevokeLeaseResponse>, Status> {
        self.require_admin(&request).await?;
        let r = request.get_ref();
        let fence = self.seats.revoke(&r.license_id, &r.lease_id).await.or_status()?;
        Ok(Response::new(pb::RevokeLeaseResponse { revoked: true, fence }))
    }

    async fn get_pool_status(
        &self,
        request: Request<pb::GetPoolStatusRequest>,
    ) -> Result<Response<pb::GetPoolStatusResponse>, Status> {
        let admin = self.admin.authorize(request.metadata()).await.map_err(SeatError::from).or_status()?;
        let pool = self.seats.pool_status(&Caller::Admin(admin), &request.get_ref().license_id).await.or_status()?;
        Ok(Response::new(pb::GetPoolStatusResponse {
            seats_total: pool.license.seats,
            seats_in_use: pool.in_use,
            overdraft_in_use: pool.overdraft_in_use,
            waiting: i32::try_from(pool.waiting).unwrap_or(i32::MAX),
            policy: Some(conv_seat::policy(&pool.license.seat_policy)),
            earliest_expiry: pool.earliest_expiry.map(to_timestamp),
        }))
    }

    async fn update_seat_policy(
        &self,
        request: Request<pb::UpdateSeatPolicyRequest>,
    ) -> Result<Response<pb::UpdateSeatPolicyResponse>, Status> {
        let admin = self.admin.authorize(request.metadata()).await.map_err(SeatError::from).or_status()?;
        let r = request.into_inner();
        let policy = r.policy.as_ref().ok_or_else(|| to_status(&SeatError::invalid("policy", "is required")))?;
        let policy = conv_seat::policy_from(policy).map_err(invalid)?;
        let license = self.seats.update_policy(&admin.actor(), &r.license_id, policy).await.or_status()?;
        Ok(Response::new(pb::UpdateSeatPolicyResponse { policy: Some(conv_seat::policy(&license.seat_policy)) }))
    }

    async fn get_usage_report(
        &self,
        request: Request<pb::GetUsageReportRequest>,
    ) -> Result<Response<pb::GetUsageReportResponse>, Status> {
        let caller = self.caller(&request).await?;
        let r = request.get_ref();
        let (from, to) = (timestamp("from", r.from.as_ref())?, timestamp("to", r.to.as_ref())?);
        let report = self.seats.usage_report(&caller, &r.license_id, from, to).await.or_status()?;
        Ok(Response::new(conv_seat::usage_report(&report, r.as_csv)))
    }

    async fn get_lease_store_status(
        &self,
        request: Request<pb::GetLeaseStoreStatusRequest>,
    ) -> Result<Response<pb::GetLeaseStoreStatusResponse>, Status> {
        self.require_admin(&request).await?;
        let until = self.seats.recovering_until().await.or_status()?;
        Ok(Response::new(pb::GetLeaseStoreStatusResponse {
            recovering: until.is_some(),
            new_seats_from: until.map(to_timestamp),
        }))
    }

    async fn end_lease_store_recovery(
        &self,
        request: Request<pb::EndLeaseStoreRecoveryRequest>,
    ) -> Result<Response<pb::EndLeaseStoreRecoveryResponse>, Status> {
        let admin = self.admin.authorize(request.metadata()).await.map_err(SeatError::from).or_status()?;
        let ended = self.seats.end_recovery(&admin.actor(), &request.get_ref().reason).await.or_status()?;
        Ok(Response::new(pb::EndLeaseStoreRecoveryResponse {
            ended: ended.is_some(),
            would_have_ended_at: ended.map(to_timestamp),
        }))
    }
}
