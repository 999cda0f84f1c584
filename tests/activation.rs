//! The Activation service end to end over gRPC, on SQLite and PostgreSQL.

use crate::common::*;
use base64::Engine;
use licensing_domain::certificate::{parse_certificate_file, verify_certificate, CertificatePayload, SignedBlob};
use licensing_domain::clock::Clock;
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind};
use tonic::transport::Channel;
use tonic::Code;

fn fp(machine: &str, mac: &str, disk: &str) -> Vec<FingerprintComponent> {
    [("machine-id", machine), ("disk-serial", disk), ("mac", mac), ("hostname", "ws")]
        .iter()
        .map(|(n, v)| FingerprintComponent { name: n.to_string(), value: v.to_string() })
        .collect()
}

fn by_key(key: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(key.into())) })
}

fn by_password(license_id: &str, password: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials {
        credential: Some(pb::license_credentials::Credential::LicenseIdAndPassword(pb::LicenseIdAndPassword {
            license_id: license_id.into(),
            password: password.into(),
        })),
    })
}

fn by_machine(
    credentials: Option<pb::LicenseCredentials>,
    fingerprint: Vec<FingerprintComponent>,
) -> pb::DeactivateRequest {
    pb::DeactivateRequest {
        target: Some(pb::deactivate_request::Target::LicenseAndMachine(pb::LicenseAndMachine {
            credentials,
            fingerprint,
        })),
    }
}

fn activate_req(
    credentials: Option<pb::LicenseCredentials>,
    fingerprint: Vec<FingerprintComponent>,
) -> pb::ActivateRequest {
    pb::ActivateRequest {
        credentials,
        machine: Some(pb::MachineInfo {
            fingerprint,
            machine_name: "Workstation 7".into(),
            platform: "linux-x86_64".into(),
            product_version: "2.0".into(),
        }),
    }
}

async fn client(app: &TestApp) -> ActivationServiceClient<Channel> {
    ActivationServiceClient::new(app.channel().await)
}

async fn verifying_key(app: &TestApp) -> ed25519_dalek::VerifyingKey {
    let key = client(app).await.get_verifying_key(pb::GetVerifyingKeyRequest {}).await.unwrap().into_inner();
    let bytes: [u8; 32] = base64::engine::general_purpose::STANDARD.decode(key.public_key).unwrap().try_into().unwrap();
    ed25519_dalek::VerifyingKey::from_bytes(&bytes).unwrap()
}

fn payload_of(key: &ed25519_dalek::VerifyingKey, cert: &pb::SignedCertificate) -> CertificatePayload {
    let from_file = parse_certificate_file(&cert.certificate_file).unwrap();
    assert_eq!(
        from_file,
        SignedBlob { payload: cert.payload.clone(), signature: cert.signature.clone(), key_id: cert.key_id.clone() }
    );
    verify_certificate(key, &from_file).unwrap()
}

#[tokio::test]
async fn activate_returns_a_certificate_verifiable_offline_and_tamper_evident() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
        let r =
            client(&app).await.activate(activate_req(by_key(&key), fp("m1", "aa", "d1"))).await.unwrap().into_inner();
        assert!(!r.already_activated);
        let activation = r.activation.unwrap();
        assert!(activation.installation_id.starts_with("ins_"));
        let cert = r.certificate.unwrap();
        let public = verifying_key(&app).await;
        let payload = payload_of(&public, &cert);
        assert_eq!(payload.license_id, license_id);
        assert_eq!(payload.installation_id, activation.installation_id);
        assert_eq!(payload.modules, vec!["render".to_string()]);
        assert_eq!(payload.fingerprint.len(), 4);
        assert!(payload.refresh_after_ms <= payload.valid_until_ms && payload.valid_until_ms > payload.issued_at_ms);

        // One changed byte anywhere in the payload: the signature fails.
        let mut bytes = base64::engine::general_purpose::STANDARD.decode(&cert.payload).unwrap();
        bytes[10] ^= 0x01;
        let altered = SignedBlob {
            payload: base64::engine::general_purpose::STANDARD.encode(&bytes),
            signature: cert.signature.clone(),
            key_id: cert.key_id.clone(),
        };
        assert!(verify_certificate(&public, &altered).is_err(), "{backend:?}");
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1);
    }
}

