//! `healthcheck [ADDR] [SERVICE]`: exits 0 when the gRPC health service at ADDR (default
//! 127.0.0.1:50051) reports SERVICE (default: the whole server) SERVING, 1 otherwise. Used by the
//! compose file's health checks, so the images need no extra probe binary. Over TLS when
//! `LICENSING_TLS_CA` is set (and mutual TLS with `LICENSING_TLS_CLIENT_CERT`/`_KEY`).

use clap::{CommandFactory, FromArgMatches, Parser};
use std::time::Duration;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Asks a licensing server's gRPC health service whether it is serving: exit status 0 when
/// SERVING, 1 otherwise, with one line saying what failed.
#[derive(Parser)]
#[command(name = "healthcheck", version)]
struct Cli {
    /// The server's address, host:port or a URL.
    #[arg(default_value = "127.0.0.1:50051")]
    addr: String,
    /// The service to ask about (e.g. licensing.seat.v1.SeatService); the whole server when omitted.
    #[arg(default_value = "")]
    service: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let settings = Cli::command()
        .args(licensing_runtime::config::client_args())
        .after_help("Every option is also an environment variable, named in brackets; an option given wins.")
        .get_matches();
    let Cli { addr, service } = Cli::from_arg_matches(&settings).unwrap_or_else(|e| e.exit());
    // A setting in error is said as such, never taken for a failure of the server.
    let tls = licensing_runtime::tls::client_config(&settings).unwrap_or_else(|e| {
        eprintln!("healthcheck: {e}");
        std::process::exit(1);
    });
    let check = async {
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
                _ => licensing_runtime::tls::explain_transport_failure(&addr, e.as_ref(), &settings),
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
