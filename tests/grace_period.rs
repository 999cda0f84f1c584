//! Grace periods end to end: a license past its expiry but within its grace period validates as
//! VALID_IN_GRACE with the grace end, its certificate keeps offline use going until then, a
//! renewal inside it is seamless, floating checkouts and heartbeats in grace succeed and say so,
//! and no lease outlives the grace end; past it, EXPIRED.

use crate::common::*;
use licensing_client::node_locked::{NodeLocked, Validity};
use licensing_client::storage::TrustedStorage;
use licensing_client::{Client, ClientError, Credentials, ManualClock};
use licensing_domain::certificate::{parse_certificate_file, verify_certificate, verifying_key_from_base64};
use licensing_domain::clock::{Clock, ManualClock as ServerClock, SystemClock, DAY, HOUR};
use licensing_domain::fingerprint::Component;
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind};
use licensing_proto::seat::v1 as seat_pb;
use std::sync::Arc;
use tonic::Code;

fn days(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: n * 86_400, nanos: 0 })
}

fn seconds(n: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds: n, nanos: 0 })
}

fn millis(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn machine(id: &str) -> Vec<FingerprintComponent> {
    [("machine-id", id), ("disk-serial", "d1"), ("mac", "aa"), ("hostname", "ws")]
        .iter()
        .map(|(n, v)| FingerprintComponent { name: n.to_string(), value: v.to_string() })
        .collect()
}

fn by_key(key: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(key.into())) })
}

async fn validate(app: &TestApp, key: &str, machine_id: &str) -> pb::ValidateResponse {
    let request = pb::ValidateRequest {
        credentials: by_key(key),
        fingerprint: machine(machine_id),
        modules: vec![],
        product_version: String::new(),
    };
    ActivationServiceClient::new(app.channel().await).validate(request).await.unwrap().into_inner()
}

async fn activate(app: &TestApp, key: &str, machine_id: &str) -> Result<pb::ActivateResponse, tonic::Status> {
    let request = pb::ActivateRequest {
        credentials: by_key(key),
        machine: Some(pb::MachineInfo {
            fingerprint: machine(machine_id),
            machine_name: machine_id.into(),
            platform: "linux-x86_64".into(),
            product_version: String::new(),
        }),
    };
    ActivationServiceClient::new(app.channel().await).activate(request).await.map(|r| r.into_inner())
}

/// Node-locked, on both databases, by a server clock the test moves: valid before expiry; in
/// grace after it (valid, VALID_IN_GRACE, the end date in the detail and in `grace_ends_at`, a
/// certificate for offline use until the grace end, activation still allowed); VALID again
/// after a renewal made in grace; and EXPIRED once a grace period has ended.
#[tokio::test]
async fn a_license_in_grace_validates_in_grace_until_the_end_and_a_renewal_in_grace_makes_it_valid() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let clock = ServerClock::new(SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let start = clock.now();
        let expires_ms = start + DAY;
        let expiry = |r: &mut admin_pb::IssueLicenseRequest, grace| {
            r.expires_at = ts(expires_ms / 1000);
            r.grace_period = grace;
        };
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| expiry(r, days(3))).await;
        let (_, short_key, _) =
            issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| expiry(r, seconds(12 * 3600))).await;
        let grace_end = expires_ms / 1000 * 1000 + 3 * DAY;

        let activated = activate(&app, &key, "m1").await.unwrap();
        let public = verifying_key_from_base64(&app.public_key().await).unwrap();
        let payload = |cert: &pb::SignedCertificate| {
            verify_certificate(&public, &parse_certificate_file(&cert.certificate_file).unwrap()).unwrap()
        };
        let before = payload(activated.certificate.as_ref().unwrap());
        assert_eq!(before.grace_ends_at_ms, Some(grace_end), "{backend:?}: the certificate knows the grace end");
        activate(&app, &short_key, "m1").await.unwrap();
        let v = validate(&app, &key, "m1").await;
        assert_eq!((v.valid, v.code, v.grace_ends_at), (true, V::Valid as i32, None), "{backend:?}: {v:?}");
        let shown = v.license.unwrap();
        assert_eq!((shown.grace_period, millis(shown.grace_ends_at.as_ref())), (days(3), Some(grace_end)));

        clock.advance(2 * DAY);
        let v = validate(&app, &key, "m1").await;
        assert_eq!((v.valid, v.code), (true, V::ValidInGrace as i32), "{backend:?}: {v:?}");
        assert_eq!(millis(v.grace_ends_at.as_ref()), Some(grace_end), "{backend:?}");
        let end_text = licensing_domain::clock::rfc3339(grace_end);
        assert!(v.detail.contains(&end_text) && v.detail.contains("grace period"), "{backend:?}: {}", v.detail);
        let in_grace = payload(v.certificate.as_ref().expect("a certificate in grace"));
        assert!(in_grace.valid_until_ms <= grace_end, "{backend:?}: offline use ends with the grace period");
        assert_eq!(in_grace.in_grace(clock.now()), Some(grace_end), "{backend:?}");
        // Activating another machine in grace is allowed, as validating is (its certificate
        // ends with the grace period too).
        let second = activate(&app, &key, "m2").await.expect("activation in grace");
        assert!(payload(second.certificate.as_ref().unwrap()).valid_until_ms <= grace_end, "{backend:?}");

        // The other license's shorter grace period is over: expired, and the message says so.
        let v = validate(&app, &short_key, "m1").await;
        assert_eq!((v.valid, v.code, v.grace_ends_at), (false, V::Expired as i32, None), "{backend:?}: {v:?}");
        assert!(v.detail.contains("grace period ended at"), "{backend:?}: {}", v.detail);
        let refused = activate(&app, &short_key, "m2").await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused)), (Code::FailedPrecondition, "EXPIRED".into()), "{backend:?}");

        // A renewal inside the grace period: valid again at once, nothing else to do.
        let renewed_to = (clock.now() + 365 * DAY) / 1000;
        app.admin()
            .await
            .renew_license(admin_req(admin_pb::RenewLicenseRequest {
                license_id: license_id.clone(),
                expires_at: ts(renewed_to),
                payment: None,
            }))
            .await
            .unwrap();
        let v = validate(&app, &key, "m1").await;
        assert_eq!((v.valid, v.code, v.grace_ends_at), (true, V::Valid as i32, None), "{backend:?}: {v:?}");
        assert_eq!(payload(v.certificate.as_ref().unwrap()).grace_ends_at_ms, Some(renewed_to * 1000 + 3 * DAY));

        // Without the renewal the grace period would have ended: past it, EXPIRED.
        clock.advance(400 * DAY);
        let v = validate(&app, &key, "m1").await;
        assert_eq!((v.valid, v.code), (false, V::Expired as i32), "{backend:?}: {v:?}");
    }
}

