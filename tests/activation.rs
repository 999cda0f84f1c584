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

fn by_installation(credentials: Option<pb::LicenseCredentials>, installation_id: &str) -> pb::DeactivateRequest {
    pb::DeactivateRequest {
        target: Some(pb::deactivate_request::Target::LicenseAndInstallation(pb::LicenseAndInstallation {
            credentials,
            installation_id: installation_id.into(),
        })),
    }
}

/// A deactivation naming the installation by its ID alone, with `session` (if any) as its
/// bearer token.
fn by_installation_id(installation_id: &str, session: Option<&str>) -> tonic::Request<pb::DeactivateRequest> {
    let request =
        pb::DeactivateRequest { target: Some(pb::deactivate_request::Target::InstallationId(installation_id.into())) };
    match session {
        Some(token) => with_token(token, request),
        None => tonic::Request::new(request),
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

fn activate_on_version(
    credentials: Option<pb::LicenseCredentials>,
    fingerprint: Vec<FingerprintComponent>,
    version: &str,
) -> pb::ActivateRequest {
    let mut request = activate_req(credentials, fingerprint);
    request.machine.as_mut().unwrap().product_version = version.into();
    request
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
        // Return by Installation ID, with the license's credentials.
        let a =
            c.activate(activate_req(by_key(&key), fp("m2", "b", "e"))).await.unwrap().into_inner().activation.unwrap();
        let d = c.deactivate(by_installation(by_key(&key), &a.installation_id)).await.unwrap().into_inner();
        assert_eq!(d.deactivations_left, 0);
        let again = c.deactivate(by_installation(by_key(&key), &a.installation_id)).await.unwrap_err();
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

/// A product cannot return an expired license's activation; it says the portal can, and the
/// portal does.
#[tokio::test]
async fn an_expired_license_cannot_be_deactivated_from_the_product_but_in_the_portal() {
    for backend in backends().await {
        let clock = licensing_domain::clock::ManualClock::new(licensing_domain::clock::SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.expires_at = ts(now_s() + 86_400);
            r.associate = true;
        })
        .await;
        let mut c = client(&app).await;
        let installation_id = c
            .activate(activate_req(by_key(&key), fp("m1", "a", "d")))
            .await
            .unwrap()
            .into_inner()
            .activation
            .unwrap()
            .installation_id;
        clock.advance(2 * licensing_domain::clock::DAY);
        let err = c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "EXPIRED".into()), "{backend:?}");
        assert!(err.message().contains("customer portal"), "{backend:?}: {}", err.message());
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: nothing was returned");
        // What the message says works.
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        portal(&app)
            .await
            .deactivate_installation(with_token(
                &session,
                admin_pb::DeactivateInstallationRequest { license_id: license_id.clone(), installation_id },
            ))
            .await
            .unwrap();
        assert_eq!(counts(&app, &license_id).await.0, 0, "{backend:?}");
    }
}

/// The reason a call was refused for.
fn reason_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> String {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(status) => reason(&status),
    }
}

/// (activations used, deactivations used) of a license.
async fn counts(app: &TestApp, license_id: &str) -> (i32, i32) {
    let l = get_license(app, license_id).await;
    (l.activations_used, l.deactivations_used)
}

/// The history as the license's owner sees it in the portal (newest first): (action, outcome).
async fn portal_history(app: &TestApp, session: &str, license_id: &str) -> Vec<(String, String)> {
    portal(app)
        .await
        .get_my_license(with_token(
            session,
            admin_pb::GetMyLicenseRequest { license_id: license_id.into(), ..Default::default() },
        ))
        .await
        .unwrap()
        .into_inner()
        .history
        .into_iter()
        .map(|h| (h.action, h.outcome))
        .collect()
}

fn lines(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(a, o)| (a.to_string(), o.to_string())).collect()
}

