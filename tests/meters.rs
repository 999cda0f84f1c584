//! Metered features end to end over gRPC, on SQLite and PostgreSQL: the vendor sets meters, a
//! product records use with idempotency keys, the limit holds, certificates carry what is left,
//! and the vendor and the customer read use per period (and as CSV).

use crate::common::*;
use base64::Engine;
use licensing_domain::certificate::CertificatePayload;
use licensing_proto::account::v1 as acc;
use licensing_proto::activation::v1 as act;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{LicenseKind, Meter, MeterReset};
use tonic::Code;

fn meter(code: &str, limit: i64, overage: i64, reset: MeterReset) -> Meter {
    Meter { code: code.into(), limit, overage, reset: reset as i32 }
}

fn key_credentials(key: &str) -> Option<act::LicenseCredentials> {
    Some(act::LicenseCredentials { credential: Some(act::license_credentials::Credential::LicenseKey(key.into())) })
}

fn record(key: &str, meter: &str, amount: i64, idempotency_key: &str) -> act::RecordUsageRequest {
    act::RecordUsageRequest {
        credentials: key_credentials(key),
        meter: meter.into(),
        amount,
        idempotency_key: idempotency_key.into(),
    }
}

fn payload_of(certificate: &act::SignedCertificate) -> CertificatePayload {
    let bytes = base64::engine::general_purpose::STANDARD.decode(&certificate.payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn a_product_records_use_within_its_meters_and_everyone_reads_it() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| {
            r.associate = true;
            r.meters = vec![meter("exports", 10, 2, MeterReset::Monthly)];
        })
        .await;
        let mut admin = app.admin().await;
        admin
            .set_license_meter(admin_req(acc::SetLicenseMeterRequest {
                license_id: license_id.clone(),
                meter: Some(meter("cpu-hours", 1000, 0, MeterReset::Never)),
            }))
            .await
            .unwrap();
        let mut product = ActivationServiceClient::new(app.channel().await);

        let first = product.record_usage(record(&key, "exports", 4, "use-1")).await.unwrap().into_inner();
        let usage = first.usage.unwrap();
        assert_eq!(
            (usage.used, usage.remaining, first.replayed, first.in_overage),
            (4, 6, false, false),
            "{backend:?}"
        );
        assert!(usage.period_end.is_some() && usage.period_start.is_some());
        // The answer was lost; the product retries with the same key: counted once.
        let retry = product.record_usage(record(&key, "exports", 4, "use-1")).await.unwrap().into_inner();
        assert_eq!((retry.usage.unwrap().used, retry.replayed), (4, true), "{backend:?}");
        // The same key for another amount is refused, naming the key.
        let reused = product.record_usage(record(&key, "exports", 5, "use-1")).await.unwrap_err();
        assert_eq!((reused.code(), reason(&reused).as_str()), (Code::AlreadyExists, "IDEMPOTENCY_KEY_REUSED"));
        assert!(reused.message().contains("use-1"), "{}", reused.message());

        // Into the overage, then past it: refused with what is left, and nothing counted.
        let over = product.record_usage(record(&key, "exports", 7, "use-2")).await.unwrap().into_inner();
        assert_eq!((over.usage.as_ref().unwrap().overage_used, over.in_overage), (1, true), "{backend:?}");
        let refused = product.record_usage(record(&key, "exports", 2, "use-3")).await.unwrap_err();
        assert_eq!((refused.code(), reason(&refused).as_str()), (Code::ResourceExhausted, "METER_LIMIT_REACHED"));
        assert!(refused.message().contains("1 left"), "{}", refused.message());
        product.record_usage(record(&key, "cpu-hours", 250, "cpu-1")).await.unwrap();

        // The certificate of an activation carries each meter's count at signing.
        let activated = product.activate(activate_by_key(&key, "meter-box")).await.unwrap().into_inner();
        let payload = payload_of(&activated.certificate.unwrap());
        let counts: Vec<_> = payload.meters.iter().map(|m| (m.code.as_str(), m.used, m.remaining)).collect();
        assert_eq!(counts, [("exports", 11, 0), ("cpu-hours", 250, 750)], "{backend:?}");
        assert!(payload.meters[0].period_end_ms.is_some() && payload.meters[1].period_end_ms.is_none());

        // The product, the vendor and the customer read the same figures.
        let mine = product
            .get_meter_usage(act::GetMeterUsageRequest { credentials: key_credentials(&key) })
            .await
            .unwrap()
            .into_inner()
            .meters;
        assert_eq!(mine.iter().map(|u| u.used).collect::<Vec<_>>(), [11, 250]);
        let vendor = admin
            .get_license_meter_usage(admin_req(acc::GetLicenseMeterUsageRequest {
                license_id: license_id.clone(),
                as_csv: true,
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(vendor.current.len(), 2);
        assert_eq!(vendor.history.len(), 2, "one period per meter so far");
        assert!(vendor
            .csv
            .starts_with("meter,period_start,period_end,used,limit,overage_allowed,overage_used,remaining\n"));
        assert!(vendor.csv.lines().any(|l| l.starts_with("cpu-hours,,,250,1000,0,0,750")), "{}", vendor.csv);
        assert!(vendor.csv.lines().any(|l| l.starts_with("exports,") && l.ends_with(",11,10,2,1,0")), "{}", vendor.csv);
        let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
        let customer = portal(&app)
            .await
            .get_my_meter_usage(with_token(
                &session,
                acc::GetMyMeterUsageRequest { license_id: license_id.clone(), as_csv: true },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((customer.current, customer.csv), (vendor.current, vendor.csv));

        // Changing a meter is audited.
        let audit = admin
            .list_audit_events(admin_req(acc::ListAuditEventsRequest { subject: license_id.clone(), page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        assert!(audit.iter().any(|e| e.action == "license.meter_set"), "{audit:?}");

        // A suspended license counts nothing.
        admin
            .suspend_license(admin_req(acc::SuspendLicenseRequest {
                license_id: license_id.clone(),
                reason: "t".into(),
            }))
            .await
            .unwrap();
        let suspended = product.record_usage(record(&key, "cpu-hours", 1, "cpu-2")).await.unwrap_err();
        assert_eq!((suspended.code(), reason(&suspended).as_str()), (Code::FailedPrecondition, "SUSPENDED"));
    }
}

#[tokio::test]
async fn bad_meter_input_names_the_field_and_changes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| {
        r.meters = vec![meter("exports", 10, 0, MeterReset::Yearly)];
    })
    .await;
    let mut product = ActivationServiceClient::new(app.channel().await);
    let long_key = "k".repeat(129);
    for (request, field) in [
        (record(&key, "exports", -3, "a"), "amount"),
        (record(&key, "exports", 0, "a"), "amount"),
        (record(&key, "exports", i64::MAX, "a"), "amount"),
        (record(&key, "Exports!", 1, "a"), "meter"),
        (record(&key, "exports", 1, ""), "idempotency_key"),
        (record(&key, "exports", 1, &long_key), "idempotency_key"),
        (record(&key, "exports", 1, "a\u{1b}[2J"), "idempotency_key"),
    ] {
        let status = product.record_usage(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {}", status.message());
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
        assert!(!status.message().contains('\u{1b}') && status.message().len() < 500, "{}", status.message());
    }
    let unknown = product.record_usage(record(&key, "renders", 1, "a")).await.unwrap_err();
    assert_eq!((unknown.code(), reason(&unknown).as_str()), (Code::NotFound, "METER_NOT_FOUND"));
    assert!(unknown.message().contains("exports"), "names the meters there are: {}", unknown.message());

    let mut admin = app.admin().await;
    for (m, field) in [
        (meter("exports", -1, 0, MeterReset::Monthly), "meter.limit"),
        (meter("exports", 5, -1, MeterReset::Monthly), "meter.overage"),
        (meter("", 5, 0, MeterReset::Monthly), "meter.code"),
        (meter("exports", 5, 0, MeterReset::Unspecified), "meter"),
    ] {
        let status = admin
            .set_license_meter(admin_req(acc::SetLicenseMeterRequest {
                license_id: license_id.clone(),
                meter: Some(m),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {}", status.message());
        assert!(status.message().starts_with(field), "{field}: {}", status.message());
    }
    let twice = admin
        .issue_license(admin_req(acc::IssueLicenseRequest {
            product_code: f.product.clone(),
            customer_id: f.customer_id.clone(),
            kind: LicenseKind::Concurrent as i32,
            seats: 1,
            meters: vec![meter("exports", 1, 0, MeterReset::Never), meter("exports", 2, 0, MeterReset::Never)],
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::InvalidArgument);
    assert!(twice.message().starts_with("meters") && twice.message().contains("twice"), "{}", twice.message());
    let missing = admin
        .remove_license_meter(admin_req(acc::RemoveLicenseMeterRequest {
            license_id: license_id.clone(),
            code: "renders".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    // Nothing changed: the one meter as issued, nothing counted.
    let license = get_license(&app, &license_id).await;
    assert_eq!(license.meters, vec![meter("exports", 10, 0, MeterReset::Yearly)]);
    let usage = product
        .get_meter_usage(act::GetMeterUsageRequest { credentials: key_credentials(&key) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(usage.meters[0].used, 0);
}

#[tokio::test]
async fn the_web_portal_shows_metered_use_and_downloads_every_period_as_csv() {
    use crate::web_security::Visitor;
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| {
        r.associate = true;
        r.meters = vec![meter("exports", 10, 5, MeterReset::Monthly), meter("cpu-hours", 1, 0, MeterReset::Never)];
    })
    .await;
    let mut product = ActivationServiceClient::new(app.channel().await);
    product.record_usage(record(&key, "exports", 12, "web-1")).await.unwrap();

    let mut browser = Visitor::new(&app);
    assert_eq!(browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await.status, 303);
    let page = browser.get(&format!("/licenses/{license_id}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Metered use"), "{}", page.body);
    assert!(
        page.body.contains("<td>exports</td><td>12</td><td>10</td><td>0</td><td>2 of 5 used</td>"),
        "{}",
        page.body
    );
    assert!(page.body.contains(&format!("/licenses/{license_id}/meters.csv")));
    let csv = browser.get(&format!("/licenses/{license_id}/meters.csv")).await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), "text/csv; charset=utf-8");
    assert!(csv.header("content-disposition").contains(&format!("meters-{license_id}.csv")));
    assert!(
        csv.body.lines().nth(1).is_some_and(|l| l.starts_with("exports,") && l.ends_with(",12,10,5,2,0")),
        "{}",
        csv.body
    );
}
