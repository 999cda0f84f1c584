//! The baseline server: the same stack as every licensing process (`GrpcServer`: its tower
//! layers, health, reflection, telemetry) serving one trivial unary RPC; the CPU floor of a call
//! that answers with a signed token; and, beside PostgreSQL and Redis, the I/O floor of a seat
//! call.

use licensing_domain::certificate::{LeaseTokenPayload, Signer};
use licensing_domain::clock::{Clock as _, SystemClock};
use licensing_domain::store::{CatalogStore as _, LeaseStore as _};
use licensing_runtime::config::{Config, Lookup};
use licensing_runtime::server::{GrpcServer, StackSettings};
use licensing_store::sql::SqlOptions;
use licensing_store::{RedisLeaseStore, SqlStore};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

// Generated code, `pub` as prost writes it.
#[allow(unreachable_pub)]
pub mod pb {
    tonic::include_proto!("licensing.bench.v1");
}

pub(crate) const SERVICE_NAME: &str = "licensing.bench.v1.EchoService";

pub(crate) struct Echo {
    /// The stores `Roundtrips` calls: the production stack's PostgreSQL and Redis.
    stores: Option<(SqlStore, RedisLeaseStore)>,
    /// Signs the tokens `SignLeaseToken` answers with, with a key of its own (what is measured
    /// is the signature's cost, which does not depend on the key).
    signer: Signer,
}

#[tonic::async_trait]
impl pb::echo_service_server::EchoService for Echo {
    async fn echo(&self, request: Request<pb::EchoRequest>) -> Result<Response<pb::EchoResponse>, Status> {
        Ok(Response::new(pb::EchoResponse { payload: request.into_inner().payload }))
    }

    async fn roundtrips(&self, request: Request<pb::RoundtripsRequest>) -> Result<Response<pb::EchoResponse>, Status> {
        let (sql, redis) = self
            .stores
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this echo server has no PostgreSQL and Redis"))?;
        let pb::RoundtripsRequest { license_id, redis_only } = request.into_inner();
        let found = if redis_only {
            license_id.clone()
        } else {
            let license = sql.get_license(&license_id).await.map_err(|e| Status::unavailable(e.to_string()))?;
            license.map(|l| l.license_id).unwrap_or_default()
        };
        // One script on a pool with no leases: a round trip that decides nothing.
        redis.list(&format!("{license_id}-floor")).await.map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::EchoResponse { payload: found }))
    }

    async fn sign_lease_token(
        &self,
        request: Request<pb::SignLeaseTokenRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        let r = request.into_inner();
        // A heartbeat's token: the lease extended by a minute from now.
        let ttl_ms = 60_000;
        let token = self.signer.sign_lease_token(&LeaseTokenPayload {
            v: 1,
            lease_id: r.lease_id,
            license_id: r.license_id,
            client_instance_id: r.client_instance_id,
            fence: 1,
            expires_at_ms: SystemClock.now() + ttl_ms,
            borrowed: false,
            feature: r.feature,
            user: r.user,
            host: r.host,
            seats_held: 1,
            ttl_ms,
        });
        Ok(Response::new(pb::EchoResponse { payload: token }))
    }
}

/// `main` of the echo child process, configured like a licensing process.
pub(crate) async fn serve(lookup: &dyn Lookup) -> anyhow::Result<()> {
    let config = Config::from_lookup(lookup, "127.0.0.1:0", "licensing-bench-echo")?;
    let _telemetry = licensing_runtime::telemetry::init(&config)?;
    let max = config.max_message_bytes;
    let stores = match (&config.database_url, &config.redis_url) {
        (Some(database), Some(redis)) => Some((
            SqlStore::connect_postgres(database, &SqlOptions::default()).await?,
            RedisLeaseStore::connect(redis).await?,
        )),
        _ => None,
    };
    let service =
        pb::echo_service_server::EchoServiceServer::new(Echo { stores, signer: Signer::from_seed(&rand::random()) })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
    let routes = Routes::default().add_service(service);
    let server = GrpcServer::bind(config.listen_addr, routes, &[SERVICE_NAME], StackSettings::from(&config)).await?;
    server.run_until_stopped(licensing_runtime::server::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pb::echo_service_server::EchoService as _;
    use super::*;
    use licensing_domain::certificate::verify_lease_token;

    /// The signature floor does a heartbeat's real work: a token that verifies, naming the lease.
    #[tokio::test]
    async fn the_signature_floor_answers_with_a_lease_token_that_verifies() {
        let signer = Signer::from_seed(&[3; 32]);
        let echo = Echo { stores: None, signer: signer.clone() };
        let request = pb::SignLeaseTokenRequest {
            license_id: "lic_A".into(),
            lease_id: "lse_B".into(),
            client_instance_id: "cli_C".into(),
            user: "ada".into(),
            host: "ws1".into(),
            feature: "render".into(),
        };
        let token = echo.sign_lease_token(Request::new(request)).await.unwrap().into_inner().payload;
        let payload = verify_lease_token(&signer.verifying_key(), &token).unwrap();
        assert_eq!(
            (payload.license_id.as_str(), payload.lease_id.as_str(), payload.client_instance_id.as_str()),
            ("lic_A", "lse_B", "cli_C")
        );
        assert_eq!((payload.user.as_str(), payload.host.as_str(), payload.feature.as_str()), ("ada", "ws1", "render"));
        assert!(payload.expires_at_ms > SystemClock.now(), "the token holds for the minute after it is signed");
        let other = Signer::from_seed(&[4; 32]);
        assert!(verify_lease_token(&other.verifying_key(), &token).is_err(), "signed by the floor's key only");
    }
}
