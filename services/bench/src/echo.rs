//! The baseline server: the same stack as every licensing process (`GrpcServer`: its tower
//! layers, health, reflection, telemetry) serving one trivial unary RPC, and, beside PostgreSQL
//! and Redis, the I/O floor of a seat call.

use licensing_domain::store::{CatalogStore as _, LeaseStore as _};
use licensing_runtime::config::{Config, Lookup};
use licensing_runtime::server::{GrpcServer, StackSettings};
use licensing_store::sql::SqlOptions;
use licensing_store::{RedisLeaseStore, SqlStore};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("licensing.bench.v1");
}

pub const SERVICE_NAME: &str = "licensing.bench.v1.EchoService";

pub struct Echo {
    /// The stores `Roundtrips` calls: the production stack's PostgreSQL and Redis.
    stores: Option<(SqlStore, RedisLeaseStore)>,
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
}

/// `main` of the echo child process, configured like a licensing process.
pub async fn serve(lookup: &dyn Lookup) -> anyhow::Result<()> {
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
    let service = pb::echo_service_server::EchoServiceServer::new(Echo { stores })
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let routes = Routes::default().add_service(service);
    let server = GrpcServer::bind(config.listen_addr, routes, &[SERVICE_NAME], StackSettings::from(&config)).await?;
    server.run_until_stopped(licensing_runtime::server::shutdown_signal()).await?;
    Ok(())
}
