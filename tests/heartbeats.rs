//! Node-locked heartbeats through gRPC: a license with a heartbeat timeout keeps the machines
//! that check in and frees the ones that go silent (a VM, container or CI runner that vanished),
//! without spending a deactivation, audited and in the activation history. The server's clock
//! is moved by hand, so a one-minute timeout passes at once.

use crate::common::*;
use base64::Engine as _;
use licensing_domain::certificate::CertificatePayload;
use licensing_domain::clock::{Clock, ManualClock, SystemClock, SECOND};
use licensing_proto::account::v1 as acc;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::LicenseKind;
use tonic::Code;

/// A server whose clock the test moves, culling every 50 ms.
async fn spawn_culling(backend: Backend, clock: ManualClock) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(backend, dir.path()).await;
    env.insert("LICENSING_CULL_INTERVAL_MS".into(), "50".into());
    spawn_with(backend, dir, env, licensing::Overrides { clock: std::sync::Arc::new(clock), ..test_overrides() }).await
}

fn seconds(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: s, nanos: 0 })
}

fn heartbeat_of(key: &str, machine: &str) -> act::HeartbeatRequest {
    let activate = activate_by_key(key, machine);
    act::HeartbeatRequest { credentials: activate.credentials, fingerprint: activate.machine.unwrap().fingerprint }
}

fn validate_of(key: &str, machine: &str) -> act::ValidateRequest {
    let activate = activate_by_key(key, machine);
    act::ValidateRequest {
        credentials: activate.credentials,
        fingerprint: activate.machine.unwrap().fingerprint,
        ..Default::default()
    }
}