#[tokio::test]
async fn reactivation_is_idempotent_a_new_nic_still_matches_and_a_clone_does_not() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |_| {}).await;
        let mut c = client(&app).await;
        let first = c.activate(activate_req(by_key(&key), fp("m1", "aa", "d1"))).await.unwrap().into_inner();
        let again = c.activate(activate_req(by_key(&key), fp("m1", "aa", "d1"))).await.unwrap().into_inner();
        assert!(again.already_activated);
        assert_eq!(again.activation.unwrap().installation_id, first.activation.as_ref().unwrap().installation_id);
        let new_nic = c.activate(activate_req(by_key(&key), fp("m1", "bb", "d1"))).await.unwrap().into_inner();
        assert!(new_nic.already_activated, "{backend:?}: a replaced NIC must not burn an activation");
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1);
        let clone = c.activate(activate_req(by_key(&key), fp("m1", "cc", "d9"))).await.unwrap().into_inner();
        assert!(!clone.already_activated, "a clone sharing half the components is another machine");
        assert_eq!(get_license(&app, &license_id).await.activations_used, 2);
    }
}

#[tokio::test]
async fn racing_activations_of_a_hot_license_end_with_exactly_the_allowed_number() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        const SEATS: i32 = 5;
        const MACHINES: usize = 40;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, SEATS, |_| {}).await;
        let channel = app.channel().await;
        let tasks: Vec<_> = (0..MACHINES)
            .map(|i| {
                let mut c = ActivationServiceClient::new(channel.clone());
                let key = key.clone();
                tokio::spawn(async move {
                    c.activate(activate_req(by_key(&key), fp(&format!("m{i}"), &format!("mac{i}"), &format!("d{i}"))))
                        .await
                })
            })
            .collect();
        let mut ok = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e.code(), Code::ResourceExhausted, "{backend:?}: {}", e.message());
                    assert_eq!(reason(&e), "ACTIVATION_LIMIT_REACHED");
                    assert!(e.message().contains("deactivate") && e.message().contains("vendor"), "{}", e.message());
                }
            }
        }
        assert_eq!(ok, SEATS as usize, "{backend:?}");
        assert_eq!(get_license(&app, &license_id).await.activations_used, SEATS);
    }
}

#[tokio::test]
async fn deactivation_frees_the_seat_and_its_limit_is_enforced() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) =
            issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| r.allowed_deactivations = 2).await;
        let mut c = client(&app).await;
        // Return by key + fingerprint.
        c.activate(activate_req(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
        let err = c.activate(activate_req(by_key(&key), fp("m2", "b", "e"))).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let d = c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await.unwrap().into_inner();
        assert_eq!(d.deactivations_left, 1);
        assert!(d.activation.unwrap().deactivated_at.is_some());
        // Return by Installation ID.
        let a =
            c.activate(activate_req(by_key(&key), fp("m2", "b", "e"))).await.unwrap().into_inner().activation.unwrap();
        let d = c
            .deactivate(pb::DeactivateRequest {
                target: Some(pb::deactivate_request::Target::InstallationId(a.installation_id.clone())),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.deactivations_left, 0);
        let again = c
            .deactivate(pb::DeactivateRequest {
                target: Some(pb::deactivate_request::Target::InstallationId(a.installation_id)),
            })
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::NotFound);
        // Out of deactivations: the seat stays taken and the error points to the vendor.
        c.activate(activate_req(by_key(&key), fp("m3", "c", "f"))).await.unwrap();
        let err = c.deactivate(by_machine(by_key(&key), fp("m3", "c", "f"))).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::ResourceExhausted, "DEACTIVATION_LIMIT_REACHED".into()),
            "{backend:?}"
        );
        assert!(err.message().contains("vendor"));
        let l = get_license(&app, &license_id).await;
        assert_eq!((l.activations_used, l.deactivations_used), (1, 2));
        // Not activated on this machine.
        let err = c.deactivate(by_machine(by_key(&key), fp("zz", "zz", "zz"))).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
}

