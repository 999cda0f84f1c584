//! Trials end to end over gRPC, on SQLite and PostgreSQL: a machine starts a product's trial
//! without a key, once (a reinstall gets the same trial back, an expired one never restarts),
//! the vendor converts it to a paid license on the same installation and sees the counts; a
//! product offering no trial is refused by name, and trial requests are limited per client.

use crate::common::*;
use licensing_domain::clock::{Clock, ManualClock, SystemClock, DAY};
use licensing_proto::account::v1 as acc;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, LicenseTerms, TermsStart};
use prost_types::Duration;
use tonic::Code;

fn days(n: i64) -> Option<Duration> {
    Some(Duration { seconds: n * 86_400, nanos: 0 })
}

/// A server on `backend` reading `clock`, with `env` (variable, value) set.
async fn spawn(backend: Backend, clock: ManualClock, env: &[(&str, &str)]) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut vars = test_env(backend, dir.path()).await;
    for (var, value) in env {
        vars.insert((*var).to_owned(), (*value).to_owned());
    }
    spawn_with(backend, dir, vars, licensing::Overrides { clock: std::sync::Arc::new(clock), ..test_overrides() }).await
}

fn trial_terms() -> LicenseTerms {
    LicenseTerms {
        kind: LicenseKind::NodeLocked as i32,
        seats: 1,
        validity: days(14),
        start: TermsStart::Issue as i32,
        trial: true,
        ..Default::default()
    }
}

async fn create_policy(app: &TestApp, product: &str, name: &str, terms: LicenseTerms) -> Result<String, tonic::Status> {
    let created = app
        .admin()
        .await
        .create_policy(admin_req(acc::CreatePolicyRequest {
            product_code: product.into(),
            name: name.into(),
            terms: Some(terms),
        }))
        .await?;
    Ok(created.into_inner().policy.unwrap().policy_id)
}

/// A machine's fingerprint: four components, `host` its host name.
fn machine(id: &str, host: &str) -> act::MachineInfo {
    let components = [("machine-id", id), ("disk-serial", id), ("mac", id), ("hostname", host)];
    act::MachineInfo {
        fingerprint: components
            .iter()
            .map(|(n, v)| FingerprintComponent { name: n.to_string(), value: v.to_string() })
            .collect(),
        machine_name: host.into(),
        platform: "linux-x86_64".into(),
        product_version: "1.0".into(),
    }
}

fn trial(product: &str, m: act::MachineInfo) -> act::ActivateTrialRequest {
    act::ActivateTrialRequest { product_code: product.into(), machine: Some(m) }
}

fn validate(key: &str, m: &act::MachineInfo) -> act::ValidateRequest {
    act::ValidateRequest {
        credentials: Some(act::LicenseCredentials {
            credential: Some(act::license_credentials::Credential::LicenseKey(key.into())),
        }),
        fingerprint: m.fingerprint.clone(),
        modules: vec![],
        product_version: String::new(),
    }
}

async fn stats(app: &TestApp, product: &str) -> (i64, i64, i64, i64) {
    let s = app
        .admin()
        .await
        .get_trial_stats(admin_req(acc::GetTrialStatsRequest { product_code: product.into() }))
        .await
        .unwrap()
        .into_inner();
    (s.started, s.active, s.expired, s.converted)
}