/// The client library, offline: a certificate signed before expiry carries the grace end, so
/// with the server unreachable the product still validates in grace, and knows it is in grace;
/// once the grace period is over, offline use ends too.
#[tokio::test]
async fn offline_validation_in_grace_reports_in_grace_until_the_grace_end() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let expires_s = now_s() + 86_400;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.expires_at = ts(expires_s);
        r.grace_period = days(3);
    })
    .await;
    let clock = ManualClock::new(SystemClock.now());
    let client =
        Client::with_clock(&format!("http://{}", app.addr), &app.public_key().await, Arc::new(clock.clone())).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let this_pc = ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| Component { name: n.to_string(), value: format!("{n}-value") })
        .collect();
    let product = NodeLocked::new(
        client,
        TrustedStorage::new(dir.path().join("license.json")),
        Credentials::LicenseKey(key),
        this_pc,
    );
    let certificate = product.activate("pc", "linux", "1.0").await.unwrap();
    let grace_end = expires_s * 1000 + 3 * DAY;
    assert_eq!(certificate.grace_ends_at_ms, Some(grace_end));
    let online = product.validate(&[], "").await.unwrap();
    assert!(matches!(online, Validity::Online(_)) && product.in_grace(&online).is_none(), "{online:?}");

    app.stop().await;
    clock.set(expires_s * 1000 + 2 * DAY);
    let offline = product.validate(&[], "").await.unwrap();
    assert!(matches!(offline, Validity::Offline(_)), "{offline:?}");
    assert_eq!(product.in_grace(&offline), Some(grace_end), "offline, in grace");
    clock.set(grace_end + HOUR);
    let over = product.validate(&[], "").await;
    assert!(matches!(over, Err(ClientError::OfflinePeriodOver(end)) if end <= grace_end), "{over:?}");
}