#[tokio::test]
async fn an_expired_license_cannot_be_deactivated_from_the_product() {
    let clock = licensing_domain::clock::ManualClock::new(licensing_domain::clock::SystemClock.now());
    let app = spawn_app_with_clock(Backend::Sqlite, clock.clone()).await;
    let f = fixture(&app).await;
    let (_, key, _) =
        issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| r.expires_at = ts(now_s() + 86_400)).await;
    let mut c = client(&app).await;
    c.activate(activate_req(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
    clock.advance(2 * licensing_domain::clock::DAY);
    let err = c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "EXPIRED".into()));
}

async fn validate(
    c: &mut ActivationServiceClient<Channel>,
    credentials: Option<pb::LicenseCredentials>,
    fingerprint: Vec<FingerprintComponent>,
    modules: &[&str],
    version: &str,
) -> pb::ValidateResponse {
    c.validate(pb::ValidateRequest {
        credentials,
        fingerprint,
        modules: modules.iter().map(|m| m.to_string()).collect(),
        product_version: version.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn validate_answers_one_precise_code() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| {
            r.valid_from = ts(now_s() - 500 * 86_400);
            r.upgrades_until = ts(now_s() - 100 * 86_400);
        })
        .await;
        let mut c = client(&app).await;
        let machine = fp("m1", "a", "d");
        c.activate(activate_req(by_key(&key), machine.clone())).await.unwrap();

        let v = validate(&mut c, by_key(&key), machine.clone(), &["render"], "1.0").await;
        assert!(v.valid, "{backend:?} {v:?}");
        assert_eq!(v.code, V::Valid as i32);
        assert!(v.certificate.is_some());
        let v = validate(&mut c, by_key(&key), machine.clone(), &["export"], "").await;
        assert_eq!((v.valid, v.code), (false, V::ModuleNotLicensed as i32));
        assert!(v.detail.contains("export"));
        let v = validate(&mut c, by_key(&key), machine.clone(), &[], "2.0").await;
        assert_eq!(v.code, V::VersionNotCovered as i32, "2.0 was released after the upgrade period");
        let v = validate(&mut c, by_key(&key), fp("other", "x", "y"), &[], "").await;
        assert_eq!(v.code, V::NotActivated as i32);
        let v = validate(&mut c, by_key(&key), fp("m1", "x", "y"), &[], "").await;
        assert_eq!(v.code, V::FingerprintMismatch as i32);
        let unknown = licensing_domain::license_key::LicenseKey::generate().to_string();
        let v = validate(&mut c, by_key(&unknown), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::NotFound as i32);

        let mut admin = app.admin().await;
        admin
            .suspend_license(admin_req(admin_pb::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        let v = validate(&mut c, by_key(&key), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::Suspended as i32);
        admin
            .reinstate_license(admin_req(admin_pb::ReinstateLicenseRequest { license_id: license_id.clone() }))
            .await
            .unwrap();

        let (_, future_key, _) =
            issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| r.valid_from = ts(now_s() + 86_400)).await;
        let v = validate(&mut c, by_key(&future_key), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::NotYetValid as i32);
        let (_, expired_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.valid_from = ts(now_s() - 100);
            r.expires_at = ts(now_s() - 50);
        })
        .await;
        let v = validate(&mut c, by_key(&expired_key), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::Expired as i32);
        // Cloud licenses validate by key alone.
        let (_, cloud_key, _) = issue_license(&app, &f, LicenseKind::Cloud, 0, |_| {}).await;
        let v = validate(&mut c, by_key(&cloud_key), vec![], &["render"], "").await;
        assert_eq!((v.valid, v.code), (true, V::Valid as i32));
        let (_, floating_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
        let v = validate(&mut c, by_key(&floating_key), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::WrongKind as i32);
    }
}

#[tokio::test]
async fn a_validation_sees_each_change_to_the_machines_of_its_license_at_once() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (_, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| r.allowed_deactivations = 5).await;
        let mut c = client(&app).await;
        c.activate(activate_req(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
        let v = validate(&mut c, by_key(&key), fp("m1", "a", "d"), &[], "").await;
        assert_eq!(v.code, V::Valid as i32, "{backend:?} {v:?}");
        // The NIC changed and the product activated again: the stored fingerprint follows, so a
        // later disk change still matches (it shares too little with the first fingerprint).
        c.activate(activate_req(by_key(&key), fp("m1", "b", "d"))).await.unwrap();
        let v = validate(&mut c, by_key(&key), fp("m1", "b", "e"), &[], "").await;
        assert_eq!(v.code, V::Valid as i32, "matched against the fingerprint stored last: {backend:?} {v:?}");
        c.deactivate(by_machine(by_key(&key), fp("m1", "b", "d"))).await.unwrap();
        let v = validate(&mut c, by_key(&key), fp("m1", "b", "d"), &[], "").await;
        assert_eq!(v.code, V::NotActivated as i32, "validated right after its deactivation: {backend:?}");
        assert!(v.certificate.is_none());
        c.activate(activate_req(by_key(&key), fp("m1", "b", "d"))).await.unwrap();
        let v = validate(&mut c, by_key(&key), fp("m1", "b", "d"), &[], "").await;
        assert_eq!(v.code, V::Valid as i32, "validated right after its new activation: {backend:?}");
    }
}

/// Validations are served from a cache in each server process; a deactivation made through
/// another replica reaches it by PostgreSQL NOTIFY, well before the cache's 10 s age limit.
#[tokio::test]
async fn a_deactivation_through_one_replica_reaches_validations_on_another() {
    use pb::ValidationCode as V;
    if !postgres_available().await {
        return;
    }
    let one = spawn_app(Backend::Postgres).await;
    // The same database and key files: a second replica of the same deployment.
    let other = spawn_with_env(Backend::Postgres, tempfile::tempdir().unwrap(), one.env.clone()).await;
    let f = fixture(&one).await;
    let (_, key, _) = issue_license(&one, &f, LicenseKind::NodeLocked, 1, |r| r.allowed_deactivations = 5).await;
    let (mut on_one, mut on_other) = (client(&one).await, client(&other).await);
    let machine = fp("m1", "a", "d");
    let watcher = on_other.clone();
    let within_5_s = |wanted: V| {
        let mut on_other = watcher.clone();
        let (key, machine) = (key.clone(), machine.clone());
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                let v = validate(&mut on_other, by_key(&key), machine.clone(), &[], "").await;
                if v.code == wanted as i32 {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "the other replica still answers {v:?}, not {wanted:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    for _ in 0..2 {
        on_one.activate(activate_req(by_key(&key), machine.clone())).await.unwrap();
        within_5_s(V::Valid).await;
        let v = validate(&mut on_other, by_key(&key), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::Valid as i32, "kept");
        on_one.deactivate(by_machine(by_key(&key), machine.clone())).await.unwrap();
        within_5_s(V::NotActivated).await;
    }
}

#[tokio::test]
async fn vendor_changes_reach_the_product_by_refresh_and_by_watch() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let mut c = client(&app).await;
        let machine = fp("m1", "a", "d");
        c.activate(activate_req(by_key(&key), machine.clone())).await.unwrap();
        let public = verifying_key(&app).await;

        let mut watch = c
            .watch_license(pb::WatchLicenseRequest { credentials: by_key(&key), fingerprint: machine.clone() })
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(payload_of(&public, first.certificate.as_ref().unwrap()).modules, vec!["render".to_string()]);

        let mut admin = app.admin().await;
        admin
            .add_license_modules(admin_req(admin_pb::AddLicenseModulesRequest {
                license_id: license_id.clone(),
                modules: vec!["export".into()],
                payment: None,
            }))
            .await
            .unwrap();
        let update = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
            .await
            .expect("an update")
            .unwrap()
            .unwrap();
        assert_eq!(
            payload_of(&public, update.certificate.as_ref().unwrap()).modules,
            vec!["render".to_string(), "export".to_string()],
            "{backend:?}"
        );

        let refreshed = c
            .refresh_certificate(pb::RefreshCertificateRequest {
                credentials: by_key(&key),
                fingerprint: machine.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(payload_of(&public, refreshed.certificate.as_ref().unwrap()).modules.len(), 2);

        admin
            .suspend_license(admin_req(admin_pb::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        let suspended = tokio::time::timeout(std::time::Duration::from_secs(5), watch.message())
            .await
            .expect("an update")
            .unwrap()
            .unwrap();
        assert!(suspended.certificate.is_none(), "no certificate while suspended");
        assert_eq!(suspended.license.unwrap().status, licensing_proto::common::v1::LicenseStatus::Suspended as i32);
    }
}

#[tokio::test]
async fn offline_activation_round_trip_with_the_same_limits() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let machine = licensing_activation::service::Machine {
            fingerprint: vec![licensing_domain::fingerprint::Component {
                name: "machine-id".into(),
                value: "airgap-1".into(),
            }],
            machine_name: "Lab PC".into(),
            platform: "windows-x86_64".into(),
            product_version: "1.0".into(),
        };
        let text = licensing_activation::Activations::offline_request(&key, &machine, 0);
        let mut c = client(&app).await;
        let r = c
            .activate_offline(pb::ActivateOfflineRequest { activation_request: text.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.activation.as_ref().unwrap().offline);
        let payload = payload_of(&verifying_key(&app).await, r.certificate.as_ref().unwrap());
        assert_eq!(payload.license_id, license_id);
        let again = c
            .activate_offline(pb::ActivateOfflineRequest { activation_request: text.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(again.already_activated, "{backend:?}");
        let other = licensing_activation::service::Machine {
            fingerprint: vec![licensing_domain::fingerprint::Component {
                name: "machine-id".into(),
                value: "airgap-2".into(),
            }],
            ..machine.clone()
        };
        let err = c
            .activate_offline(pb::ActivateOfflineRequest {
                activation_request: licensing_activation::Activations::offline_request(&key, &other, 0),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        let typo = text.replacen('A', "B", 1);
        let err = c.activate_offline(pb::ActivateOfflineRequest { activation_request: typo }).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, "OFFLINE_REQUEST_INVALID".into()));
        assert_eq!(get_license(&app, &license_id).await.activations_used, 1);
    }
}

#[tokio::test]
async fn passwords_and_history() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, _key, activation_password) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |_| {}).await;
        let mut c = client(&app).await;
        c.activate(activate_req(by_password(&license_id, &activation_password), fp("m1", "a", "d"))).await.unwrap();
        c.activate(activate_req(by_password(&license_id, &activation_password.to_lowercase()), fp("m1", "a", "d")))
            .await
            .unwrap();
        c.activate(activate_req(by_password(&license_id, &f.customer_password), fp("m2", "b", "e"))).await.unwrap();
        let err = c
            .activate(activate_req(by_password(&license_id, "wrong password!"), fp("m3", "c", "f")))
            .await
            .unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::PermissionDenied, "WRONG_ACTIVATION_PASSWORD".into()),
            "{backend:?}"
        );
        assert_eq!(get_license(&app, &license_id).await.activations_used, 2);
        c.refresh_certificate(pb::RefreshCertificateRequest {
            credentials: by_password(&license_id, &activation_password),
            fingerprint: fp("m1", "a", "d"),
        })
        .await
        .unwrap();
        c.deactivate(by_machine(by_password(&license_id, &activation_password), fp("m2", "b", "e"))).await.unwrap();
        // The history the portal shows, read straight from the store once the server stopped.
        let (dir, env) = app.stop().await;
        let store: std::sync::Arc<dyn licensing_domain::store::ActivationStore> =
            std::sync::Arc::new(if backend == Backend::Sqlite {
                licensing_store::SqlStore::open_sqlite(&dir.path().join(licensing::DATABASE_FILE)).await.unwrap()
            } else {
                licensing_store::SqlStore::connect_postgres(&env["LICENSING_DATABASE_URL"], &Default::default())
                    .await
                    .unwrap()
            });
        let actions: Vec<String> =
            store.list_activation_events(&license_id).await.unwrap().into_iter().map(|e| e.action).collect();
        assert_eq!(actions, ["activate", "activate", "activate", "refresh", "deactivate"], "{backend:?}");
    }
}

