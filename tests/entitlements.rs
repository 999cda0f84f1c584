//! Module entitlements end to end: the vendor adds a module (a new plug-in) to an existing
//! product, grants it on licenses with a value and an expiry of its own; validation returns the
//! value, the certificate carries it, and the Rust client reads it online and offline. Once the
//! module's expiry passes, validating it is MODULE_NOT_LICENSED naming the expiry, a seat checkout
//! of it is refused the same way, the client refuses it offline, and the rest of the license goes
//! on. Bad input is INVALID_ARGUMENT naming the field and changes nothing.

use crate::common::*;
use licensing_client::node_locked::{NodeLocked, Validity};
use licensing_client::storage::TrustedStorage;
use licensing_client::{Client, ClientError, Credentials, ManualClock};
use licensing_domain::certificate::{parse_certificate_file, verify_certificate, verifying_key_from_base64};
use licensing_domain::clock::{rfc3339, Clock, ManualClock as ServerClock, SystemClock, DAY, HOUR};
use licensing_domain::fingerprint::Component;
use licensing_proto::account::v1 as admin_pb;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, Module, ModuleEntitlement};
use licensing_proto::seat::v1 as seat_pb;
use std::sync::Arc;
use tonic::Code;

const PLUGIN: &str = "max-resolution";

fn millis(ts: Option<&prost_types::Timestamp>) -> Option<i64> {
    ts.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000)
}

fn at(ms: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 })
}

fn this_pc() -> Vec<Component> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| Component { name: n.to_string(), value: format!("{n}-value") })
        .collect()
}

fn by_key(key: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(key.into())) })
}

async fn validate(app: &TestApp, key: &str, modules: &[&str]) -> pb::ValidateResponse {
    let request = pb::ValidateRequest {
        credentials: by_key(key),
        fingerprint: this_pc()
            .iter()
            .map(|c| FingerprintComponent { name: c.name.clone(), value: c.value.clone() })
            .collect(),
        modules: modules.iter().map(|m| m.to_string()).collect(),
        product_version: String::new(),
    };
    ActivationServiceClient::new(app.channel().await).validate(request).await.unwrap().into_inner()
}

fn checkout(key: &str, feature: &str) -> seat_pb::CheckoutRequest {
    seat_pb::CheckoutRequest {
        credentials: Some(seat_pb::SeatCredentials {
            credential: Some(seat_pb::seat_credentials::Credential::LicenseKey(key.into())),
        }),
        user: "ann".into(),
        host: "ws-1".into(),
        client_instance_id: format!("c-{feature}"),
        feature: feature.into(),
        ttl: Some(prost_types::Duration { seconds: 600, nanos: 0 }),
        ..Default::default()
    }
}

fn entitlement(module: &str, value: &str, expires_at_ms: Option<i64>) -> ModuleEntitlement {
    ModuleEntitlement { module: module.into(), value: value.into(), expires_at: expires_at_ms.and_then(at) }
}

async fn audit_actions(app: &TestApp, subject: &str) -> Vec<String> {
    let request = admin_pb::ListAuditEventsRequest { subject: subject.into(), page: None };
    let events = app.admin().await.list_audit_events(admin_req(request)).await.unwrap().into_inner().events;
    events.into_iter().map(|e| e.action).collect()
}

