//! No secret reaches the logs: the server binary runs a full scenario with debug-level JSON logs,
//! and its output holds no license key, activation password, customer password, session token,
//! reset token or admin token.

use crate::common::*;
use licensing_proto::account::v1 as acc;
use licensing_proto::account::v1::account_service_client::AccountServiceClient;
use licensing_proto::account::v1::admin_service_client::AdminServiceClient;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, Module};
use licensing_proto::seat::v1 as seat;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use std::time::Duration;

/// The server binary on a fresh data directory, logging in `format` at `filter` to a file.
struct LoggingServer {
    process: process::Process,
    /// Its data directory (the mail outbox and the log file are in it).
    dir: tempfile::TempDir,
}

impl LoggingServer {
    async fn start(format: &str, filter: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let env: Vec<(String, String)> = [
            ("LICENSING_DATA_DIR", dir.path().display().to_string()),
            ("LICENSING_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
            ("LICENSING_LOG_FORMAT", format.to_owned()),
            ("RUST_LOG", filter.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let mut process = process::Process::new(env!("CARGO_BIN_EXE_licensing-server"), &env);
        process.logs = Some(dir.path().join("server.log"));
        process.start().await;
        Self { process, dir }
    }

    /// Stops it with SIGTERM: everything it logged, on stdout and stderr.
    async fn stop(mut self) -> String {
        self.process.stop().await;
        std::fs::read_to_string(self.process.logs.as_ref().unwrap()).unwrap()
    }
}

/// Text logs written to a pipe or a file (a container's log) carry no terminal colour codes.
#[tokio::test]
async fn text_logs_off_a_terminal_carry_no_colour_codes() {
    let server = LoggingServer::start("text", "info").await;
    let logs = server.stop().await;
    assert!(logs.contains("INFO") && logs.contains("serving"), "the server logged its start: {logs}");
    assert!(!logs.contains('\u{1b}'), "escape codes in the logs: {logs:?}");
}

#[tokio::test]
async fn a_full_scenario_logs_no_secret() {
    let server = LoggingServer::start("json", "debug,h2=info,hyper=info,tower=info").await;
    let channel = server.process.channel().await;
    let mut admin = AdminServiceClient::new(channel.clone());
    admin
        .create_product(admin_req(acc::CreateProductRequest {
            code: "secret-test".into(),
            name: "S".into(),
            modules: vec![Module { code: "mod-a".into(), name: "M".into() }],
        }))
        .await
        .unwrap();
    let customer = admin
        .create_customer(admin_req(acc::CreateCustomerRequest {
            company_name: "Acme".into(),
            contact_email: "s@acme.example".into(),
            password: CUSTOMER_PASSWORD.into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    let mut secrets = vec![ADMIN_TOKEN.to_owned(), CUSTOMER_PASSWORD.to_owned()];
    let mut keys = vec![];
    for kind in [LicenseKind::NodeLocked, LicenseKind::Concurrent] {
        let issued = admin
            .issue_license(admin_req(acc::IssueLicenseRequest {
                product_code: "secret-test".into(),
                customer_id: customer.customer_id.clone(),
                kind: kind as i32,
                seats: 2,
                allowed_deactivations: 2,
                associate: true,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        secrets.push(issued.license_key.clone());
        secrets.push(issued.activation_password.clone());
        keys.push((issued.license.unwrap().license_id, issued.license_key, issued.activation_password));
    }
    let fingerprint = vec![FingerprintComponent { name: "machine-id".into(), value: "m-1".into() }];
    let mut activation = ActivationServiceClient::new(channel.clone());
    let by_password = act::LicenseCredentials {
        credential: Some(act::license_credentials::Credential::LicenseIdAndPassword(act::LicenseIdAndPassword {
            license_id: keys[0].0.clone(),
            password: keys[0].2.clone(),
        })),
    };
    activation
        .activate(act::ActivateRequest {
            credentials: Some(by_password),
            machine: Some(act::MachineInfo { fingerprint: fingerprint.clone(), ..Default::default() }),
        })
        .await
        .unwrap();
    let by_key = act::LicenseCredentials {
        credential: Some(act::license_credentials::Credential::LicenseKey(keys[0].1.clone())),
    };
    activation
        .validate(act::ValidateRequest {
            credentials: Some(by_key.clone()),
            fingerprint: fingerprint.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let wrong = act::LicenseCredentials {
        credential: Some(act::license_credentials::Credential::LicenseIdAndPassword(act::LicenseIdAndPassword {
            license_id: keys[0].0.clone(),
            password: "WrongButSecret-123".into(),
        })),
    };
    secrets.push("WrongButSecret-123".into());
    activation
        .activate(act::ActivateRequest {
            credentials: Some(wrong),
            machine: Some(act::MachineInfo { fingerprint, ..Default::default() }),
        })
        .await
        .unwrap_err();
    let mut seats = SeatServiceClient::new(channel.clone());
    let grant = seats
        .checkout(seat::CheckoutRequest {
            credentials: Some(seat::SeatCredentials {
                credential: Some(seat::seat_credentials::Credential::LicenseKey(keys[1].1.clone())),
            }),
            client_instance_id: "c".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .grant
        .unwrap();
    seats
        .heartbeat(seat::HeartbeatRequest {
            license_id: grant.license_id.clone(),
            lease_id: grant.lease_id.clone(),
            lease_token: grant.lease_token.clone(),
        })
        .await
        .unwrap();
    let mut portal = AccountServiceClient::new(channel.clone());
    let session = portal
        .login(acc::LoginRequest { login: "s@acme.example".into(), password: CUSTOMER_PASSWORD.into() })
        .await
        .unwrap()
        .into_inner()
        .session_token;
    secrets.push(session.clone());
    portal
        .get_activation_password(with_token(
            &session,
            acc::GetActivationPasswordRequest { license_id: keys[0].0.clone() },
        ))
        .await
        .unwrap();
    portal
        .login(acc::LoginRequest { login: "s@acme.example".into(), password: "AnotherWrongSecret".into() })
        .await
        .unwrap_err();
    secrets.push("AnotherWrongSecret".into());
    portal.request_password_reset(acc::RequestPasswordResetRequest { login: "s@acme.example".into() }).await.unwrap();
    let mut reset_token = None;
    for _ in 0..100 {
        if let Ok(entries) = std::fs::read_dir(server.dir.path().join("outbox")) {
            for e in entries.flatten() {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                reset_token = text.split_whitespace().find(|w| w.starts_with("rst_")).map(str::to_owned);
            }
        }
        if reset_token.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reset_token = reset_token.expect("a reset mail");
    portal
        .reset_password(acc::ResetPasswordRequest {
            reset_token: reset_token.clone(),
            new_password: "brand new secret pw".into(),
        })
        .await
        .unwrap();
    secrets.push(reset_token);
    secrets.push("brand new secret pw".into());

    let logs = server.stop().await;
    assert!(logs.lines().count() > 5, "the scenario produced logs: {logs}");
    for secret in &secrets {
        assert!(!logs.contains(secret.as_str()), "a secret ({}…) appears in the logs", &secret[..4]);
        let compact = secret.replace('-', "");
        assert!(!logs.contains(&compact), "a secret ({}…) appears in the logs without dashes", &secret[..4]);
    }
}