#[tokio::test]
async fn bad_input_gets_its_own_status_and_changes_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
        let mut c = client(&app).await;
        let good = fp("m1", "a", "d");
        let mut bad_check = key.clone();
        let last = bad_check.pop().unwrap();
        bad_check.push(if last == '0' { '1' } else { '0' });
        let many: Vec<FingerprintComponent> =
            (0..40).map(|i| FingerprintComponent { name: "mac".into(), value: format!("{i}") }).collect();
        let cases: Vec<(pb::ActivateRequest, Code, &str)> = vec![
            (activate_req(by_key("ABCDE-12345"), good.clone()), Code::InvalidArgument, "LICENSE_KEY_MALFORMED"),
            (activate_req(by_key(&bad_check), good.clone()), Code::InvalidArgument, "LICENSE_KEY_MALFORMED"),
            (activate_req(by_key(&key), vec![]), Code::InvalidArgument, "FINGERPRINT_INVALID"),
            (activate_req(by_key(&key), many), Code::InvalidArgument, "FINGERPRINT_INVALID"),
            (
                activate_req(
                    by_key(&key),
                    vec![FingerprintComponent { name: "favourite-colour".into(), value: "blue".into() }],
                ),
                Code::InvalidArgument,
                "FINGERPRINT_INVALID",
            ),
            (
                activate_req(
                    by_key(&key),
                    vec![FingerprintComponent { name: "mac".into(), value: "x".repeat(10_000) }],
                ),
                Code::InvalidArgument,
                "FINGERPRINT_INVALID",
            ),
            (activate_req(None, good.clone()), Code::InvalidArgument, "CREDENTIALS_MISSING"),
            (
                pb::ActivateRequest { credentials: by_key(&key), machine: None },
                Code::InvalidArgument,
                "INVALID_ARGUMENT",
            ),
            (activate_req(by_password("not-an-id", "x"), good.clone()), Code::InvalidArgument, "LICENSE_ID_MALFORMED"),
            (activate_req(by_password("lic_0000000000000000", "x"), good.clone()), Code::NotFound, "LICENSE_NOT_FOUND"),
            (
                activate_req(by_key(&licensing_domain::license_key::LicenseKey::generate().to_string()), good.clone()),
                Code::NotFound,
                "LICENSE_NOT_FOUND",
            ),
        ];
        for (request, code, why) in cases {
            let err = c.activate(request).await.unwrap_err();
            assert_eq!((err.code(), reason(&err)), (code, why.to_owned()), "{backend:?}: {}", err.message());
        }
        let mut bad_version = activate_req(by_key(&key), good.clone());
        bad_version.machine.as_mut().unwrap().product_version = "latest".into();
        let err = c.activate(bad_version).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("product_version"), "{}", err.message());
        let err = c
            .validate(pb::ValidateRequest {
                credentials: by_key(&key),
                fingerprint: good.clone(),
                modules: vec![],
                product_version: "1.x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);

        let mut admin = app.admin().await;
        admin
            .suspend_license(admin_req(admin_pb::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        let err = c.activate(activate_req(by_key(&key), good.clone())).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "SUSPENDED".into()));
        let l = get_license(&app, &license_id).await;
        assert_eq!((l.activations_used, l.deactivations_used), (0, 0), "{backend:?}: nothing changed");
    }
}

/// Wrong activation passwords slow down the address that sends them; the license's owner, at
/// another address, is never held back by them (no lockout, OWASP).
#[tokio::test]
async fn wrong_activation_passwords_slow_the_guesser_never_the_owner() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
    let mut c = client(&app).await;
    // A few wrong passwords are answered as such; then the guesser waits, even with the right one.
    for _ in 0..5 {
        let err = c
            .activate(activate_req(by_password(&license_id, "guess-guess-guess"), fp("m1", "a", "d")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
    }
    let err = c.activate(activate_req(by_password(&license_id, &password), fp("m1", "a", "d"))).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::ResourceExhausted, "TOO_MANY_FAILURES".into()));
    assert!(err.metadata().get("retry-after").is_some());
    // The license key still works, and nothing was activated by the guesses.
    assert_eq!(get_license(&app, &license_id).await.activations_used, 0);
    c.activate(activate_req(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
    // The owner types the right activation password at another address: it works at once.
    let mut owner = ActivationServiceClient::new(app.channel_from("127.0.0.2".parse().unwrap()).await);
    owner
        .activate(activate_req(by_password(&license_id, &password), fp("m2", "b", "e")))
        .await
        .expect("the owner is not locked out");
}
