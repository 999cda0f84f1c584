//! Server licenses, the vendor side of on-premises license servers (issue 26), end to end on
//! SQLite and PostgreSQL: the vendor issues a server license with grants; a server activates
//! online (ActivateServer) and gets a signed server license file that verifies with the public
//! key alone and carries the grants and its serial; servers beyond the license's seats are
//! refused; re-activating the same server signs a file with a higher serial that supersedes
//! the older one. Air-gapped, a request file is answered with the same file
//! (ProcessServerRequest); a return of an older file is refused, a return of the latest frees
//! the activation so another server can be activated (a re-host). Products cannot use a
//! server license (WRONG_KIND), and bad input is refused naming the field, changing nothing.

use crate::common::*;
use licensing_domain::certificate::verifying_key_from_base64;
use licensing_domain::fingerprint::Component;
use licensing_domain::server_license::{
    encode_server_request, parse_server_license_file, verify_server_license, verify_server_license_file,
    ServerLicensePayload, ServerRequest, ServerRequestKind,
};
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, ServerGrant};
use licensing_proto::seat::v1 as seat_pb;
use licensing_proto::seat::v1::seat_service_client::SeatServiceClient;
use tonic::Code;

pub fn server(name: &str) -> Vec<Component> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| Component { name: n.to_string(), value: format!("{name}-{n}") })
        .collect()
}

fn by_key(key: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(key.into())) })
}

fn machine(name: &str) -> Option<pb::MachineInfo> {
    Some(pb::MachineInfo {
        fingerprint: server(name).into_iter().map(|c| FingerprintComponent { name: c.name, value: c.value }).collect(),
        machine_name: name.into(),
        platform: "linux-x86_64".into(),
        product_version: "1.0".into(),
    })
}

pub fn grant(product: &str, feature: &str, floating: i32, node_locked: i32) -> ServerGrant {
    ServerGrant {
        product_code: product.into(),
        feature: feature.into(),
        floating_seats: floating,
        node_locked_activations: node_locked,
    }
}

/// A server license for `servers` servers: the fixture's product with 25 floating seats and 10
/// node-locked activations, its `render` feature with 5 seats.
async fn issue_server_license(app: &TestApp, f: &Fixture, servers: i32) -> (String, String) {
    let product = f.product.clone();
    let (license_id, key, _) = issue_license(app, f, LicenseKind::Server, servers, |r| {
        r.modules = vec![];
        r.associate = true;
        r.server_grants = vec![grant(&product, "", 25, 10), grant(&product, "render", 5, 0)];
    })
    .await;
    (license_id, key)
}

async fn activate_server(app: &TestApp, key: &str, name: &str) -> Result<pb::ActivateServerResponse, tonic::Status> {
    let request = pb::ActivateServerRequest { credentials: by_key(key), machine: machine(name) };
    ActivationServiceClient::new(app.channel().await).activate_server(request).await.map(|r| r.into_inner())
}

async fn verifying_key(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    let key = ActivationServiceClient::new(app.channel().await)
        .get_verifying_key(pb::GetVerifyingKeyRequest {})
        .await
        .unwrap()
        .into_inner()
        .public_key;
    verifying_key_from_base64(&key).unwrap()
}

fn request_file(kind: ServerRequestKind, key: &str, name: &str, installation_id: &str, serial: i64) -> String {
    encode_server_request(&ServerRequest {
        v: 1,
        kind,
        license_key: key.into(),
        fingerprint: server(name),
        server_name: name.into(),
        installation_id: installation_id.into(),
        serial,
        created_at_ms: 1_700_000_000_000,
    })
}

/// The request with one character of its body mistyped.
fn mistyped(text: &str) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let typo = if lines[1].starts_with('e') { "f" } else { "e" };
    lines[1].replace_range(0..1, typo);
    lines.join("\n")
}

async fn process(app: &TestApp, file: &str) -> Result<admin_pb::ProcessServerRequestResponse, tonic::Status> {
    let request = admin_pb::ProcessServerRequestRequest { request_file: file.into() };
    app.admin().await.process_server_request(admin_req(request)).await.map(|r| r.into_inner())
}

async fn audit_actions(app: &TestApp, subject: &str) -> Vec<String> {
    let request = admin_pb::ListAuditEventsRequest { subject: subject.into(), page: None };
    let events = app.admin().await.list_audit_events(admin_req(request)).await.unwrap().into_inner().events;
    events.into_iter().map(|e| e.action).collect()
}