/// The Installation ID is printed in the certificate file and shown in the portal: naming it
/// proves nothing. Only the license's credentials or its owner's portal session free it.
#[tokio::test]
async fn an_installation_id_alone_frees_nothing() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, password) = issue_license(&app, &f, LicenseKind::NodeLocked, 4, |r| {
            r.associate = true;
            r.allowed_deactivations = 10;
        })
        .await;
        let (_, other_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
        let stranger = create_customer(
            &app,
            "Stranger Ltd",
            &format!("{}@stranger.example", licensing_domain::ids::new_id("m").to_lowercase()),
        )
        .await;
        let mut c = client(&app).await;
        let mut installations = vec![];
        for m in ["m1", "m2", "m3"] {
            let a = c.activate(activate_req(by_key(&key), fp(m, m, m))).await.unwrap().into_inner();
            installations.push(a.activation.unwrap().installation_id);
        }

        let err = c.deactivate(by_installation_id(&installations[0], None)).await.unwrap_err();
        assert_eq!(
            (err.code(), reason(&err)),
            (Code::Unauthenticated, "INSTALLATION_PROOF_MISSING".into()),
            "{backend:?}"
        );
        assert!(
            err.message().contains("license_and_installation") && err.message().contains("Bearer ses_"),
            "says what to send: {}",
            err.message()
        );
        for token in [ADMIN_TOKEN, "ses_WRONG00000000000000000000000000"] {
            let err = c.deactivate(by_installation_id(&installations[0], Some(token))).await.unwrap_err();
            assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "SESSION_INVALID".into()), "{token}");
        }
        let strangers_session = login(&app, &stranger, CUSTOMER_PASSWORD).await.unwrap();
        let err = c.deactivate(by_installation_id(&installations[0], Some(&strangers_session))).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::NotFound, "INSTALLATION_NOT_FOUND".into()), "{backend:?}");
        let err = c.deactivate(by_installation(by_key(&other_key), &installations[0])).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::NotFound, "INSTALLATION_NOT_FOUND".into()), "{backend:?}");
        let err = c
            .deactivate(by_installation(by_password(&license_id, "not the password"), &installations[0]))
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::PermissionDenied, "WRONG_ACTIVATION_PASSWORD".into()));
        let err = c.deactivate(by_installation(None, &installations[0])).await.unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::InvalidArgument, "CREDENTIALS_MISSING".into()));
        assert_eq!(counts(&app, &license_id).await, (3, 0), "{backend:?}: no proof freed anything");
        let v = validate(&mut c, by_key(&key), fp("m1", "m1", "m1"), &[], "").await;
        assert_eq!(v.code, V::Valid as i32, "{backend:?}: the machine is still activated");

        // The proofs: the license's key, its License ID and password, its owner's session.
        let owner = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        c.deactivate(by_installation(by_key(&key), &installations[0])).await.unwrap();
        c.deactivate(by_installation(by_password(&license_id, &password), &installations[1])).await.unwrap();
        let d = c.deactivate(by_installation_id(&installations[2], Some(&owner))).await.unwrap().into_inner();
        assert_eq!(d.activation.unwrap().installation_id, installations[2]);
        assert_eq!(counts(&app, &license_id).await, (0, 3), "{backend:?}");
    }
}

