//! `healthcheck [ADDR] [SERVICE]`: exits 0 when the gRPC health service at ADDR (default
//! 127.0.0.1:50051) reports SERVICE (default: the whole server) SERVING, 1 otherwise. Used by the
//! compose file's health checks, so the images need no extra probe binary. Over TLS when
//! `LICENSING_TLS_CA` is set (and mutual TLS with `LICENSING_TLS_CLIENT_CERT`/`_KEY`).

use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let service = args.next().unwrap_or_default();
    let check = async {
        let tls = licensing_runtime::tls::client_config(&licensing_runtime::config::ProcessEnv)?;
        let channel = licensing_runtime::tls::endpoint(&addr, tls)?.connect().await?;
        let status = HealthClient::new(channel)
            .check(HealthCheckRequest { service: service.clone() })
            .await?
            .into_inner()
            .status;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status)
    };
    match tokio::time::timeout(Duration::from_secs(3), check).await {
        Ok(Ok(status)) if status == ServingStatus::Serving as i32 => {
            println!("{addr} {service}: SERVING")
        }
        Ok(Ok(status)) => {
            eprintln!("{addr} {service}: not serving (status {status})");
            std::process::exit(1);
        }
        Ok(Err(e)) => {
            let said = match e.downcast_ref::<tonic::Status>() {
                // An answer from the server (it has a reason): its own words.
                Some(status) if licensing_runtime::status::reason_of(status).is_some() => {
                    format!("{addr}: {}", status.message())
                }
                _ => licensing_runtime::tls::explain_transport_failure(
                    &addr,
                    e.as_ref(),
                    &licensing_runtime::config::ProcessEnv,
                ),
            };
            eprintln!("{said}");
            std::process::exit(1);
        }
        Err(_) => {
            eprintln!("{addr}: no answer within 3 s");
            std::process::exit(1);
        }
    }
}