#[tokio::test]
async fn a_server_activates_online_and_gets_a_signed_file_with_its_grants_and_a_growing_serial() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key) = issue_server_license(&app, &f, 1).await;
        let license = get_license(&app, &license_id).await;
        assert_eq!(license.kind, LicenseKind::Server as i32, "{backend:?}");
        assert_eq!(
            license.server_grants,
            vec![grant(&f.product, "", 25, 10), grant(&f.product, "render", 5, 0)],
            "{backend:?}: the admin API shows the grants"
        );
        let public = verifying_key(&app).await;

        let first = activate_server(&app, &key, "lic01").await.unwrap();
        assert!(!first.already_activated);
        assert_eq!(first.serial, 1, "{backend:?}");
        let file = verify_server_license_file(&public, &first.server_license_file).unwrap();
        assert_eq!(
            (file.license_id.as_str(), file.customer_id.as_str(), file.serial, file.server_name.as_str()),
            (license_id.as_str(), f.customer_id.as_str(), 1, "lic01"),
            "{backend:?}"
        );
        assert_eq!(file.installation_id, first.activation.as_ref().unwrap().installation_id);
        assert_eq!(file.grant(&f.product, "").map(|g| (g.floating_seats, g.node_locked_activations)), Some((25, 10)));
        assert_eq!(file.grant(&f.product, "render").map(|g| g.floating_seats), Some(5));
        assert!(file.expires_at_ms.is_some() && file.refresh_after_ms > file.issued_at_ms, "{file:?}");
        assert_eq!(file.check_machine(&server("lic01")).unwrap(), 1.0, "bound to the server's fingerprint");
        assert!(file.check_machine(&server("elsewhere")).is_err(), "and to no other machine");

        // An altered file is refused.
        let blob = parse_server_license_file(&first.server_license_file).unwrap();
        let mut payload: ServerLicensePayload = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &blob.payload).unwrap(),
        )
        .unwrap();
        payload.grants[0].floating_seats = 2500;
        let altered = licensing_domain::certificate::SignedBlob {
            payload: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                serde_json::to_vec(&payload).unwrap(),
            ),
            ..blob
        };
        assert!(verify_server_license(&public, &altered).is_err(), "{backend:?}: more seats than signed");

        // A second server beyond the license's one is refused, and consumes nothing.
        let second = activate_server(&app, &key, "lic02").await.unwrap_err();
        assert_eq!((second.code(), reason(&second).as_str()), (Code::ResourceExhausted, "ACTIVATION_LIMIT_REACHED"));
        assert!(second.message().contains("server activations"), "{}", second.message());
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1, "{backend:?}");

        // The same server again: nothing consumed, a fresh file whose serial supersedes.
        let again = activate_server(&app, &key, "lic01").await.unwrap();
        assert!(again.already_activated);
        assert_eq!(again.serial, 2, "{backend:?}");
        let newer = verify_server_license_file(&public, &again.server_license_file).unwrap();
        assert!(newer.supersedes(&file), "serial 2 supersedes serial 1");
        assert!(!file.supersedes(&newer), "and never the reverse");
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1, "{backend:?}");
    }
}

