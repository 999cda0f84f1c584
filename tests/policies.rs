//! License policies end to end over gRPC, on SQLite and PostgreSQL: a vendor issues from
//! named terms, time counts from first use, a changed policy changes no license until applied.

use crate::common::*;
use base64::Engine;
use licensing_domain::certificate::CertificatePayload;
use licensing_proto::account::v1 as acc;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{LicenseKind, LicenseTerms, Meter, MeterReset, TermsStart};
use prost_types::Duration;
use tonic::Code;

const DAY_S: i64 = 86_400;

fn days(n: i64) -> Option<Duration> {
    Some(Duration { seconds: n * DAY_S, nanos: 0 })
}

fn annual_from_first_use() -> LicenseTerms {
    LicenseTerms {
        kind: LicenseKind::NodeLocked as i32,
        seats: 2,
        allowed_deactivations: 1,
        modules: vec!["render".into()],
        validity: days(365),
        upgrade_period: days(365),
        start: TermsStart::FirstUse as i32,
        grace_period: days(14),
        heartbeat_timeout: None,
        meters: vec![Meter { code: "exports".into(), limit: 50, overage: 0, reset: MeterReset::Monthly as i32 }],
        trial: false,
    }
}

async fn create_policy(
    app: &TestApp,
    product: &str,
    name: &str,
    terms: LicenseTerms,
) -> licensing_proto::common::v1::Policy {
    app.admin()
        .await
        .create_policy(admin_req(acc::CreatePolicyRequest {
            product_code: product.into(),
            name: name.into(),
            terms: Some(terms),
        }))
        .await
        .unwrap()
        .into_inner()
        .policy
        .unwrap()
}