#[tokio::test]
async fn a_machine_gets_one_trial_that_survives_reinstalls_and_converts_in_place() {
    for backend in backends().await {
        let clock = ManualClock::new(SystemClock.now());
        let app = spawn(backend, clock.clone(), &[]).await;
        let f = fixture(&app).await;
        let mut product = ActivationServiceClient::new(app.channel().await);

        // No trial policy yet: refused by name, nothing made.
        let refused = product.activate_trial(trial(&f.product, machine("m-1", "desk"))).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused)), (Code::FailedPrecondition, "TRIAL_NOT_OFFERED".into()));
        assert!(refused.message().contains(&f.product), "{backend:?}: names the product: {}", refused.message());
        assert_eq!(stats(&app, &f.product).await, (0, 0, 0, 0), "{backend:?}: refusal changed nothing");

        // A contradictory trial policy is refused naming terms.trial.
        let two_seats = create_policy(&app, &f.product, "Bad trial", LicenseTerms { seats: 2, ..trial_terms() }).await;
        let bad = two_seats.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("terms.trial"), "{}", bad.message());

        let trial_policy = create_policy(&app, &f.product, "14-day trial", trial_terms()).await.unwrap();
        // Its licenses are only the trials machines start.
        let issued = app
            .admin()
            .await
            .issue_license(admin_req(acc::IssueLicenseRequest {
                customer_id: f.customer_id.clone(),
                policy_id: trial_policy,
                ..Default::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(issued.code(), Code::InvalidArgument);
        assert!(issued.message().contains("policy_id"), "{}", issued.message());
        let started_at = clock.now();
        let first = product.activate_trial(trial(&f.product, machine("m-1", "desk"))).await.unwrap().into_inner();
        assert!(!first.existing_trial, "{backend:?}");
        assert_eq!(first.expires_at.as_ref().unwrap().seconds, (started_at + 14 * DAY) / 1000);
        let installation = first.activation.as_ref().unwrap().installation_id.clone();
        let valid = product.validate(validate(&first.license_key, &machine("m-1", "desk"))).await.unwrap().into_inner();
        assert!(valid.valid, "{backend:?}: the trial validates: {}", valid.detail);

        // "Reinstalled" a week later with local files gone and the host renamed: the same trial,
        // the same expiry, the same installation.
        clock.advance(7 * DAY);
        let again = product.activate_trial(trial(&f.product, machine("m-1", "renamed"))).await.unwrap().into_inner();
        assert!(again.existing_trial, "{backend:?}");
        assert_eq!((&again.license_id, &again.license_key), (&first.license_id, &first.license_key));
        assert_eq!(again.expires_at, first.expires_at, "{backend:?}: the trial does not restart");
        assert_eq!(again.activation.unwrap().installation_id, installation);

        // Another machine gets its own trial.
        let other = product.activate_trial(trial(&f.product, machine("m-2", "lab"))).await.unwrap().into_inner();
        assert!(!other.existing_trial && other.license_id != first.license_id, "{backend:?}");
        assert_eq!(stats(&app, &f.product).await, (2, 2, 0, 0), "{backend:?}");

        // Past the trial's length: expired, and asking again starts nothing.
        clock.advance(8 * DAY);
        let expired = product.validate(validate(&first.license_key, &machine("m-1", "renamed"))).await.unwrap();
        assert_eq!(expired.into_inner().code, act::ValidationCode::Expired as i32, "{backend:?}");
        let no_restart = product.activate_trial(trial(&f.product, machine("m-1", "desk"))).await.unwrap_err();
        assert_eq!((no_restart.code(), reason(&no_restart)), (Code::FailedPrecondition, "EXPIRED".into()));
        // The other machine's trial, started a week later, runs on.
        assert_eq!(stats(&app, &f.product).await, (2, 1, 1, 0), "{backend:?}: no new trial");

        // The customer buys: the admin converts the trial, and the same installation validates
        // as the paid license with the key it had.
        let paid = create_policy(
            &app,
            &f.product,
            "Annual",
            LicenseTerms { seats: 2, validity: days(365), trial: false, ..trial_terms() },
        )
        .await
        .unwrap();
        let mut admin = app.admin().await;
        let converted = admin
            .convert_trial(admin_req(acc::ConvertTrialRequest {
                license_id: first.license_id.clone(),
                customer_id: f.customer_id.clone(),
                policy_id: paid.clone(),
                associate: true,
            }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!((converted.customer_id.as_str(), converted.seats), (f.customer_id.as_str(), 2), "{backend:?}");
        let valid =
            product.validate(validate(&first.license_key, &machine("m-1", "renamed"))).await.unwrap().into_inner();
        assert!(valid.valid, "{backend:?}: paid now: {}", valid.detail);
        let history = admin
            .get_activation_history(admin_req(acc::GetActivationHistoryRequest {
                license_id: first.license_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        let live: Vec<_> = history.installations.iter().filter(|a| a.deactivated_at.is_none()).collect();
        assert_eq!(live.len(), 1, "{backend:?}: no new activation");
        assert_eq!(live[0].installation_id, installation);
        let audit = admin
            .list_audit_events(admin_req(acc::ListAuditEventsRequest { subject: first.license_id.clone(), page: None }))
            .await
            .unwrap()
            .into_inner();
        assert!(audit.events.iter().any(|e| e.action == "license.trial_converted"), "{backend:?}");
        // Converted once; the machine asking for a trial is told of its license.
        let twice = admin
            .convert_trial(admin_req(acc::ConvertTrialRequest {
                license_id: first.license_id.clone(),
                customer_id: f.customer_id.clone(),
                policy_id: paid,
                associate: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(twice.code(), Code::FailedPrecondition, "{backend:?}: {twice:?}");
        let asked = product.activate_trial(trial(&f.product, machine("m-1", "desk"))).await.unwrap_err();
        assert_eq!(reason(&asked), "TRIAL_CONVERTED", "{backend:?}");
        assert_eq!(stats(&app, &f.product).await, (2, 1, 0, 1), "{backend:?}");
    }
}

#[tokio::test]
async fn bad_trial_requests_are_refused_by_name_and_limited_per_client() {
    let clock = ManualClock::new(SystemClock.now());
    let app = spawn(Backend::Sqlite, clock, &[("LICENSING_RATE_TRIAL_PER_CLIENT", "3/min")]).await;
    let f = fixture(&app).await;
    create_policy(&app, &f.product, "Trial", trial_terms()).await.unwrap();
    let mut product = ActivationServiceClient::new(app.channel().await);
    let unknown = product.activate_trial(trial("no-such-product", machine("m", "h"))).await.unwrap_err();
    assert_eq!((unknown.code(), reason(&unknown)), (Code::NotFound, "PRODUCT_NOT_FOUND".into()));
    assert!(unknown.message().contains("no-such-product"), "{}", unknown.message());
    let malformed = product.activate_trial(trial("Bad Code!", machine("m", "h"))).await.unwrap_err();
    assert_eq!(malformed.code(), Code::InvalidArgument);
    assert!(malformed.message().contains("product_code"), "{}", malformed.message());
    product.activate_trial(trial(&f.product, machine("m-2", "h"))).await.unwrap();
    // The fourth call within the minute from this address is refused, whatever it asks.
    let limited = product.activate_trial(trial(&f.product, machine("m-3", "h"))).await.unwrap_err();
    assert_eq!((limited.code(), reason(&limited)), (Code::ResourceExhausted, "RATE_LIMITED".into()));
    assert!(limited.message().contains("trial"), "{}", limited.message());
    assert_eq!(stats(&app, &f.product).await, (1, 1, 0, 0), "refused calls made no trial");
}

#[tokio::test]
async fn the_client_library_starts_a_trial_once_and_it_runs_out_online_and_offline() {
    use licensing_client::node_locked::{NodeLocked, Validity};
    use licensing_client::storage::TrustedStorage;
    use licensing_domain::fingerprint::Component;
    let clock = ManualClock::new(SystemClock.now());
    let app = spawn(Backend::Sqlite, clock.clone(), &[]).await;
    let f = fixture(&app).await;
    create_policy(&app, &f.product, "14-day trial", trial_terms()).await.unwrap();
    let client = licensing_client::Client::with_clock(
        &format!("http://{}", app.addr),
        &app.public_key().await,
        std::sync::Arc::new(clock.clone()),
    )
    .unwrap();
    let this_machine = || {
        [("machine-id", "lib-box"), ("disk-serial", "lib-disk"), ("mac", "lib-mac"), ("hostname", "lib")]
            .iter()
            .map(|(n, v)| Component { name: n.to_string(), value: v.to_string() })
            .collect::<Vec<_>>()
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = || TrustedStorage::new(dir.path().join("trial.json"));
    let (trial, payload) =
        NodeLocked::start_trial(client.clone(), storage(), &f.product, this_machine(), "lib", "linux", "1.0")
            .await
            .unwrap();
    let ends = payload.expires_at_ms.unwrap();
    assert_eq!(ends, clock.now() + 14 * DAY, "the policy's length");
    assert!(matches!(trial.validate(&[], "").await.unwrap(), Validity::Online(_)));

    // A reinstall (local files cleared) gets the same trial back, not a new one.
    std::fs::remove_file(dir.path().join("trial.json")).unwrap();
    clock.advance(3 * DAY);
    let (_, again) =
        NodeLocked::start_trial(client.clone(), storage(), &f.product, this_machine(), "lib", "linux", "1.0")
            .await
            .unwrap();
    assert_eq!((again.license_id.as_str(), again.expires_at_ms), (payload.license_id.as_str(), Some(ends)));

    // It runs out: online the server says EXPIRED, offline the certificate is over too.
    clock.advance(12 * DAY);
    match trial.validate(&[], "").await.unwrap() {
        Validity::Invalid { code, .. } => assert_eq!(code, "VALIDATION_CODE_EXPIRED"),
        other => panic!("{other:?}"),
    }
    assert!(trial.validate_offline(&[]).is_err(), "no offline use past the trial's end");
    let restart = NodeLocked::start_trial(client, storage(), &f.product, this_machine(), "lib", "linux", "1.0").await;
    match restart {
        Err(licensing_client::error::ClientError::Server { reason, .. }) => assert_eq!(reason, "EXPIRED"),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("an expired trial never starts again"),
    }
}