#[tokio::test]
async fn an_air_gapped_server_is_answered_by_request_files_and_only_its_latest_file_returns() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key) = issue_server_license(&app, &f, 1).await;
        let public = verifying_key(&app).await;

        let answer = process(&app, &request_file(ServerRequestKind::Activate, &key, "vault", "", 0)).await.unwrap();
        assert!(!answer.returned);
        assert_eq!(answer.serial, 1, "{backend:?}");
        let file = verify_server_license_file(&public, &answer.server_license_file).unwrap();
        assert_eq!((file.serial, file.installation_id.as_str()), (1, answer.installation_id.as_str()));
        assert_eq!(file.grants.len(), 2);
        // The operator asks again (the first answer was lost): serial 2 supersedes it.
        let again = process(&app, &request_file(ServerRequestKind::Activate, &key, "vault", "", 0)).await.unwrap();
        assert_eq!((again.serial, again.installation_id.as_str()), (2, answer.installation_id.as_str()));

        // The customer cannot free the server in the portal: only its return (or the vendor) can.
        let session =
            licensing_proto::account::v1::account_service_client::AccountServiceClient::new(app.channel().await)
                .login(admin_pb::LoginRequest { login: f.customer_id.clone(), password: CUSTOMER_PASSWORD.into() })
                .await
                .unwrap()
                .into_inner()
                .session_token;
        let portal =
            licensing_proto::account::v1::account_service_client::AccountServiceClient::new(app.channel().await)
                .deactivate_installation(with_token(
                    &session,
                    admin_pb::DeactivateInstallationRequest {
                        license_id: license_id.clone(),
                        installation_id: answer.installation_id.clone(),
                    },
                ))
                .await
                .unwrap_err();
        assert_eq!((portal.code(), reason(&portal).as_str()), (Code::FailedPrecondition, "WRONG_KIND"), "{backend:?}");

        // Returning the older file is refused, audited, and frees nothing.
        let stale = request_file(ServerRequestKind::Return, &key, "vault", &answer.installation_id, 1);
        let refused = process(&app, &stale).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused).as_str()),
            (Code::FailedPrecondition, "SUPERSEDED_SERVER_LICENSE"),
            "{backend:?}: {}",
            refused.message()
        );
        assert!(refused.message().contains("serial 2"), "{}", refused.message());
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1);
        assert!(audit_actions(&app, &license_id).await.contains(&"server_license.return_refused".to_string()));
        let blocked = activate_server(&app, &key, "new-vault").await.unwrap_err();
        assert_eq!(blocked.code(), Code::ResourceExhausted, "{backend:?}");

        // Returning the latest frees the activation, audited; another server can then activate.
        let latest = request_file(ServerRequestKind::Return, &key, "vault", &answer.installation_id, 2);
        let returned = process(&app, &latest).await.unwrap();
        assert!(returned.returned && returned.server_license_file.is_empty());
        assert_eq!((returned.serial, returned.license.unwrap().activations_used), (2, 0), "{backend:?}");
        assert!(audit_actions(&app, &license_id).await.contains(&"server_license.returned".to_string()));
        // The same return again finds no live activation.
        let replayed = process(&app, &latest).await.unwrap_err();
        assert_eq!(replayed.code(), Code::NotFound, "{backend:?}");
        let rehosted = activate_server(&app, &key, "new-vault").await.unwrap();
        assert!(!rehosted.already_activated);
        assert_eq!(rehosted.serial, 3, "{backend:?}: serials keep growing across servers");
        let history = app
            .admin()
            .await
            .get_activation_history(admin_req(admin_pb::GetActivationHistoryRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .history;
        assert!(history.iter().any(|h| h.action == "server_return"), "{history:?}");
    }
}

