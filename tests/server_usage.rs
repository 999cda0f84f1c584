//! Server usage reports, end to end on SQLite and PostgreSQL: an on-premises server activated
//! online (ActivateServer) uploads what it used of its server license's grants over a period
//! (ReportServerUsage); a retried upload stores one report; the admin lists the reports
//! (ListServerUsageReports) and sees the license's activated servers (GetLicense); the
//! license's customer sees grants, servers and reports (GetMyLicense and the web portal's
//! license page, escaped) and another customer sees none of it. A wrong kind of license, an
//! installation of another license, a returned server and every bad field are refused and
//! change nothing.

use crate::common::*;
use crate::web_security::Visitor;
use licensing_domain::server_license::{encode_server_request, ServerRequest, ServerRequestKind};
use licensing_proto::account::v1 as acc;
use licensing_proto::activation::v1 as pb;
use licensing_proto::activation::v1::activation_service_client::ActivationServiceClient;
use licensing_proto::common::v1::{FingerprintComponent, LicenseKind, ServerGrant};
use tonic::Code;

fn by_key(key: &str) -> Option<pb::LicenseCredentials> {
    Some(pb::LicenseCredentials { credential: Some(pb::license_credentials::Credential::LicenseKey(key.into())) })
}

fn components(name: &str) -> Vec<licensing_domain::fingerprint::Component> {
    ["machine-id", "disk-serial", "mac", "hostname"]
        .iter()
        .map(|n| licensing_domain::fingerprint::Component { name: n.to_string(), value: format!("{name}-{n}") })
        .collect()
}

/// Activates the server `name` on the server license; returns (installation ID, serial).
async fn activate_server(app: &TestApp, key: &str, name: &str) -> (String, i64) {
    let machine = pb::MachineInfo {
        fingerprint: components(name)
            .into_iter()
            .map(|c| FingerprintComponent { name: c.name, value: c.value })
            .collect(),
        machine_name: name.into(),
        platform: "linux-x86_64".into(),
        product_version: "1.0".into(),
    };
    let request = pb::ActivateServerRequest { credentials: by_key(key), machine: Some(machine) };
    let r = ActivationServiceClient::new(app.channel().await).activate_server(request).await.unwrap().into_inner();
    (r.activation.unwrap().installation_id, r.serial)
}

/// A server license of the fixture's customer (associated with its account): the product with
/// 25 floating seats and 10 node-locked activations, its `render` feature with 5 seats.
async fn issue_server_license(app: &TestApp, f: &Fixture) -> (String, String) {
    let product = f.product.clone();
    let grant = |feature: &str, floating, node_locked| ServerGrant {
        product_code: product.clone(),
        feature: feature.into(),
        floating_seats: floating,
        node_locked_activations: node_locked,
    };
    let (license_id, key, _) = issue_license(app, f, LicenseKind::Server, 1, |r| {
        r.modules = vec![];
        r.associate = true;
        r.server_grants = vec![grant("", 25, 10), grant("render", 5, 0)];
    })
    .await;
    (license_id, key)
}

fn usage(product: &str, feature: &str, kind: &str, granted: i32, peak: i32) -> pb::ServerGrantUsage {
    pb::ServerGrantUsage {
        product_code: product.into(),
        feature: feature.into(),
        kind: kind.into(),
        granted,
        peak_in_use: peak,
        checkouts: 120,
        denials: 3,
        seat_seconds: 36_000,
    }
}

/// A report of the hour before `end` (seconds).
fn report(key: &str, installation_id: &str, serial: i64, end: i64, product: &str) -> pb::ReportServerUsageRequest {
    pb::ReportServerUsageRequest {
        credentials: by_key(key),
        installation_id: installation_id.into(),
        serial,
        period_start: ts(end - 3600),
        period_end: ts(end),
        grants: vec![
            usage(product, "", "floating", 25, 19),
            usage(product, "", "node_locked", 10, 4),
            usage(product, "render", "floating", 5, 5),
        ],
    }
}

async fn upload(
    app: &TestApp,
    request: pb::ReportServerUsageRequest,
) -> Result<pb::ReportServerUsageResponse, tonic::Status> {
    ActivationServiceClient::new(app.channel().await).report_server_usage(request).await.map(|r| r.into_inner())
}

async fn reports(app: &TestApp, license_id: &str) -> Vec<acc::ServerUsageReport> {
    let request = acc::ListServerUsageReportsRequest { license_id: license_id.into(), page: None };
    app.admin().await.list_server_usage_reports(admin_req(request)).await.unwrap().into_inner().reports
}

