//! The baseline server: the same stack as every licensing process (`GrpcServer`: its tower
//! layers, health, reflection, telemetry) serving one trivial unary RPC.

use licensing_runtime::config::{Config, Lookup};
use licensing_runtime::server::{GrpcServer, StackSettings};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

pub mod pb {
    tonic::include_proto!("licensing.bench.v1");
}

pub const SERVICE_NAME: &str = "licensing.bench.v1.EchoService";

#[derive(Debug, Default)]
pub struct Echo;

#[tonic::async_trait]
impl pb::echo_service_server::EchoService for Echo {
    async fn echo(&self, request: Request<pb::EchoRequest>) -> Result<Response<pb::EchoResponse>, Status> {
        Ok(Response::new(pb::EchoResponse { payload: request.into_inner().payload }))
    }
}

/// `main` of the echo child process, configured like a licensing process.
pub async fn serve(lookup: &dyn Lookup) -> anyhow::Result<()> {
    let config = Config::from_lookup(lookup, "127.0.0.1:0", "licensing-bench-echo")?;
    let _telemetry = licensing_runtime::telemetry::init(&config)?;
    let max = config.max_message_bytes;
    let service = pb::echo_service_server::EchoServiceServer::new(Echo)
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    let routes = Routes::default().add_service(service);
    let server = GrpcServer::bind(config.listen_addr, routes, &[SERVICE_NAME], StackSettings::from(&config)).await?;
    server.run_until_stopped(licensing_runtime::server::shutdown_signal()).await?;
    Ok(())
}