/// Activation applies the upgrade period as validation does: a version released after it
/// ended is refused with the same reason and message, and consumes nothing; online and offline.
#[tokio::test]
async fn activation_refuses_a_version_released_after_the_upgrade_period() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        // Version 2.0 came out 10 days ago; the upgrade period ended 100 days ago.
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |r| {
            r.valid_from = ts(now_s() - 500 * 86_400);
            r.upgrades_until = ts(now_s() - 100 * 86_400);
        })
        .await;
        let mut c = client(&app).await;
        c.activate(activate_on_version(by_key(&key), fp("m1", "a", "d"), "1.0")).await.unwrap();
        let refused = c.activate(activate_on_version(by_key(&key), fp("m2", "b", "e"), "2.0")).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::FailedPrecondition, "VERSION_NOT_COVERED".into()),
            "{backend:?}"
        );
        let v = validate(&mut c, by_key(&key), fp("m1", "a", "d"), &[], "2.0").await;
        assert_eq!((v.code, v.detail.as_str()), (V::VersionNotCovered as i32, refused.message()), "one voice");
        // The machine already activated on 1.0 cannot move to 2.0 by activating again either.
        let err = c.activate(activate_on_version(by_key(&key), fp("m1", "a", "d"), "2.0")).await.unwrap_err();
        assert_eq!(reason(&err), "VERSION_NOT_COVERED");
        let err = c.activate(activate_on_version(by_key(&key), fp("m3", "c", "f"), "7.0")).await.unwrap_err();
        assert_eq!(reason(&err), "VERSION_NOT_COVERED");
        assert!(err.message().contains("not a released version"), "{}", err.message());
        let machine = licensing_activation::service::Machine {
            fingerprint: vec![licensing_domain::fingerprint::Component {
                name: "machine-id".into(),
                value: "airgap-1".into(),
            }],
            product_version: "2.0".into(),
            ..Default::default()
        };
        let err = c
            .activate_offline(pb::ActivateOfflineRequest {
                activation_request: licensing_activation::Activations::offline_request(&key, &machine, 0),
            })
            .await
            .unwrap_err();
        assert_eq!((err.code(), reason(&err)), (Code::FailedPrecondition, "VERSION_NOT_COVERED".into()));
        assert_eq!(counts(&app, &license_id).await, (1, 0), "{backend:?}: the refusals consumed nothing");

        // Maintenance renewed past 2.0's release: now it activates.
        app.admin()
            .await
            .extend_upgrade_period(admin_req(admin_pb::ExtendUpgradePeriodRequest {
                license_id: license_id.clone(),
                upgrades_until: ts(now_s()),
                payment: None,
            }))
            .await
            .unwrap();
        c.activate(activate_on_version(by_key(&key), fp("m2", "b", "e"), "2.0")).await.unwrap();
        assert_eq!(counts(&app, &license_id).await, (2, 0), "{backend:?}");
    }
}

/// Every refusal on an identified license is a line of its history, with the reason as its
/// outcome, and consumes nothing; the owner sees them in the portal.
#[tokio::test]
async fn refusals_are_in_the_activation_history_and_consume_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.associate = true;
            r.allowed_deactivations = 1;
            r.valid_from = ts(now_s() - 500 * 86_400);
            r.upgrades_until = ts(now_s() - 100 * 86_400);
        })
        .await;
        let mut c = client(&app).await;
        let m1 = || activate_on_version(by_key(&key), fp("m1", "a", "d"), "1.0");
        c.activate(m1()).await.unwrap();
        let m2 = activate_on_version(by_key(&key), fp("m2", "b", "e"), "1.0");
        assert_eq!(reason_of(c.activate(m2).await), "ACTIVATION_LIMIT_REACHED");
        let wrong = activate_on_version(by_password(&license_id, "wrong password!"), fp("m2", "b", "e"), "1.0");
        assert_eq!(reason_of(c.activate(wrong).await), "WRONG_ACTIVATION_PASSWORD");
        let newer = activate_on_version(by_key(&key), fp("m1", "a", "d"), "2.0");
        assert_eq!(reason_of(c.activate(newer).await), "VERSION_NOT_COVERED");
        c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
        c.activate(m1()).await.unwrap();
        assert_eq!(
            reason_of(c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await),
            "DEACTIVATION_LIMIT_REACHED"
        );
        let wrong = by_machine(by_password(&license_id, "wrong password!"), fp("m1", "a", "d"));
        assert_eq!(reason_of(c.deactivate(wrong).await), "WRONG_ACTIVATION_PASSWORD");
        let mut admin = app.admin().await;
        admin
            .suspend_license(admin_req(admin_pb::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: String::new(),
            }))
            .await
            .unwrap();
        assert_eq!(reason_of(c.activate(m1()).await), "SUSPENDED");
        assert_eq!(reason_of(c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await), "SUSPENDED");
        assert_eq!(counts(&app, &license_id).await, (1, 1), "{backend:?}: refusals consumed nothing");

        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let mut history = portal_history(&app, &session, &license_id).await;
        history.reverse();
        assert_eq!(
            history,
            lines(&[
                ("activate", "ok"),
                ("activate", "ACTIVATION_LIMIT_REACHED"),
                ("activate", "WRONG_ACTIVATION_PASSWORD"),
                ("activate", "VERSION_NOT_COVERED"),
                ("deactivate", "ok"),
                ("activate", "ok"),
                ("deactivate", "DEACTIVATION_LIMIT_REACHED"),
                ("deactivate", "WRONG_ACTIVATION_PASSWORD"),
                ("activate", "SUSPENDED"),
                ("deactivate", "SUSPENDED"),
            ]),
            "{backend:?}"
        );
        // The refused deactivation names the installation it could not free.
        let full = admin
            .get_activation_history(admin_req(admin_pb::GetActivationHistoryRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner();
        let live = full.installations.iter().find(|i| i.active).unwrap();
        let limited = full.history.iter().find(|h| h.outcome == "DEACTIVATION_LIMIT_REACHED").unwrap();
        assert_eq!(limited.installation_id, live.installation_id);
        let refused_activation = full.history.iter().find(|h| h.outcome == "ACTIVATION_LIMIT_REACHED").unwrap();
        assert_eq!(
            (refused_activation.installation_id.as_str(), refused_activation.machine_name.as_str()),
            ("", "Workstation 7")
        );
    }
}