fn payload(cert: &act::SignedCertificate) -> CertificatePayload {
    let bytes = base64::engine::general_purpose::STANDARD.decode(&cert.payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

async fn history(app: &TestApp, license_id: &str) -> acc::GetActivationHistoryResponse {
    app.admin()
        .await
        .get_activation_history(admin_req(acc::GetActivationHistoryRequest { license_id: license_id.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// Waits (polling, bounded) until the installation no longer holds an activation.
async fn until_inactive(app: &TestApp, license_id: &str, installation_id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let h = history(app, license_id).await;
        if h.installations.iter().any(|i| i.installation_id == installation_id && !i.active) {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{installation_id} was never culled: {h:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_machine_that_stops_heartbeating_is_freed_and_one_that_heartbeats_stays() {
    for backend in backends().await {
        let clock = ManualClock::new(SystemClock.now());
        let app = spawn_culling(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| {
            r.heartbeat_timeout = seconds(60);
            r.associate = true;
        })
        .await;
        assert_eq!(get_license(&app, &license_id).await.heartbeat_timeout, seconds(60), "{backend:?}");
        let mut c = ActivationServiceClient::new(app.channel().await);
        let activate = |machine: &str| activate_by_key(&key, machine);
        let a = c.activate(activate("vm-a")).await.unwrap().into_inner();
        let b = c.activate(activate("vm-b")).await.unwrap().into_inner();
        assert_eq!(payload(a.certificate.as_ref().unwrap()).heartbeat_timeout_secs, 60, "{backend:?}");
        let b_id = b.activation.unwrap().installation_id;
        let full = c.activate(activate("vm-c")).await.unwrap_err();
        assert_eq!(reason(&full), "ACTIVATION_LIMIT_REACHED", "{backend:?}");

        // 40 s on, A heartbeats: it is told when the next is due and when it would be freed.
        clock.advance(40 * SECOND);
        let beat = c.heartbeat(heartbeat_of(&key, "vm-a")).await.unwrap().into_inner();
        let now = clock.now();
        assert_eq!(beat.installation_id, a.activation.unwrap().installation_id, "{backend:?}");
        assert_eq!((beat.heartbeat_timeout, beat.heartbeat_interval), (seconds(60), seconds(20)), "{backend:?}");
        assert_eq!(
            beat.deactivated_after.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000),
            Some(now + 60 * SECOND),
            "{backend:?}"
        );

        // 70 s after activation B, silent all along, is culled; A, seen 30 s ago, is not.
        clock.advance(30 * SECOND);
        until_inactive(&app, &license_id, &b_id).await;
        let license = get_license(&app, &license_id).await;
        assert_eq!((license.activations_used, license.deactivations_used), (1, 0), "{backend:?}: freed, none spent");
        let valid = c.validate(validate_of(&key, "vm-a")).await.unwrap().into_inner();
        assert!(valid.valid, "{backend:?}: A is still activated: {}", valid.detail);

        // B's heartbeat now says it holds no activation, and changes nothing.
        let late = c.heartbeat(heartbeat_of(&key, "vm-b")).await.unwrap_err();
        assert_eq!((late.code(), reason(&late)), (Code::NotFound, "NOT_ACTIVATED".into()), "{backend:?}");
        assert!(late.message().contains("not activated on this machine"), "{backend:?}: {}", late.message());
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1, "{backend:?}");

        // Its activation is free for a new machine.
        c.activate(activate("vm-c")).await.expect("the culled machine's activation is free");

        // The history (support's and the owner's) and the audit log say why.
        let h = history(&app, &license_id).await;
        let cull = h.history.iter().find(|e| e.action == "cull").expect("a cull line");
        assert_eq!(cull.installation_id, b_id, "{backend:?}");
        assert!(cull.outcome.starts_with("ok: no heartbeat for 70 s (timeout 60 s)"), "{backend:?}: {}", cull.outcome);
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mine = portal(&app)
            .await
            .get_my_license(with_token(
                &session,
                acc::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(mine.history.iter().any(|e| e.action == "cull" && e.installation_id == b_id), "{backend:?}");
        let audit = app
            .admin()
            .await
            .list_audit_events(admin_req(acc::ListAuditEventsRequest { subject: license_id.clone(), page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        let culled = audit.iter().find(|e| e.action == "activation.culled").expect("an audit record");
        assert!(culled.actor == "system" && culled.details_json.contains(&b_id), "{backend:?}: {culled:?}");
    }
}

#[tokio::test]
async fn heartbeat_timeouts_are_bounded_node_locked_only_and_changed_with_an_audit_record() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let mut admin = app.admin().await;
        for (kind, timeout, why) in [
            (LicenseKind::NodeLocked, seconds(59), "between 60 s and 365 days"),
            (LicenseKind::NodeLocked, seconds(366 * 86_400), "between 60 s and 365 days"),
            (LicenseKind::NodeLocked, seconds(-5), "negative"),
            (LicenseKind::Concurrent, seconds(600), "only node-locked licenses"),
        ] {
            let request = acc::IssueLicenseRequest {
                product_code: f.product.clone(),
                customer_id: f.customer_id.clone(),
                kind: kind as i32,
                seats: 1,
                heartbeat_timeout: timeout,
                ..Default::default()
            };
            let err = admin.issue_license(admin_req(request)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?} {kind:?} {timeout:?}");
            assert!(err.message().starts_with("heartbeat_timeout: "), "{backend:?}: {}", err.message());
            assert!(err.message().contains(why), "{backend:?}: {}", err.message());
        }

        // Without a timeout a heartbeat is welcome but asks for nothing.
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let mut c = ActivationServiceClient::new(app.channel().await);
        c.activate(activate_by_key(&key, "m1")).await.unwrap();
        let beat = c.heartbeat(heartbeat_of(&key, "m1")).await.unwrap().into_inner();
        assert_eq!((beat.heartbeat_timeout, beat.heartbeat_interval, beat.deactivated_after), (None, None, None));
        let unknown = c.heartbeat(heartbeat_of(&key, "never-activated")).await.unwrap_err();
        assert_eq!((unknown.code(), reason(&unknown)), (Code::NotFound, "NOT_ACTIVATED".into()), "{backend:?}");

        let set =
            |timeout| acc::SetHeartbeatTimeoutRequest { license_id: license_id.clone(), heartbeat_timeout: timeout };
        let changed = admin.set_heartbeat_timeout(admin_req(set(seconds(600)))).await.unwrap().into_inner();
        assert_eq!(changed.license.unwrap().heartbeat_timeout, seconds(600), "{backend:?}");
        let beat = c.heartbeat(heartbeat_of(&key, "m1")).await.unwrap().into_inner();
        assert_eq!(beat.heartbeat_interval, seconds(200), "{backend:?}: the change reached the Activation service");
        let err = admin.set_heartbeat_timeout(admin_req(set(seconds(30)))).await.unwrap_err();
        assert!(err.message().starts_with("heartbeat_timeout: must be between 60 s"), "{backend:?}: {}", err.message());
        assert_eq!(get_license(&app, &license_id).await.heartbeat_timeout, seconds(600), "a refusal changes nothing");
        admin.set_heartbeat_timeout(admin_req(set(None))).await.unwrap();
        assert_eq!(get_license(&app, &license_id).await.heartbeat_timeout, None, "{backend:?}");
        let audit = admin
            .list_audit_events(admin_req(acc::ListAuditEventsRequest { subject: license_id.clone(), page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert_eq!(audit.iter().filter(|e| e.action == "license.heartbeat_timeout_changed").count(), 2, "{backend:?}");
    }
}