async fn usage_audits(app: &TestApp, license_id: &str) -> usize {
    let request = acc::ListAuditEventsRequest { subject: license_id.into(), page: None };
    let events = app.admin().await.list_audit_events(admin_req(request)).await.unwrap().into_inner().events;
    events.iter().filter(|e| e.action == "server_license.usage_reported").count()
}

#[tokio::test]
async fn a_server_reports_its_usage_once_per_period_and_the_admin_and_its_customer_see_it() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key) = issue_server_license(&app, &f).await;
        let (installation_id, serial) = activate_server(&app, &key, "lic01").await;
        let end = now_s() - 60;

        let first = upload(&app, report(&key, &installation_id, serial, end, &f.product)).await.unwrap();
        assert!(first.report_id.starts_with("sur_"), "{backend:?}: {}", first.report_id);
        let retry = upload(&app, report(&key, &installation_id, serial, end, &f.product)).await.unwrap();
        assert_eq!(retry, first, "{backend:?}: a retry answers the first report");

        let listed = reports(&app, &license_id).await;
        assert_eq!(listed.len(), 1, "{backend:?}: the retry stored nothing: {listed:?}");
        let r = &listed[0];
        assert_eq!(
            (r.report_id.as_str(), r.license_id.as_str(), r.installation_id.as_str(), r.serial),
            (first.report_id.as_str(), license_id.as_str(), installation_id.as_str(), serial),
            "{backend:?}"
        );
        assert_eq!((r.period_start, r.period_end), (ts(end - 3600), ts(end)), "{backend:?}");
        assert_eq!(r.grants, report(&key, &installation_id, serial, end, &f.product).grants, "{backend:?}");
        assert_eq!(r.received_at, first.received_at);
        assert_eq!(usage_audits(&app, &license_id).await, 1, "{backend:?}");

        // A later period is another report; the admin lists the newest first, in pages.
        let second = upload(&app, report(&key, &installation_id, serial, end + 3600 - 60, &f.product)).await;
        let second = second.unwrap();
        let page = |token: &str| acc::ListServerUsageReportsRequest {
            license_id: license_id.clone(),
            page: Some(licensing_proto::common::v1::PageRequest { page_size: 1, page_token: token.into() }),
        };
        let newest = app.admin().await.list_server_usage_reports(admin_req(page(""))).await.unwrap().into_inner();
        assert_eq!(newest.reports.iter().map(|r| &r.report_id).collect::<Vec<_>>(), [&second.report_id]);
        let older =
            app.admin().await.list_server_usage_reports(admin_req(page(&newest.next_page_token))).await.unwrap();
        assert_eq!(older.into_inner().reports[0].report_id, first.report_id, "{backend:?}");

        // The admin sees the grants and the activated server.
        let shown = app
            .admin()
            .await
            .get_license(admin_req(acc::GetLicenseRequest { license_id: license_id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(shown.license.unwrap().server_grants.len(), 2, "{backend:?}");
        assert_eq!(shown.servers.len(), 1, "{backend:?}");
        let server = &shown.servers[0];
        assert_eq!(
            (server.installation_id.as_str(), server.server_name.as_str(), server.serial),
            (installation_id.as_str(), "lic01", serial),
            "{backend:?}"
        );
        assert!(server.activated_at.is_some());

        // The owning customer sees them in the portal; another customer does not.
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
        assert_eq!(mine.servers.iter().map(|s| &s.installation_id).collect::<Vec<_>>(), [&installation_id]);
        assert_eq!(
            mine.server_usage_reports.iter().map(|r| &r.report_id).collect::<Vec<_>>(),
            [&second.report_id, &first.report_id],
            "{backend:?}: newest first"
        );
        assert_eq!(mine.license.unwrap().server_grants.len(), 2);
        let email = format!("{}@globex.example", licensing_domain::ids::new_id("m").to_lowercase());
        let other = create_customer(&app, "Globex", &email).await;
        let other_session = login(&app, &other, CUSTOMER_PASSWORD).await.unwrap();
        let theirs = portal(&app)
            .await
            .get_my_license(with_token(
                &other_session,
                acc::GetMyLicenseRequest { license_id: license_id.clone(), ..Default::default() },
            ))
            .await
            .unwrap_err();
        assert_eq!(theirs.code(), Code::NotFound, "{backend:?}");
        assert!(!theirs.message().contains(&installation_id));

        // Customer and product calls cannot list reports: only the admin token.
        let as_customer = app
            .admin()
            .await
            .list_server_usage_reports(with_token(
                &session,
                acc::ListServerUsageReportsRequest { license_id: license_id.clone(), page: None },
            ))
            .await
            .unwrap_err();
        assert_eq!(as_customer.code(), Code::Unauthenticated, "{backend:?}");
    }
}

#[tokio::test]
async fn a_wrong_license_installation_or_field_is_refused_and_changes_nothing() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key) = issue_server_license(&app, &f).await;
        let (installation_id, serial) = activate_server(&app, &key, "lic01").await;
        let (_, other_key) = issue_server_license(&app, &f).await;
        let (other_installation, _) = activate_server(&app, &other_key, "lic02").await;
        let (_, node_locked_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
        let end = now_s() - 60;
        let good = || report(&key, &installation_id, serial, end, &f.product);
        upload(&app, good()).await.unwrap();
        let stored = reports(&app, &license_id).await;

        let refused = |e: tonic::Status| (e.code(), reason(&e), e.message().to_owned());
        let mut cases: Vec<(&str, pb::ReportServerUsageRequest, Code, &str)> = vec![
            (
                "a node-locked key",
                report(&node_locked_key, &installation_id, 1, end - 7200, &f.product),
                Code::FailedPrecondition,
                "WRONG_KIND",
            ),
            (
                "another license's server",
                report(&key, &other_installation, 1, end - 7200, &f.product),
                Code::NotFound,
                "INSTALLATION_NOT_FOUND",
            ),
            (
                "an unknown installation",
                report(&key, "ins_0000000000000000", 1, end - 7200, &f.product),
                Code::NotFound,
                "INSTALLATION_NOT_FOUND",
            ),
            (
                "a serial never signed",
                report(&key, &installation_id, serial + 1, end - 7200, &f.product),
                Code::InvalidArgument,
                "serial",
            ),
            (
                "the same period, other figures",
                pb::ReportServerUsageRequest { grants: vec![usage(&f.product, "", "floating", 25, 20)], ..good() },
                Code::AlreadyExists,
                "USAGE_REPORT_CONFLICT",
            ),
            (
                "a period ending before it starts",
                pb::ReportServerUsageRequest { period_end: ts(end - 7200), ..good() },
                Code::InvalidArgument,
                "period_end",
            ),
            (
                "a period ending in two days",
                pb::ReportServerUsageRequest { period_end: ts(now_s() + 2 * 86_400), ..good() },
                Code::InvalidArgument,
                "period_end",
            ),
            (
                "no period start",
                pb::ReportServerUsageRequest { period_start: None, ..good() },
                Code::InvalidArgument,
                "period_start",
            ),
            ("serial 0", pb::ReportServerUsageRequest { serial: 0, ..good() }, Code::InvalidArgument, "serial"),
            (
                "not an installation ID",
                pb::ReportServerUsageRequest { installation_id: "<b>x</b>".into(), ..good() },
                Code::InvalidArgument,
                "installation_id",
            ),
            ("no grants", pb::ReportServerUsageRequest { grants: vec![], ..good() }, Code::InvalidArgument, "grants"),
            (
                "257 grants",
                pb::ReportServerUsageRequest { grants: vec![usage(&f.product, "", "floating", 1, 1); 257], ..good() },
                Code::InvalidArgument,
                "grants",
            ),
            (
                "an unknown kind",
                pb::ReportServerUsageRequest { grants: vec![usage(&f.product, "", "lease", 1, 1)], ..good() },
                Code::InvalidArgument,
                "grants.kind",
            ),
            (
                "a bad product code",
                pb::ReportServerUsageRequest {
                    grants: vec![usage(&"P".repeat(100_000), "", "floating", 1, 1)],
                    ..good()
                },
                Code::InvalidArgument,
                "grants.product_code",
            ),
            (
                "a negative peak",
                pb::ReportServerUsageRequest { grants: vec![usage(&f.product, "", "floating", 1, -1)], ..good() },
                Code::InvalidArgument,
                "grants.peak_in_use",
            ),
        ];
        let mut negative = good();
        negative.grants[1].denials = -1;
        cases.push(("negative denials", negative, Code::InvalidArgument, "grants.denials"));
        let mut twice = good();
        twice.grants.push(twice.grants[0].clone());
        cases.push(("a grant twice", twice, Code::InvalidArgument, "grants"));
        for (what, request, code, expected) in cases {
            let (got, why, message) = refused(upload(&app, request).await.unwrap_err());
            assert_eq!(got, code, "{backend:?}: {what}: {message}");
            if code == Code::InvalidArgument {
                assert!(
                    message.starts_with(&format!("{expected}:")),
                    "{backend:?}: {what} names {expected}: {message}"
                );
            } else {
                assert_eq!(why, expected, "{backend:?}: {what}: {message}");
            }
            assert!(message.chars().count() < 400, "{backend:?}: {what}: a short message");
        }
        assert_eq!(reports(&app, &license_id).await, stored, "{backend:?}: nothing changed");
        assert_eq!(usage_audits(&app, &license_id).await, 1, "{backend:?}: no refusal was audited as a report");

        // A server given back (its latest file returned) reports no more.
        let give_back = encode_server_request(&ServerRequest {
            v: 1,
            kind: ServerRequestKind::Return,
            license_key: key.clone(),
            fingerprint: components("lic01"),
            server_name: "lic01".into(),
            installation_id: installation_id.clone(),
            serial,
            created_at_ms: now_ms(),
        });
        app.admin()
            .await
            .process_server_request(admin_req(acc::ProcessServerRequestRequest { request_file: give_back }))
            .await
            .unwrap();
        let late = upload(&app, report(&key, &installation_id, serial, end + 1800, &f.product)).await.unwrap_err();
        assert_eq!(
            (late.code(), reason(&late).as_str()),
            (Code::FailedPrecondition, "SERVER_DEACTIVATED"),
            "{backend:?}"
        );
        // Its reports stay, and a retry of one still gets its answer.
        assert_eq!(upload(&app, good()).await.unwrap().report_id, stored[0].report_id, "{backend:?}");
        assert_eq!(reports(&app, &license_id).await, stored, "{backend:?}");
    }
}