/// A refusal writes a history line only for a call the per-license rate limit let through, so
/// refused calls cannot grow the history faster than that limit.
#[tokio::test]
async fn refusals_grow_the_history_no_faster_than_the_per_license_rate_limit() {
    for backend in backends().await {
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = test_env(backend, data_dir.path()).await;
        env.insert("LICENSING_RATE_ACTIVATE_PER_LICENSE".into(), "4/h".into());
        let app = spawn_with_env(backend, data_dir, env).await;
        let f = fixture(&app).await;
        let (license_id, key, _) =
            issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| r.allowed_deactivations = 0).await;
        let mut c = client(&app).await;
        c.activate(activate_req(by_key(&key), fp("m1", "a", "d"))).await.unwrap();
        let mut rate_limited = 0;
        for i in 0..10 {
            let full = c.activate(activate_req(by_key(&key), fp(&format!("n{i}"), "x", "y"))).await.unwrap_err();
            let spent = c.deactivate(by_machine(by_key(&key), fp("m1", "a", "d"))).await.unwrap_err();
            for refused in [full, spent] {
                match reason(&refused).as_str() {
                    "RATE_LIMITED" => rate_limited += 1,
                    "ACTIVATION_LIMIT_REACHED" | "DEACTIVATION_LIMIT_REACHED" => {}
                    other => panic!("{backend:?}: unexpected {other}"),
                }
            }
        }
        let history = app
            .admin()
            .await
            .get_activation_history(admin_req(admin_pb::GetActivationHistoryRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .history;
        let refusals = history.iter().filter(|h| !h.outcome.starts_with("ok")).count();
        assert_eq!((refusals, rate_limited), (3, 17), "{backend:?}: 4 calls an hour, one of them the activation");
        assert_eq!(counts(&app, &license_id).await, (1, 0));
    }
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
        c.activate(activate_on_version(by_key(&key), machine.clone(), "1.0")).await.unwrap();

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
        let v = validate(&mut c, by_password("lic_0000000000000000", "whatever"), machine.clone(), &[], "").await;
        assert_eq!(v.code, V::NotFound as i32, "an unknown License ID answers like an unknown key: {v:?}");

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
        let lines: Vec<(String, String)> = store
            .list_activation_events(&license_id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.action, e.outcome))
            .collect();
        let expected = [
            ("activate", "ok"),
            ("activate", "ok: already activated"),
            ("activate", "ok"),
            ("activate", "WRONG_ACTIVATION_PASSWORD"),
            ("refresh", "ok"),
            ("deactivate", "ok"),
        ];
        assert_eq!(lines, expected.map(|(a, o)| (a.to_owned(), o.to_owned())), "{backend:?}");
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
    // Each wrong password is in the history; once the guesses are blocked, nothing more is.
    let history = app
        .admin()
        .await
        .get_activation_history(admin_req(admin_pb::GetActivationHistoryRequest { license_id: license_id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .history;
    assert_eq!(history.iter().filter(|h| h.outcome == "WRONG_ACTIVATION_PASSWORD").count(), 5);
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