#[tokio::test]
async fn products_cannot_use_a_server_license_and_a_server_cannot_use_a_product_license() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (_, key) = issue_server_license(&app, &f, 2).await;
        let mut activation = ActivationServiceClient::new(app.channel().await);

        let activate = activation
            .activate(pb::ActivateRequest { credentials: by_key(&key), machine: machine("ws-1") })
            .await
            .unwrap_err();
        assert_eq!((activate.code(), reason(&activate).as_str()), (Code::FailedPrecondition, "WRONG_KIND"));
        let validation = activation
            .validate(pb::ValidateRequest {
                credentials: by_key(&key),
                fingerprint: machine("ws-1").unwrap().fingerprint,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(validation.code, pb::ValidationCode::WrongKind as i32, "{backend:?}");
        assert!(validation.detail.contains("ActivateServer"), "{}", validation.detail);
        let checkout = SeatServiceClient::new(app.channel().await)
            .checkout(seat_pb::CheckoutRequest {
                credentials: Some(seat_pb::SeatCredentials {
                    credential: Some(seat_pb::seat_credentials::Credential::LicenseKey(key.clone())),
                }),
                user: "ann".into(),
                host: "ws-1".into(),
                client_instance_id: "c-1".into(),
                ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!((checkout.code(), reason(&checkout).as_str()), (Code::FailedPrecondition, "WRONG_KIND"));

        // A node-locked key activates no server, online or by request file.
        let (node_locked_id, node_locked_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |_| {}).await;
        let wrong = activate_server(&app, &node_locked_key, "lic01").await.unwrap_err();
        assert_eq!((wrong.code(), reason(&wrong).as_str()), (Code::FailedPrecondition, "WRONG_KIND"));
        let by_file = request_file(ServerRequestKind::Activate, &node_locked_key, "lic01", "", 0);
        let wrong = process(&app, &by_file).await.unwrap_err();
        assert_eq!((wrong.code(), reason(&wrong).as_str()), (Code::FailedPrecondition, "WRONG_KIND"));
        let return_file = request_file(ServerRequestKind::Return, &node_locked_key, "lic01", "ins_0000000000000000", 1);
        let wrong = process(&app, &return_file).await.unwrap_err();
        assert_eq!((wrong.code(), reason(&wrong).as_str()), (Code::FailedPrecondition, "WRONG_KIND"));
        assert_eq!(get_license(&app, &node_locked_id).await.activations_used, 0, "{backend:?}");
    }
}

#[tokio::test]
async fn bad_server_input_is_refused_naming_the_field_and_changes_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let mut admin = app.admin().await;
        let issue = |grants: Vec<ServerGrant>, kind: LicenseKind| admin_pb::IssueLicenseRequest {
            product_code: f.product.clone(),
            customer_id: f.customer_id.clone(),
            kind: kind as i32,
            seats: 1,
            server_grants: grants,
            ..Default::default()
        };
        let cases = [
            (issue(vec![], LicenseKind::Server), "server_grants"),
            (issue(vec![grant("no-such-product", "", 5, 0)], LicenseKind::Server), "server_grants.product_code"),
            (issue(vec![grant(&f.product, "no-such-module", 5, 0)], LicenseKind::Server), "server_grants.feature"),
            (issue(vec![grant(&f.product, "render", 0, 0)], LicenseKind::Server), "server_grants.floating_seats"),
            (issue(vec![grant(&f.product, "", 1_000_001, 0)], LicenseKind::Server), "server_grants.floating_seats"),
            (issue(vec![grant(&f.product, "re\0nder", 5, 0)], LicenseKind::Server), "server_grants.feature"),
            (issue(vec![grant(&f.product, "", 5, 0)], LicenseKind::NodeLocked), "server_grants"),
        ];
        for (request, field) in cases {
            let status = admin.issue_license(admin_req(request.clone())).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{backend:?} {field}: {}", status.message());
            assert!(status.message().starts_with(&format!("{field}:")), "{backend:?} {field}: {}", status.message());
        }
        let listed = admin
            .list_licenses(admin_req(admin_pb::ListLicensesRequest {
                customer_id: f.customer_id.clone(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
            .licenses;
        assert!(listed.is_empty(), "{backend:?}: no license was issued: {listed:?}");

        let (license_id, key) = issue_server_license(&app, &f, 1).await;
        let valid = request_file(ServerRequestKind::Activate, &key, "lic01", "", 0);
        let garbage = [
            String::new(),
            "garbage".to_string(),
            "\0".to_string(),
            mistyped(&valid),
            format!("{valid}{}", "x".repeat(70_000)),
            request_file(ServerRequestKind::Return, &key, "lic01", "not-an-installation", 1),
            request_file(ServerRequestKind::Return, &key, "lic01", "ins_0000000000000000", 0),
        ];
        for text in garbage {
            let status = process(&app, &text).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{backend:?}: {}", status.message());
            assert!(status.message().starts_with("request_file:"), "{backend:?}: {}", status.message());
        }
        let nul_name = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Activate,
            license_key: key.clone(),
            fingerprint: server("lic01"),
            server_name: "li\0c01".into(),
            installation_id: String::new(),
            serial: 0,
            created_at_ms: 0,
        });
        let status = process(&app, &nul_name).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{backend:?}: {}", status.message());
        assert!(status.message().starts_with("request_file: server_name:"), "{}", status.message());
        let no_fingerprint = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Activate,
            license_key: key.clone(),
            fingerprint: vec![],
            server_name: "lic01".into(),
            installation_id: String::new(),
            serial: 0,
            created_at_ms: 0,
        });
        let status = process(&app, &no_fingerprint).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{backend:?}: {}", status.message());
        assert!(status.message().starts_with("request_file: fingerprint:"), "{}", status.message());
        let status = activate_server(&app, &key, "li\0c01").await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{backend:?}: {}", status.message());
        assert!(status.message().contains("machine"), "{}", status.message());
        let license = get_license(&app, &license_id).await;
        assert_eq!(license.activations_used, 0, "{backend:?}: nothing was activated");
        // The first file signed after all that is still serial 1.
        assert_eq!(activate_server(&app, &key, "lic01").await.unwrap().serial, 1, "{backend:?}");
    }
}