/// Floating seats on every lease store: a checkout and a heartbeat in grace succeed and say
/// until when; the lease ends with the grace period however long a TTL was asked; past the
/// grace end a checkout is refused as EXPIRED. A license not in grace says nothing of grace.
#[tokio::test]
async fn a_checkout_in_grace_succeeds_says_so_and_its_lease_ends_with_the_grace_period() {
    for leases in lease_backends().await {
        let app = spawn_seat_app(leases).await;
        let f = fixture(&app).await;
        // Expired a minute ago; the grace period ends 30 s from now.
        let expired_s = now_s() - 60;
        let in_grace = |grace: i64| {
            move |r: &mut admin_pb::IssueLicenseRequest| {
                r.valid_from = ts(expired_s - 2 * 86_400);
                r.expires_at = ts(expired_s);
                r.grace_period = seconds(grace);
            }
        };
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, in_grace(90)).await;
        let (_, over_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, in_grace(30)).await;
        let (_, plain_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |_| {}).await;
        let grace_end = (expired_s + 90) * 1000;
        let checkout = |key: &str| seat_pb::CheckoutRequest {
            credentials: Some(seat_pb::SeatCredentials {
                credential: Some(seat_pb::seat_credentials::Credential::LicenseKey(key.into())),
            }),
            user: "ann".into(),
            host: "ws-1".into(),
            client_instance_id: "c1".into(),
            ttl: seconds(600),
            ..Default::default()
        };
        let mut s = seat_client(&app).await;

        let g = s.checkout(checkout(&key)).await.expect("a checkout in grace").into_inner().grant.unwrap();
        assert_eq!(millis(g.grace_ends_at.as_ref()), Some(grace_end), "{leases:?}: the grant says until when");
        assert_eq!(millis(g.expires_at.as_ref()), Some(grace_end), "{leases:?}: capped at the grace end, not 10 min");
        let listed = live_leases(&app, &license_id).await;
        assert!(listed.iter().all(|l| millis(l.expires_at.as_ref()) <= Some(grace_end)), "{leases:?}: {listed:?}");
        let hb = s
            .heartbeat(seat_pb::HeartbeatRequest {
                license_id: license_id.clone(),
                lease_id: g.lease_id.clone(),
                lease_token: g.lease_token.clone(),
            })
            .await
            .expect("a heartbeat in grace")
            .into_inner();
        assert_eq!(millis(hb.grace_ends_at.as_ref()), Some(grace_end), "{leases:?}");
        assert!(millis(hb.expires_at.as_ref()) <= Some(grace_end), "{leases:?}: {hb:?}");

        let refused = s.checkout(checkout(&over_key)).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused)), (Code::FailedPrecondition, "EXPIRED".into()), "{leases:?}");
        assert!(refused.message().contains("grace period ended"), "{leases:?}: {}", refused.message());

        let plain = s.checkout(checkout(&plain_key)).await.unwrap().into_inner().grant.unwrap();
        assert_eq!(plain.grace_ends_at, None, "{leases:?}: not in grace");
    }
}

/// The vendor sets a grace period at issue or later (audited), within 0 to 365 days; a bad
/// value is INVALID_ARGUMENT naming `grace_period` and changes nothing. A perpetual license may
/// keep one for when a renewal sets an expiry.
#[tokio::test]
async fn the_vendor_sets_a_bounded_grace_period_at_issue_or_later() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let mut admin = app.admin().await;
        let issue = |grace| admin_pb::IssueLicenseRequest {
            product_code: f.product.clone(),
            customer_id: f.customer_id.clone(),
            kind: LicenseKind::NodeLocked as i32,
            seats: 1,
            expires_at: ts(now_s() + 86_400),
            grace_period: grace,
            ..Default::default()
        };
        for bad in [seconds(-1), days(366), Some(prost_types::Duration { seconds: 0, nanos: -5 })] {
            let err = admin.issue_license(admin_req(issue(bad))).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {bad:?}");
            assert!(err.message().contains("grace_period"), "{backend:?}: {}", err.message());
        }
        let issued = admin.issue_license(admin_req(issue(days(7)))).await.unwrap().into_inner().license.unwrap();
        assert_eq!(issued.grace_period, days(7), "{backend:?}");
        assert_eq!(
            millis(issued.grace_ends_at.as_ref()),
            millis(issued.expires_at.as_ref()).map(|e| e + 7 * DAY),
            "{backend:?}"
        );
        let set = |grace| admin_pb::SetLicenseGracePeriodRequest {
            license_id: issued.license_id.clone(),
            grace_period: grace,
        };
        for bad in [seconds(-1), days(366)] {
            let err = admin.set_license_grace_period(admin_req(set(bad))).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}");
            assert!(err.message().contains("grace_period"), "{backend:?}: {}", err.message());
        }
        let changed =
            admin.set_license_grace_period(admin_req(set(days(365)))).await.unwrap().into_inner().license.unwrap();
        assert_eq!(changed.grace_period, days(365), "{backend:?}");
        let removed = admin.set_license_grace_period(admin_req(set(None))).await.unwrap().into_inner().license.unwrap();
        assert_eq!((removed.grace_period, removed.grace_ends_at), (None, removed.expires_at), "{backend:?}");
        let audit = admin
            .list_audit_events(admin_req(admin_pb::ListAuditEventsRequest {
                subject: issued.license_id.clone(),
                page: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        let changes = audit.iter().filter(|e| e.action == "license.grace_period_changed").count();
        assert_eq!(changes, 2, "{backend:?}: refusals are not recorded, changes are");

        let perpetual = admin
            .issue_license(admin_req(admin_pb::IssueLicenseRequest { expires_at: None, ..issue(days(7)) }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!((perpetual.grace_period, perpetual.grace_ends_at), (days(7), None), "{backend:?}");
        let missing = admin
            .set_license_grace_period(admin_req(admin_pb::SetLicenseGracePeriodRequest {
                license_id: "lic_0000000000000000".into(),
                grace_period: days(1),
            }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound, "{backend:?}");
    }
}