#[tokio::test]
async fn licenses_issued_from_a_policy_count_their_time_from_first_use_and_change_only_when_applied() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let policy = create_policy(&app, &f.product, "Annual, 2 machines", annual_from_first_use()).await;
        assert_eq!((policy.revision, policy.policy_id.starts_with("pol_")), (1, true));
        let mut admin = app.admin().await;

        // Issued from the policy, with the seats overridden in the call.
        let issued = admin
            .issue_license(admin_req(acc::IssueLicenseRequest {
                customer_id: f.customer_id.clone(),
                policy_id: policy.policy_id.clone(),
                seats: 3,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        let license = issued.license.unwrap();
        assert_eq!(license.product_code, f.product, "{backend:?}: the policy's product");
        assert_eq!(
            (license.kind, license.seats, license.allowed_deactivations),
            (LicenseKind::NodeLocked as i32, 3, 1)
        );
        assert_eq!((license.policy_id.as_str(), license.policy_revision), (policy.policy_id.as_str(), 1));
        assert_eq!((license.modules.clone(), license.meters.len()), (vec!["render".to_owned()], 1));
        assert!(license.starts_at_first_use && license.expires_at.is_none() && license.first_used_at.is_none());
        assert_eq!(license.validity_from_first_use, days(365));
        assert_eq!(license.grace_period, days(14));

        // The first activation starts the year; a second machine does not move it.
        let before = now_s();
        let mut product = ActivationServiceClient::new(app.channel().await);
        let first = product.activate(activate_by_key(&issued.license_key, "box-1")).await.unwrap().into_inner();
        let started = get_license(&app, &license.license_id).await;
        let first_used = started.first_used_at.unwrap().seconds;
        assert!((before..=now_s()).contains(&first_used), "{backend:?}");
        assert_eq!(started.expires_at.as_ref().unwrap().seconds, first_used + 365 * DAY_S);
        assert_eq!(started.upgrades_until.as_ref().unwrap().seconds, first_used + 365 * DAY_S);
        let payload: CertificatePayload = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD.decode(&first.certificate.unwrap().payload).unwrap(),
        )
        .unwrap();
        assert_eq!(payload.first_used_at_ms.map(|ms| ms / 1000), Some(first_used));
        assert_eq!(payload.expires_at_ms.map(|ms| ms / 1000), Some(first_used + 365 * DAY_S));
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        product.activate(activate_by_key(&issued.license_key, "box-2")).await.unwrap();
        assert_eq!(get_license(&app, &license.license_id).await.first_used_at, started.first_used_at);

        // A changed policy changes no license already issued...
        let two_years = LicenseTerms { validity: days(730), seats: 5, ..annual_from_first_use() };
        let updated = admin
            .update_policy(admin_req(acc::UpdatePolicyRequest {
                policy_id: policy.policy_id.clone(),
                terms: Some(two_years),
            }))
            .await
            .unwrap()
            .into_inner()
            .policy
            .unwrap();
        assert_eq!(updated.revision, 2);
        let untouched = get_license(&app, &license.license_id).await;
        assert_eq!((untouched.policy_revision, untouched.seats, untouched.expires_at), (1, 3, started.expires_at));
        // ...until the vendor applies it: from the same first use, audited on the license.
        let applied = admin
            .apply_policy(admin_req(acc::ApplyPolicyRequest {
                policy_id: policy.policy_id.clone(),
                license_ids: vec![license.license_id.clone()],
            }))
            .await
            .unwrap()
            .into_inner()
            .licenses;
        assert_eq!((applied[0].policy_revision, applied[0].seats), (2, 5));
        assert_eq!(applied[0].expires_at.as_ref().unwrap().seconds, first_used + 730 * DAY_S);
        assert_eq!(applied[0].activations_used, 2, "what it used stays");
        let audit = admin
            .list_audit_events(admin_req(acc::ListAuditEventsRequest {
                subject: license.license_id.clone(),
                page: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
        assert!(actions.contains(&"license.first_used") && actions.contains(&"license.policy_applied"), "{actions:?}");
        let listed = admin
            .list_policies(admin_req(acc::ListPoliciesRequest { product_code: f.product.clone() }))
            .await
            .unwrap()
            .into_inner()
            .policies;
        assert_eq!(listed.len(), 1);
    }
}

#[tokio::test]
async fn a_floating_license_starts_its_time_at_its_first_checkout() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let terms = LicenseTerms {
        kind: LicenseKind::Concurrent as i32,
        seats: 2,
        validity: days(30),
        start: TermsStart::FirstUse as i32,
        modules: vec![],
        meters: vec![],
        ..annual_from_first_use()
    };
    let terms = LicenseTerms { upgrade_period: None, grace_period: None, ..terms };
    let policy = create_policy(&app, &f.product, "Monthly floating", terms).await;
    let issued = app
        .admin()
        .await
        .issue_license(admin_req(acc::IssueLicenseRequest {
            customer_id: f.customer_id.clone(),
            policy_id: policy.policy_id,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let license_id = issued.license.unwrap().license_id;
    assert!(get_license(&app, &license_id).await.expires_at.is_none());
    let grant =
        seat_client(&app).await.checkout(checkout_by_key(&issued.license_key, "c1", 60)).await.unwrap().into_inner();
    assert!(grant.grant.is_some());
    let started = get_license(&app, &license_id).await;
    let first = started.first_used_at.unwrap().seconds;
    assert_eq!(started.expires_at.unwrap().seconds, first + 30 * DAY_S);
}

#[tokio::test]
async fn bad_policies_name_the_field_and_change_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let mut admin = app.admin().await;
    let negative = Some(Duration { seconds: -5, nanos: 0 });
    let cases = [
        (LicenseTerms { validity: negative, ..annual_from_first_use() }, "terms.validity"),
        (
            LicenseTerms { upgrade_period: Some(Duration { seconds: 10, nanos: 0 }), ..annual_from_first_use() },
            "terms.upgrade_period",
        ),
        (LicenseTerms { validity: None, upgrade_period: None, ..annual_from_first_use() }, "terms.start"),
        (LicenseTerms { seats: 0, ..annual_from_first_use() }, "terms.seats"),
        (
            LicenseTerms {
                kind: LicenseKind::Concurrent as i32,
                heartbeat_timeout: days(1),
                ..annual_from_first_use()
            },
            "terms.heartbeat_timeout",
        ),
        (LicenseTerms { kind: 0, ..annual_from_first_use() }, "terms.kind"),
        (LicenseTerms { modules: vec!["nope".into()], ..annual_from_first_use() }, "terms.modules"),
        (LicenseTerms { grace_period: days(400), ..annual_from_first_use() }, "terms.grace_period"),
    ];
    for (terms, field) in cases {
        let status = admin
            .create_policy(admin_req(acc::CreatePolicyRequest {
                product_code: f.product.clone(),
                name: "P".into(),
                terms: Some(terms),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {}", status.message());
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    assert!(admin
        .list_policies(admin_req(acc::ListPoliciesRequest { product_code: f.product.clone() }))
        .await
        .unwrap()
        .into_inner()
        .policies
        .is_empty());

    let policy = create_policy(&app, &f.product, "P", annual_from_first_use()).await;
    let twin = admin
        .create_policy(admin_req(acc::CreatePolicyRequest {
            product_code: f.product.clone(),
            name: "P".into(),
            terms: Some(annual_from_first_use()),
        }))
        .await
        .unwrap_err();
    assert_eq!(twin.code(), Code::AlreadyExists);
    let kind_change = admin
        .update_policy(admin_req(acc::UpdatePolicyRequest {
            policy_id: policy.policy_id.clone(),
            terms: Some(LicenseTerms { kind: LicenseKind::Concurrent as i32, ..annual_from_first_use() }),
        }))
        .await
        .unwrap_err();
    assert!(kind_change.message().starts_with("terms.kind"), "{}", kind_change.message());
    let unknown = admin
        .get_policy(admin_req(acc::GetPolicyRequest { policy_id: "pol_0000000000000000".into() }))
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    let other_product = admin
        .issue_license(admin_req(acc::IssueLicenseRequest {
            product_code: "another".into(),
            customer_id: f.customer_id.clone(),
            policy_id: policy.policy_id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(other_product.message().starts_with("product_code"), "{}", other_product.message());
    let (floating, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |_| {}).await;
    let wrong_kind = admin
        .apply_policy(admin_req(acc::ApplyPolicyRequest {
            policy_id: policy.policy_id.clone(),
            license_ids: vec![floating.clone()],
        }))
        .await
        .unwrap_err();
    assert_eq!(wrong_kind.code(), Code::InvalidArgument);
    assert!(get_license(&app, &floating).await.policy_id.is_empty(), "nothing applied");
    assert_eq!(
        admin
            .get_policy(admin_req(acc::GetPolicyRequest { policy_id: policy.policy_id }))
            .await
            .unwrap()
            .into_inner()
            .policy
            .unwrap()
            .revision,
        1
    );
}
