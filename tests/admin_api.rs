//! The vendor admin API over gRPC, on SQLite and PostgreSQL.

use crate::common::*;
use licensing_proto::account::v1 as pb;
use licensing_proto::common::v1::{LicenseKind, LicenseStatus, Module};
use prost_types::Timestamp;
use tonic::Code;

const DAY_S: i64 = 86_400;

fn ts(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// A product with two modules and a customer, for license tests.
async fn seed(app: &TestApp) -> (String, String) {
    let mut admin = app.admin().await;
    admin
        .create_product(admin_req(pb::CreateProductRequest {
            code: "cad-pro".into(),
            name: "CAD Pro".into(),
            modules: vec![
                Module { code: "render".into(), name: "Renderer".into() },
                Module { code: "export".into(), name: "Exporter".into() },
            ],
        }))
        .await
        .unwrap();
    let customer = admin
        .create_customer(admin_req(pb::CreateCustomerRequest {
            company_name: "Acme GmbH".into(),
            contact_email: "Ops@Acme.example".into(),
            password: String::new(),
        }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap();
    assert_eq!(customer.contact_email, "ops@acme.example");
    ("cad-pro".into(), customer.customer_id)
}

fn issue(product: &str, customer: &str) -> pb::IssueLicenseRequest {
    pb::IssueLicenseRequest {
        product_code: product.into(),
        customer_id: customer.into(),
        kind: LicenseKind::NodeLocked as i32,
        seats: 3,
        allowed_deactivations: 2,
        modules: vec!["render".into()],
        expires_at: ts(now_s() + 365 * DAY_S),
        ..Default::default()
    }
}

async fn audit_len(app: &TestApp, subject: &str) -> usize {
    let mut admin = app.admin().await;
    let r = admin
        .list_audit_events(admin_req(pb::ListAuditEventsRequest { subject: subject.into(), page: None }))
        .await
        .unwrap();
    r.into_inner().events.len()
}

#[tokio::test]
async fn issue_fetch_search_and_change_a_license() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let (product, customer) = seed(&app).await;
        let mut admin = app.admin().await;

        let issued = admin.issue_license(admin_req(issue(&product, &customer))).await.unwrap().into_inner();
        let license = issued.license.unwrap();
        assert!(license.license_id.starts_with("lic_"));
        assert_eq!(license.status, LicenseStatus::Active as i32);
        assert_eq!(issued.license_key.len(), 29, "{backend:?}");
        assert!(!issued.activation_password.is_empty());

        let fetched = admin
            .get_license(admin_req(pb::GetLicenseRequest { license_id: license.license_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(fetched, license);

        // Search by the full key (exact digest match) and by customer.
        let by_key = admin
            .list_licenses(admin_req(pb::ListLicensesRequest {
                query: issued.license_key.to_lowercase(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_key.licenses.len(), 1);
        let by_customer = admin
            .list_licenses(admin_req(pb::ListLicensesRequest { customer_id: customer.clone(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_customer.licenses.len(), 1);

        let id = license.license_id.clone();
        let l = admin
            .suspend_license(admin_req(pb::SuspendLicenseRequest { license_id: id.clone(), reason: "unpaid".into() }))
            .await
            .unwrap();
        assert_eq!(l.into_inner().license.unwrap().status, LicenseStatus::Suspended as i32);
        let suspended_only = admin
            .list_licenses(admin_req(pb::ListLicensesRequest {
                status: LicenseStatus::Suspended as i32,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(suspended_only.licenses.len(), 1);
        let l =
            admin.reinstate_license(admin_req(pb::ReinstateLicenseRequest { license_id: id.clone() })).await.unwrap();
        assert_eq!(l.into_inner().license.unwrap().status, LicenseStatus::Active as i32);
        let new_expiry = now_s() + 800 * DAY_S;
        let l = admin
            .renew_license(admin_req(pb::RenewLicenseRequest {
                license_id: id.clone(),
                expires_at: ts(new_expiry),
                payment: None,
            }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(l.expires_at.unwrap().seconds, new_expiry);
        let l = admin
            .set_license_seats(admin_req(pb::SetLicenseSeatsRequest { license_id: id.clone(), seats: 10 }))
            .await
            .unwrap();
        assert_eq!(l.into_inner().license.unwrap().seats, 10);
        let l = admin
            .add_license_modules(admin_req(pb::AddLicenseModulesRequest {
                license_id: id.clone(),
                modules: vec!["export".into()],
                payment: None,
            }))
            .await
            .unwrap();
        assert_eq!(l.into_inner().license.unwrap().modules, vec!["render".to_string(), "export".to_string()]);
        let l = admin
            .remove_license_modules(admin_req(pb::RemoveLicenseModulesRequest {
                license_id: id.clone(),
                modules: vec!["render".into()],
            }))
            .await
            .unwrap();
        assert_eq!(l.into_inner().license.unwrap().modules, vec!["export".to_string()]);
        let upgrades = now_s() + 100 * DAY_S;
        let l = admin
            .extend_upgrade_period(admin_req(pb::ExtendUpgradePeriodRequest {
                license_id: id.clone(),
                upgrades_until: ts(upgrades),
                payment: None,
            }))
            .await
            .unwrap();
        assert_eq!(l.into_inner().license.unwrap().upgrades_until.unwrap().seconds, upgrades);

        // Every change is in the audit log, in order, with the admin as actor.
        let events = admin
            .list_audit_events(admin_req(pb::ListAuditEventsRequest { subject: id.clone(), page: None }))
            .await
            .unwrap()
            .into_inner()
            .events;
        let actions: Vec<&str> = events.iter().map(|e| e.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "license.issued",
                "license.suspended",
                "license.reinstated",
                "license.renewed",
                "license.seats_changed",
                "license.modules_added",
                "license.modules_removed",
                "license.upgrade_period_extended"
            ],
            "{backend:?}"
        );
        assert!(events.iter().all(|e| e.actor.starts_with("admin:")));
        assert!(events.windows(2).all(|w| w[0].sequence < w[1].sequence));
        // The key is a secret: it appears in no audit entry.
        assert!(events.iter().all(|e| !e.details_json.contains(&issued.license_key)));
    }
}

#[tokio::test]
async fn products_versions_customers_and_paging() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let (product, customer) = seed(&app).await;
        let mut admin = app.admin().await;
        let p = admin
            .add_product_version(admin_req(pb::AddProductVersionRequest {
                product_code: product.clone(),
                version: "2.1".into(),
                released_at: ts(1_700_000_000),
            }))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        assert_eq!(p.versions.len(), 1);
        let dup = admin
            .add_product_version(admin_req(pb::AddProductVersionRequest {
                product_code: product.clone(),
                version: "2.1".into(),
                released_at: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);
        let bad = admin
            .add_product_version(admin_req(pb::AddProductVersionRequest {
                product_code: product.clone(),
                version: "two".into(),
                released_at: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().starts_with("version:"), "{}", bad.message());

        let c = admin
            .get_customer(admin_req(pb::GetCustomerRequest { customer_id: customer.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(c.customer.unwrap().company_name, "Acme GmbH");
        for i in 0..3 {
            admin
                .create_product(admin_req(pb::CreateProductRequest {
                    code: format!("tool-{i}"),
                    name: format!("Tool {i}"),
                    modules: vec![],
                }))
                .await
                .unwrap();
        }
        let first = admin
            .list_products(admin_req(pb::ListProductsRequest {
                page: Some(licensing_proto::common::v1::PageRequest { page_size: 2, page_token: String::new() }),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(first.products.len(), 2);
        assert!(!first.next_page_token.is_empty());
        let second = admin
            .list_products(admin_req(pb::ListProductsRequest {
                page: Some(licensing_proto::common::v1::PageRequest {
                    page_size: 2,
                    page_token: first.next_page_token,
                }),
            }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(second.products.len(), 2);
        assert!(second.products.iter().all(|p| !first.products.contains(p)));
        let found = admin
            .list_customers(admin_req(pb::ListCustomersRequest { query: "ACME".into(), page: None }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(found.customers.len(), 1);
    }
}

#[tokio::test]
async fn bad_input_gets_the_right_status_names_the_field_and_changes_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let (product, customer) = seed(&app).await;
        let mut admin = app.admin().await;
        let issued = admin.issue_license(admin_req(issue(&product, &customer))).await.unwrap().into_inner();
        let id = issued.license.unwrap().license_id;
        let before = audit_len(&app, &id).await;

        let cases: Vec<(pb::IssueLicenseRequest, Code, &str)> = vec![
            (pb::IssueLicenseRequest { seats: 0, ..issue(&product, &customer) }, Code::InvalidArgument, "seats"),
            (pb::IssueLicenseRequest { seats: -4, ..issue(&product, &customer) }, Code::InvalidArgument, "seats"),
            (pb::IssueLicenseRequest { kind: 0, ..issue(&product, &customer) }, Code::InvalidArgument, "kind"),
            (
                pb::IssueLicenseRequest { allowed_deactivations: -2, ..issue(&product, &customer) },
                Code::InvalidArgument,
                "allowed_deactivations",
            ),
            (
                pb::IssueLicenseRequest { modules: vec!["teleport".into()], ..issue(&product, &customer) },
                Code::InvalidArgument,
                "modules",
            ),
            (
                pb::IssueLicenseRequest {
                    valid_from: ts(now_s()),
                    expires_at: ts(now_s() - DAY_S),
                    ..issue(&product, &customer)
                },
                Code::InvalidArgument,
                "expires_at",
            ),
            (
                pb::IssueLicenseRequest { product_code: "no-such".into(), ..issue(&product, &customer) },
                Code::NotFound,
                "",
            ),
            (
                pb::IssueLicenseRequest { customer_id: "cus_0000000000000000".into(), ..issue(&product, &customer) },
                Code::NotFound,
                "",
            ),
            (
                pb::IssueLicenseRequest { customer_id: "bogus".into(), ..issue(&product, &customer) },
                Code::InvalidArgument,
                "customer_id",
            ),
        ];
        for (request, code, field) in cases {
            let err = admin.issue_license(admin_req(request.clone())).await.unwrap_err();
            assert_eq!(err.code(), code, "{backend:?} {request:?}: {}", err.message());
            assert!(err.message().starts_with(field), "{} should name {field}", err.message());
        }
        let all = admin.list_licenses(admin_req(pb::ListLicensesRequest::default())).await.unwrap().into_inner();
        assert_eq!(all.licenses.len(), 1, "no bad request issued a license");

        let err = admin
            .set_license_seats(admin_req(pb::SetLicenseSeatsRequest { license_id: id.clone(), seats: 0 }))
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message().starts_with("seats")), (Code::InvalidArgument, true));
        let err = admin
            .add_license_modules(admin_req(pb::AddLicenseModulesRequest {
                license_id: id.clone(),
                modules: vec!["nope".into()],
                payment: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = admin
            .renew_license(admin_req(pb::RenewLicenseRequest {
                license_id: id.clone(),
                expires_at: ts(now_s() - 10 * DAY_S),
                payment: None,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = admin
            .renew_license(admin_req(pb::RenewLicenseRequest {
                license_id: id.clone(),
                expires_at: None,
                payment: None,
            }))
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "expires_at: is required"));
        let err = admin
            .reinstate_license(admin_req(pb::ReinstateLicenseRequest { license_id: id.clone() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "reinstating an active license");
        let err = admin
            .get_license(admin_req(pb::GetLicenseRequest { license_id: "lic_0000000000000000".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(reason(&err), "LICENSE_NOT_FOUND");
        let err = admin
            .get_license(admin_req(pb::GetLicenseRequest { license_id: "'; DROP TABLE licenses; --".into() }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = admin
            .create_product(admin_req(pb::CreateProductRequest {
                code: product.clone(),
                name: "Again".into(),
                modules: vec![],
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        let err = admin
            .create_customer(admin_req(pb::CreateCustomerRequest {
                company_name: "X".into(),
                contact_email: "not-an-email".into(),
                password: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!((err.code(), err.message().starts_with("contact_email")), (Code::InvalidArgument, true));
        let err = admin
            .create_customer(admin_req(pb::CreateCustomerRequest {
                company_name: "Dup".into(),
                contact_email: "ops@acme.example".into(),
                password: String::new(),
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);

        // Nothing above changed the license or wrote to its audit log.
        assert_eq!(audit_len(&app, &id).await, before, "{backend:?}");
        let l = admin
            .get_license(admin_req(pb::GetLicenseRequest { license_id: id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(
            (l.seats, l.modules.clone(), l.status),
            (3, vec!["render".to_string()], LicenseStatus::Active as i32)
        );
    }
}

#[tokio::test]
async fn admin_calls_need_the_admin_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut admin = app.admin().await;
    let err = admin.list_products(tonic::Request::new(pb::ListProductsRequest::default())).await.unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "ADMIN_TOKEN_MISSING".into()));
    let err = admin
        .list_products(with_token("adm_WRONGTOKEN0123456789ABCDEFGHJ", pb::ListProductsRequest::default()))
        .await
        .unwrap_err();
    assert_eq!((err.code(), reason(&err)), (Code::Unauthenticated, "ADMIN_TOKEN_INVALID".into()));
    let err = admin
        .create_product(with_token(
            "nonsense",
            pb::CreateProductRequest { code: "sneaky".into(), name: "x".into(), modules: vec![] },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let products =
        admin.list_products(admin_req(pb::ListProductsRequest::default())).await.unwrap().into_inner().products;
    assert!(products.is_empty(), "an unauthenticated call created nothing");
}

#[tokio::test]
async fn licenses_survive_a_restart() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let (product, customer) = seed(&app).await;
        let issued = app.admin().await.issue_license(admin_req(issue(&product, &customer))).await.unwrap().into_inner();
        let app = app.restart().await;
        let app = app.restart().await;
        let fetched = app
            .admin()
            .await
            .get_license(admin_req(pb::GetLicenseRequest {
                license_id: issued.license.as_ref().unwrap().license_id.clone(),
            }))
            .await
            .unwrap()
            .into_inner()
            .license;
        assert_eq!(fetched, issued.license, "{backend:?}");
    }
}