/// On both databases, by a server clock the test moves: the vendor adds a plug-in to an existing
/// product, grants it on a node-locked license (SetModuleEntitlement) and on a concurrent one
/// (at issue) with a value and an expiry a day ahead. Validation returns the value, the
/// certificate carries it, the client reads it online and offline, a seat checkout of it gets a
/// lease that ends with it. A day later, validating the plug-in is MODULE_NOT_LICENSED with its
/// expiry in the detail (the license itself still valid, its certificate without the plug-in),
/// checking it out is refused as FEATURE_NOT_LICENSED naming the expiry, and the client refuses
/// it offline.
#[tokio::test]
async fn a_plugin_added_to_a_product_is_granted_with_a_value_and_ends_on_its_own_expiry() {
    use pb::ValidationCode as V;
    for backend in backends().await {
        let clock = ServerClock::new(SystemClock.now());
        let app = spawn_app_with_clock(backend, clock.clone()).await;
        let f = fixture(&app).await;
        let mut admin = app.admin().await;
        let (license_id, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;

        // A new plug-in for the existing product: no new product needed.
        let product = admin
            .add_product_module(admin_req(admin_pb::AddProductModuleRequest {
                product_code: f.product.clone(),
                module: Some(Module { code: PLUGIN.into(), name: "Max. resolution".into() }),
            }))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        let codes: Vec<&str> = product.modules.iter().map(|m| m.code.as_str()).collect();
        assert_eq!(codes, ["render", "export", PLUGIN], "{backend:?}");
        assert!(audit_actions(&app, &f.product).await.contains(&"product.module_added".to_owned()), "{backend:?}");

        let ends = clock.now() + DAY;
        admin
            .add_license_modules(admin_req(admin_pb::AddLicenseModulesRequest {
                license_id: license_id.clone(),
                modules: vec![PLUGIN.into()],
                payment: None,
            }))
            .await
            .unwrap();
        let granted = admin
            .set_module_entitlement(admin_req(admin_pb::SetModuleEntitlementRequest {
                license_id: license_id.clone(),
                module: PLUGIN.into(),
                value: "4096".into(),
                expires_at: at(ends),
            }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert_eq!(granted.module_entitlements, [entitlement(PLUGIN, "4096", Some(ends))], "{backend:?}");
        assert!(
            audit_actions(&app, &license_id).await.contains(&"license.module_entitlement_set".to_owned()),
            "{backend:?}: audited"
        );
        // The concurrent license is issued with the plug-in granted at once.
        let (floating_id, floating_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| {
            r.modules = vec!["render".into(), PLUGIN.into()];
            r.module_entitlements = vec![entitlement(PLUGIN, "8192", Some(ends))];
        })
        .await;

        // The product, through the Rust client with its own clock: online, the value.
        let client_clock = ManualClock::new(clock.now());
        let client = Client::with_clock(
            &format!("http://{}", app.addr),
            &app.public_key().await,
            Arc::new(client_clock.clone()),
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let product = NodeLocked::new(
            client,
            TrustedStorage::new(dir.path().join("license.json")),
            Credentials::LicenseKey(key.clone()),
            this_pc(),
        );
        product.activate("pc", "linux-x86_64", "").await.unwrap();
        let online = product.validate(&[PLUGIN], "").await.unwrap();
        assert!(matches!(online, Validity::Online(_)), "{backend:?}: {online:?}");
        assert_eq!(product.entitlement_value(&online, PLUGIN).as_deref(), Some("4096"), "{backend:?}");
        assert_eq!(product.entitlement_value(&online, "render"), None, "{backend:?}: no value for render");

        // On the wire: the response lists what is licensed now; the certificate carries it.
        let v = validate(&app, &key, &[PLUGIN]).await;
        assert_eq!((v.valid, v.code), (true, V::Valid as i32), "{backend:?}: {v:?}");
        assert_eq!(v.entitlements, [entitlement("render", "", None), entitlement(PLUGIN, "4096", Some(ends))]);
        let public = verifying_key_from_base64(&app.public_key().await).unwrap();
        let payload = |cert: &pb::SignedCertificate| {
            verify_certificate(&public, &parse_certificate_file(&cert.certificate_file).unwrap()).unwrap()
        };
        let certified = payload(v.certificate.as_ref().unwrap());
        assert_eq!(certified.modules, ["render", PLUGIN], "{backend:?}");
        let carried = certified.entitlement(PLUGIN).expect("the certificate carries the entitlement");
        assert_eq!((carried.value.as_deref(), carried.expires_at_ms), (Some("4096"), Some(ends)), "{backend:?}");

        // Offline, from the stored certificate alone.
        let offline = product.validate_offline(&[PLUGIN]).unwrap();
        assert_eq!(offline.entitlement_value(PLUGIN, client_clock.now()), Some("4096"), "{backend:?}");

        // A floating seat of the plug-in: granted, and the lease ends with the plug-in.
        let mut seats = seat_client(&app).await;
        let grant = seats.checkout(checkout(&floating_key, PLUGIN)).await.unwrap().into_inner().grant.unwrap();
        assert!(millis(grant.expires_at.as_ref()) <= Some(ends), "{backend:?}: {grant:?}");

        // A day later the plug-in's own expiry has passed; the license goes on.
        clock.advance(DAY + HOUR);
        client_clock.set(clock.now());
        let v = validate(&app, &key, &[PLUGIN]).await;
        assert_eq!((v.valid, v.code), (false, V::ModuleNotLicensed as i32), "{backend:?}: {v:?}");
        assert!(v.detail.contains(PLUGIN) && v.detail.contains(&rfc3339(ends)), "{backend:?}: {}", v.detail);
        let v = validate(&app, &key, &["render"]).await;
        assert_eq!((v.valid, v.code), (true, V::Valid as i32), "{backend:?}: the rest of the license: {v:?}");
        assert_eq!(v.entitlements, [entitlement("render", "", None)], "{backend:?}: only what is licensed now");
        let certified = payload(v.certificate.as_ref().unwrap());
        assert_eq!((certified.modules.as_slice(), certified.entitlements.len()), (&["render".to_owned()][..], 0));

        let refused = seats.checkout(checkout(&floating_key, PLUGIN)).await.unwrap_err();
        assert_eq!(
            (refused.code(), reason(&refused)),
            (Code::FailedPrecondition, "FEATURE_NOT_LICENSED".into()),
            "{backend:?}: {refused:?}"
        );
        assert!(refused.message().contains(&rfc3339(ends)), "{backend:?}: {}", refused.message());
        seats.checkout(checkout(&floating_key, "render")).await.expect("the license's other features go on");

        // Offline, the stored certificate (signed before the expiry) still lists the plug-in,
        // but its expiry is in it: refused, naming when; the rest validates.
        let stored = product.validate_offline(&[]).unwrap();
        assert_eq!(stored.entitlement_value(PLUGIN, client_clock.now()), None, "{backend:?}");
        match product.validate_offline(&[PLUGIN]) {
            Err(ClientError::ModuleExpired { module, expired_at }) => {
                assert_eq!((module.as_str(), expired_at), (PLUGIN, ends), "{backend:?}")
            }
            other => panic!("{backend:?}: {other:?}"),
        }
        let still = get_license(&app, &floating_id).await;
        assert_eq!(still.module_entitlements, [entitlement(PLUGIN, "8192", Some(ends))], "{backend:?}: kept, expired");
    }
}

/// Renewing a module is setting a later expiry; clearing value and expiry keeps the module
/// included without either; removing the module drops its entitlement.
#[tokio::test]
async fn an_expired_module_is_renewed_by_a_later_expiry_and_cleared_or_removed_with_the_module() {
    let clock = ServerClock::new(SystemClock.now());
    let app = spawn_app_with_clock(Backend::Sqlite, clock.clone()).await;
    let f = fixture(&app).await;
    let mut admin = app.admin().await;
    let ends = clock.now() + HOUR;
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Cloud, 0, |r| {
        r.seats = 0;
        r.modules = vec!["render".into(), "export".into()];
        r.module_entitlements = vec![entitlement("export", "pdf,svg", Some(ends))];
    })
    .await;
    assert_eq!(validate(&app, &key, &["export"]).await.code, pb::ValidationCode::Valid as i32);
    clock.advance(2 * HOUR);
    assert_eq!(validate(&app, &key, &["export"]).await.code, pb::ValidationCode::ModuleNotLicensed as i32);

    let set = |value: &str, expires_at| admin_pb::SetModuleEntitlementRequest {
        license_id: license_id.clone(),
        module: "export".into(),
        value: value.into(),
        expires_at,
    };
    let later = clock.now() + 30 * DAY;
    admin.set_module_entitlement(admin_req(set("pdf", at(later)))).await.unwrap();
    let v = validate(&app, &key, &["export"]).await;
    assert_eq!((v.valid, v.entitlements.last()), (true, Some(&entitlement("export", "pdf", Some(later)))), "{v:?}");

    let cleared = admin.set_module_entitlement(admin_req(set("", None))).await.unwrap().into_inner().license.unwrap();
    assert_eq!((cleared.module_entitlements.len(), cleared.modules.len()), (0, 2), "still included, no value");
    admin.set_module_entitlement(admin_req(set("pdf", None))).await.unwrap();
    let removed = admin
        .remove_license_modules(admin_req(admin_pb::RemoveLicenseModulesRequest {
            license_id: license_id.clone(),
            modules: vec!["export".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .license
        .unwrap();
    assert!(removed.module_entitlements.is_empty(), "{removed:?}");
}

/// Bad input on both databases: a value too long or with control characters, an expiry in the
/// past or before valid_from, a module not in the license or the product, a NUL anywhere: each
/// INVALID_ARGUMENT naming its field, and nothing changes (no entitlement, no audit entry, no
/// license issued). A module code the product has already is ALREADY_EXISTS naming it.
#[tokio::test]
async fn bad_entitlements_and_modules_are_refused_naming_the_field_and_change_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let mut admin = app.admin().await;
        let now = now_ms();
        let (license_id, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
            r.valid_from = at(now + 10 * DAY);
            r.expires_at = at(now + 400 * DAY);
        })
        .await;
        let set = |module: &str, value: &str, expires_at| admin_pb::SetModuleEntitlementRequest {
            license_id: license_id.clone(),
            module: module.into(),
            value: value.into(),
            expires_at,
        };
        let long = "9".repeat(257);
        for (request, field) in [
            (set("render", &long, None), "value"),
            (set("render", "40\n96", None), "value"),
            (set("render", "40\u{1b}[31m96", None), "value"),
            (set("render", "40\u{0}96", None), "value"),
            (set("render", "4096", at(now - HOUR)), "expires_at"),
            (set("render", "4096", at(now + DAY)), "expires_at"),
            (set("render", "4096", Some(prost_types::Timestamp { seconds: 1, nanos: -1 })), "expires_at"),
            (set("export", "4096", None), "module"),
            (set("nope", "4096", None), "module"),
            (set("ren\u{0}der", "4096", None), "module"),
        ] {
            let err = admin.set_module_entitlement(admin_req(request.clone())).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {request:?}: {err:?}");
            assert!(err.message().starts_with(field), "{backend:?}: names {field}: {}", err.message());
            assert!(!err.message().chars().any(char::is_control), "{backend:?}: {}", err.message());
        }
        let err = admin.set_module_entitlement(admin_req(set("export", "", None))).await.unwrap_err();
        assert!(err.message().contains("AddLicenseModules"), "{backend:?}: says what to do: {}", err.message());
        let license = admin
            .get_license(admin_req(admin_pb::GetLicenseRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner()
            .license
            .unwrap();
        assert!(license.module_entitlements.is_empty(), "{backend:?}: nothing changed");
        assert!(!audit_actions(&app, &license_id).await.iter().any(|a| a == "license.module_entitlement_set"));

        // At issue: checked against the license being issued; nothing is issued on refusal.
        let count = || async {
            let request = admin_pb::ListLicensesRequest { customer_id: f.customer_id.clone(), ..Default::default() };
            app.admin().await.list_licenses(admin_req(request)).await.unwrap().into_inner().licenses.len()
        };
        let before = count().await;
        for (entitlements, field) in [
            (vec![entitlement("export", "1", None)], "module_entitlements.module"),
            (vec![entitlement("render", "1", None), entitlement("render", "2", None)], "module_entitlements"),
            (vec![entitlement("render", &long, None)], "module_entitlements.value"),
            (vec![entitlement("render", "1", Some(now - DAY))], "module_entitlements.expires_at"),
        ] {
            let request = admin_pb::IssueLicenseRequest {
                product_code: f.product.clone(),
                customer_id: f.customer_id.clone(),
                kind: LicenseKind::NodeLocked as i32,
                seats: 1,
                modules: vec!["render".into()],
                module_entitlements: entitlements,
                ..Default::default()
            };
            let err = admin.issue_license(admin_req(request)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {field}: {err:?}");
            assert!(err.message().starts_with(field), "{backend:?}: names {field}: {}", err.message());
        }
        assert_eq!(count().await, before, "{backend:?}: no license issued");

        // Adding a module to a product.
        let add = |product: &str, module: Option<Module>| admin_pb::AddProductModuleRequest {
            product_code: product.into(),
            module,
        };
        let module = |code: &str, name: &str| Some(Module { code: code.into(), name: name.into() });
        let taken = admin.add_product_module(admin_req(add(&f.product, module("render", "Again")))).await.unwrap_err();
        assert_eq!(taken.code(), Code::AlreadyExists, "{backend:?}: {taken:?}");
        assert!(taken.message().contains("'render'"), "{backend:?}: names the module: {}", taken.message());
        for (request, field) in [
            (add(&f.product, None), "module"),
            (add(&f.product, module("Bad Code", "B")), "module.code"),
            (add(&f.product, module("plug\u{0}in", "B")), "module.code"),
            (add(&f.product, module("plugin", "")), "module.name"),
            (add(&f.product, module("plugin", "line\nbreak")), "module.name"),
            (add("prod\u{0}x", module("plugin", "P")), "product_code"),
        ] {
            let err = admin.add_product_module(admin_req(request)).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{backend:?}: {field}: {err:?}");
            assert!(err.message().starts_with(field), "{backend:?}: names {field}: {}", err.message());
        }
        let missing = admin.add_product_module(admin_req(add("no-such-product", module("plugin", "P")))).await;
        assert_eq!(missing.unwrap_err().code(), Code::NotFound, "{backend:?}");
        let product = admin
            .get_product(admin_req(admin_pb::GetProductRequest { code: f.product.clone() }))
            .await
            .unwrap()
            .into_inner()
            .product
            .unwrap();
        assert_eq!(product.modules.len(), 2, "{backend:?}: nothing added");
    }
}