#[tokio::test]
async fn the_owner_sees_servers_and_usage_on_the_license_page_and_another_customer_does_not() {
    for backend in backends().await {
        let app = spawn_app(backend).await;
        let f = fixture(&app).await;
        let (license_id, key) = issue_server_license(&app, &f).await;
        let hostile = "<script>alert(1)</script>";
        let (installation_id, serial) = activate_server(&app, &key, hostile).await;
        upload(&app, report(&key, &installation_id, serial, now_s() - 60, &f.product)).await.unwrap();

        let mut owner = Visitor::new(&app);
        assert_eq!(owner.log_in(&f.customer_id, CUSTOMER_PASSWORD).await.status, 303);
        let page = owner.get(&format!("/licenses/{license_id}")).await;
        assert_eq!(page.status, 200, "{backend:?}: {}", page.body);
        let body = &page.body;
        for shown in ["What the server may serve", "Activated servers", "Server usage reports", "Seat hours"] {
            assert!(body.contains(shown), "{backend:?}: {shown}:\n{body}");
        }
        assert!(body.contains(&installation_id), "{backend:?}: the server is listed");
        assert!(body.contains(&format!("{}/render", f.product)), "{backend:?}: the feature's grant and its use");
        // 36,000 seat seconds: 10.0 seat hours; the peak of 19 of 25 seats.
        assert!(body.contains("<td data-label=\"Seat hours\">10.0</td>"), "{backend:?}:\n{body}");
        assert!(body.contains("<td data-label=\"Peak in use\">19</td>"), "{backend:?}");
        assert!(!body.contains(hostile), "{backend:?}: the server's name is shown escaped");
        assert!(body.contains("&#60;script&#62;") || body.contains("&lt;script&gt;"), "{backend:?}");

        let email = format!("{}@globex.example", licensing_domain::ids::new_id("m").to_lowercase());
        let other = create_customer(&app, "Globex", &email).await;
        let mut stranger = Visitor::new(&app);
        assert_eq!(stranger.log_in(&other, CUSTOMER_PASSWORD).await.status, 303);
        let foreign = stranger.get(&format!("/licenses/{license_id}")).await;
        let unknown = stranger.get("/licenses/lic_0000000000000000").await;
        assert_eq!(foreign.status, 404, "{backend:?}");
        assert_eq!(foreign.body, unknown.body, "{backend:?}: another account's server license reads as none");
        assert!(!foreign.body.contains(&installation_id) && !foreign.body.contains(&f.product), "{backend:?}");
    }
}
