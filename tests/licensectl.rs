//! `licensectl` end to end against a running server, including its error messages.

use crate::common::*;
use licensing_proto::common::v1::LicenseKind;
use serde_json::Value;
use std::process::{Output, Stdio};

async fn ctl(app: Option<&TestApp>, token: Option<&str>, args: &[&str]) -> Output {
    ctl_with_stdin(app, token, args, "").await
}

fn command(app: Option<&TestApp>, token: Option<&str>, args: &[&str]) -> tokio::process::Command {
    let server = app.map_or_else(|| "http://127.0.0.1:9".to_owned(), |a| format!("http://{}", a.addr));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensectl"));
    cmd.env_clear().env("LICENSING_SERVER", server).args(args).kill_on_drop(true);
    if let Some(token) = token {
        cmd.env("LICENSING_ADMIN_TOKEN", token);
    }
    cmd
}

/// licensectl with `input` on its stdin.
async fn ctl_with_stdin(app: Option<&TestApp>, token: Option<&str>, args: &[&str], input: &str) -> Output {
    use tokio::io::AsyncWriteExt as _;
    let mut child =
        command(app, token, args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap()
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn operators_manage_licenses_and_leases() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let issued = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "licenses",
                "issue",
                "--product",
                &f.product,
                "--customer",
                &f.customer_id,
                "--kind",
                "concurrent",
                "--seats",
                "2",
                "--modules",
                "render",
                "--expires",
                "2031-06-30",
            ],
        )
        .await,
    );
    let license_id = issued["license_id"].as_str().unwrap().to_owned();
    assert_eq!(issued["license_key"].as_str().unwrap().len(), 29);
    assert_eq!(issued["expires"], "2031-06-30T00:00:00Z", "RFC 3339 in JSON");

    let listed = json(&ctl(Some(&app), t, &["--json", "licenses", "list", "--customer", &f.customer_id]).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let table = stdout(&ctl(Some(&app), t, &["licenses", "list"]).await);
    assert!(table.starts_with("LICENSE_ID") && table.contains(&license_id), "{table}");
    assert!(table.contains("2031-06-30 00:00"), "the minute in a table: {table}");
    let shown = stdout(&ctl(Some(&app), t, &["licenses", "show", &license_id]).await);
    assert!(shown.contains("LICENSE_KIND_CONCURRENT"), "{shown}");

    let suspended =
        json(&ctl(Some(&app), t, &["--json", "licenses", "suspend", &license_id, "--reason", "unpaid"]).await);
    assert_eq!(suspended[0]["status"], "LICENSE_STATUS_SUSPENDED");
    let suspended_only = json(&ctl(Some(&app), t, &["--json", "licenses", "list", "--status", "suspended"]).await);
    assert_eq!(suspended_only.as_array().unwrap().len(), 1);
    json(&ctl(Some(&app), t, &["--json", "licenses", "reinstate", &license_id]).await);
    let seats = json(&ctl(Some(&app), t, &["--json", "licenses", "seats", &license_id, "5"]).await);
    assert_eq!(seats[0]["seats"], 5);
    let renewed =
        json(&ctl(Some(&app), t, &["--json", "licenses", "renew", &license_id, "--expires", "2033-01-01"]).await);
    assert_eq!(renewed[0]["expires"], "2033-01-01T00:00:00Z");

    // Leases: one held by a product, listed and revoked.
    let key = issued["license_key"].as_str().unwrap().to_owned();
    let client = licensing_client::Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    let guard = client.checkout(licensing_client::Credentials::LicenseKey(key), Default::default()).await.unwrap();
    let leases = json(&ctl(Some(&app), t, &["--json", "leases", "list", &license_id]).await);
    let lease_id = leases[0]["lease_id"].as_str().unwrap().to_owned();
    let human = stdout(&ctl(Some(&app), t, &["leases", "list", &license_id]).await);
    assert!(human.contains("1 of 5 seats in use"), "{human}");
    let revoked = json(&ctl(Some(&app), t, &["--json", "leases", "revoke", &license_id, &lease_id]).await);
    assert_eq!(revoked[0]["revoked"], true);
    assert!(json(&ctl(Some(&app), t, &["--json", "leases", "list", &license_id]).await).as_array().unwrap().is_empty());
    drop(guard);

    // Usage reports: a table, JSON, and CSV for a spreadsheet.
    let csv = stdout(&ctl(Some(&app), t, &["usage", &license_id, "--csv"]).await);
    assert!(csv.starts_with("metric,day,subject,value\n"), "{csv}");
    assert!(csv.contains("total_checkouts,,,1\n") && csv.contains(&format!("license,,{license_id},")), "{csv}");
    let report = json(&ctl(Some(&app), t, &["--json", "usage", &license_id]).await);
    assert_eq!(report["checkouts"].as_i64(), Some(1));
    assert!((30..=31).contains(&report["days"].as_array().unwrap().len()), "the last 30 days: {report}");
    let human = stdout(&ctl(Some(&app), t, &["usage", &license_id]).await);
    assert!(human.starts_with("DAY") && human.contains("1 checkouts (0 overdraft)"), "{human}");

    // Activation history of a node-locked license.
    let (node_locked, node_key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let product = licensing_client::node_locked::NodeLocked::new(
        client.clone(),
        licensing_client::storage::TrustedStorage::new(dir.path().join("cert.json")),
        licensing_client::Credentials::LicenseKey(node_key),
        licensing_client::fingerprint::this_machine(),
    );
    product.activate("build-box", "linux", "").await.unwrap();
    let history = json(&ctl(Some(&app), t, &["--json", "history", &node_locked]).await);
    assert_eq!(history[0]["action"], "activate");
    assert_eq!(history[0]["machine"], "build-box");
}

#[tokio::test]
async fn errors_are_one_clear_line_without_a_stack_trace() {
    let app = spawn_app(Backend::Sqlite).await;
    let unreachable = stderr(&ctl(None, Some(ADMIN_TOKEN), &["licenses", "list"]).await);
    assert!(unreachable.contains("cannot reach the licensing server at http://127.0.0.1:9"), "{unreachable}");
    let wrong = stderr(&ctl(Some(&app), Some("adm_WRONGTOKEN0123456789ABCDEFGHJ"), &["licenses", "list"]).await);
    assert!(wrong.contains("refused the admin token") && wrong.contains("LICENSING_ADMIN_TOKEN"), "{wrong}");
    let missing = stderr(&ctl(Some(&app), None, &["licenses", "list"]).await);
    assert!(missing.contains("no admin token"), "{missing}");
    let not_found = stderr(&ctl(Some(&app), Some(ADMIN_TOKEN), &["licenses", "show", "lic_0000000000000000"]).await);
    assert!(not_found.contains("not found") && not_found.contains("lic_0000000000000000"), "{not_found}");
    let bad_date = stderr(
        &ctl(Some(&app), Some(ADMIN_TOKEN), &["licenses", "renew", "lic_0000000000000000", "--expires", "soon"]).await,
    );
    assert!(bad_date.contains("--expires: 'soon' is not a date"), "{bad_date}");
    // A date the calendar does not have is refused, not moved to 3 March.
    let impossible = stderr(
        &ctl(Some(&app), Some(ADMIN_TOKEN), &["licenses", "renew", "lic_0000000000000000", "--expires", "2027-02-31"])
            .await,
    );
    assert!(impossible.contains("--expires: '2027-02-31' is not a date"), "{impossible}");
    let backwards = stderr(
        &ctl(
            Some(&app),
            Some(ADMIN_TOKEN),
            &["usage", "lic_0000000000000000", "--from", "2026-12-01", "--to", "2026-11-01"],
        )
        .await,
    );
    assert!(backwards.contains("invalid argument: from: must be before to"), "{backwards}");
    for err in [&unreachable, &wrong, &missing, &not_found, &bad_date, &impossible, &backwards] {
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!err.contains("panicked") && !err.contains("backtrace"), "{err}");
    }
}

#[tokio::test]
async fn operators_manage_products_customers_passwords_and_seat_policies() {
    let app = spawn_seat_app(Leases::Embedded).await;
    let t = Some(ADMIN_TOKEN);

    // Products: create with modules, list, show, record a version.
    let product = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "products",
                "create",
                "cad-pro",
                "--name",
                "CAD Pro",
                "--module",
                "render=Render farm",
                "--module",
                "export",
            ],
        )
        .await,
    );
    assert_eq!(product["code"], "cad-pro");
    assert_eq!(product["modules"][0], serde_json::json!({"code": "render", "name": "Render farm"}));
    assert!(product["created"].as_str().unwrap().ends_with('Z'), "RFC 3339: {product}");
    let listed = json(&ctl(Some(&app), t, &["--json", "products", "list"]).await);
    assert!(listed.as_array().unwrap().iter().any(|p| p["code"] == "cad-pro"), "{listed}");
    let table = stdout(&ctl(Some(&app), t, &["products", "list"]).await);
    assert!(table.starts_with("CODE") && table.contains("render,export"), "{table}");
    let versioned = json(
        &ctl(Some(&app), t, &["--json", "products", "add-version", "cad-pro", "2.0", "--released", "2026-01-15"]).await,
    );
    assert_eq!(versioned["versions"][0], serde_json::json!({"version": "2.0", "released": "2026-01-15T00:00:00Z"}));
    let shown = stdout(&ctl(Some(&app), t, &["products", "show", "cad-pro"]).await);
    assert!(shown.contains("Render farm") && shown.contains("2026-01-15 00:00"), "{shown}");

    // Customers: create with a password from stdin, find, show, and set a new password.
    let customer = json(
        &ctl_with_stdin(
            Some(&app),
            t,
            &[
                "--json",
                "customers",
                "create",
                "--company",
                "Acme Design",
                "--email",
                "ops@acme.example",
                "--password-stdin",
            ],
            "first password 1234\n",
        )
        .await,
    );
    let customer_id = customer["customer_id"].as_str().unwrap().to_owned();
    login(&app, &customer_id, "first password 1234").await.expect("the password from stdin was set");
    let found = json(&ctl(Some(&app), t, &["--json", "customers", "list", "--query", "ACME"]).await);
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["customer_id"], customer_id.as_str());
    let shown = stdout(&ctl(Some(&app), t, &["customers", "show", &customer_id]).await);
    assert!(shown.contains("ops@acme.example"), "{shown}");
    let set = stdout(
        &ctl_with_stdin(Some(&app), t, &["customers", "set-password", &customer_id], "second password 5678\n").await,
    );
    assert!(set.contains(&customer_id), "{set}");
    login(&app, &customer_id, "second password 5678").await.expect("the new password works");
    assert!(login(&app, &customer_id, "first password 1234").await.is_err(), "the old one does not");
    let empty = stderr(&ctl_with_stdin(Some(&app), t, &["customers", "set-password", &customer_id], "").await);
    assert!(empty.contains("no password on stdin"), "{empty}");
    let short = stderr(&ctl_with_stdin(Some(&app), t, &["customers", "set-password", &customer_id], "short\n").await);
    assert!(short.contains("invalid argument"), "{short}");

    // Seat policies: set one from flags, show it back, and refuse a contradictory one.
    let issued = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "licenses",
                "issue",
                "--product",
                "cad-pro",
                "--customer",
                &customer_id,
                "--kind",
                "concurrent",
                "--seats",
                "4",
            ],
        )
        .await,
    );
    let license_id = issued["license_id"].as_str().unwrap().to_owned();
    let set = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "seat-policy",
                "set",
                &license_id,
                "--share",
                "user-host",
                "--max-processes",
                "2",
                "--linger",
                "15m",
                "--max-borrow",
                "2d",
                "--overdraft",
                "1",
                "--reserve",
                "user:alice=1",
                "--cap",
                "host:kiosk=1",
                "--deny",
                "user:contractor-9",
                "--feature-cost",
                "render=3",
                "--group",
                "design=user:alice,host:ws-7",
            ],
        )
        .await,
    );
    let expected = serde_json::json!({
        "share": "user-host", "max_processes": 2, "linger": "15m", "max_borrow": "48h", "default_ttl": null,
        "overdraft": 1, "reserve": ["user:alice=1"], "cap": ["host:kiosk=1"], "allow": [],
        "deny": ["user:contractor-9"], "feature_cost": ["render=3"], "group": ["design=user:alice,host:ws-7"],
    });
    assert_eq!(set, expected);
    let shown = json(&ctl(Some(&app), t, &["--json", "seat-policy", "show", &license_id]).await);
    assert_eq!(shown["policy"], expected);
    assert_eq!(shown["seats_total"], 4);
    let human = stdout(&ctl(Some(&app), t, &["seat-policy", "show", &license_id]).await);
    assert!(human.contains("user-host") && human.contains("0 of 4 seats in use"), "{human}");
    let too_many = stderr(&ctl(Some(&app), t, &["seat-policy", "set", &license_id, "--reserve", "user:alice=9"]).await);
    assert!(too_many.starts_with("licensectl: invalid argument:"), "{too_many}");
    let kept = json(&ctl(Some(&app), t, &["--json", "seat-policy", "show", &license_id]).await);
    assert_eq!(kept["policy"], expected, "a refused policy leaves the old one");
    let bad = ctl(Some(&app), t, &["seat-policy", "set", &license_id, "--reserve", "alice=1"]).await;
    assert_eq!(bad.status.code(), Some(2), "a malformed flag is a usage error");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("user:NAME"));
    let cleared = json(&ctl(Some(&app), t, &["--json", "seat-policy", "set", &license_id]).await);
    assert_eq!(cleared["share"], "none");
    assert_eq!(cleared["reserve"], serde_json::json!([]));

    // The audit log shows what was done.
    let audit = json(&ctl(Some(&app), t, &["--json", "audit", &license_id]).await);
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "license.issued"), "{audit}");
}

#[tokio::test]
async fn lists_follow_every_page() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let mut issued = vec![];
    for _ in 0..5 {
        issued.push(issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await.0);
    }
    for page_size in ["1", "2", "1000"] {
        let listed = json(
            &ctl(
                Some(&app),
                t,
                &["--json", "licenses", "list", "--customer", &f.customer_id, "--page-size", page_size],
            )
            .await,
        );
        let mut ids: Vec<String> =
            listed.as_array().unwrap().iter().map(|l| l["license_id"].as_str().unwrap().to_owned()).collect();
        ids.sort();
        let mut expected = issued.clone();
        expected.sort();
        assert_eq!(ids, expected, "every page at page size {page_size}");
    }
    let customers = json(&ctl(Some(&app), t, &["--json", "customers", "list", "--page-size", "1"]).await);
    assert!(customers.as_array().unwrap().iter().any(|c| c["customer_id"] == f.customer_id.as_str()));
    let products = json(&ctl(Some(&app), t, &["--json", "products", "list", "--page-size", "1"]).await);
    assert!(!products.as_array().unwrap().is_empty());
    let refused = ctl(Some(&app), t, &["licenses", "list", "--page-size", "1001"]).await;
    assert_eq!(refused.status.code(), Some(2));
}

#[tokio::test]
async fn a_closed_pipe_ends_licensectl_quietly() {
    // `licensectl --json licenses list | head`: the reader is gone before the output is written.
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    issue_license(&app, &f, LicenseKind::NodeLocked, 1, |_| {}).await;
    for args in [&["--json", "licenses", "list"][..], &["licenses", "list"], &["products", "list"]] {
        let mut child =
            command(Some(&app), Some(ADMIN_TOKEN), args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take());
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!said.contains("panicked") && said.trim().is_empty(), "{args:?}: {said}");
        assert!(out.status.success(), "{args:?}: {:?}", out.status);
    }
}

#[tokio::test]
async fn operators_set_show_and_remove_meters() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let (license_id, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |_| {}).await;
    let set = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "meters",
                "set",
                &license_id,
                "exports",
                "--limit",
                "100",
                "--overage",
                "10",
                "--reset",
                "monthly",
            ],
        )
        .await,
    );
    assert_eq!(
        set["meters"][0],
        serde_json::json!({"meter": "exports", "limit": 100, "overage": 10, "reset": "monthly"})
    );
    let table = stdout(
        &ctl(Some(&app), t, &["meters", "set", &license_id, "cpu-hours", "--limit", "50", "--reset", "never"]).await,
    );
    assert!(table.starts_with("METER") && table.contains("cpu-hours"), "{table}");

    // A product counts use with the client library; the same key twice counts once.
    let client = licensing_client::Client::new(&format!("http://{}", app.addr), &app.public_key().await).unwrap();
    let credentials = licensing_client::Credentials::LicenseKey(key);
    let use_key = licensing_client::metering::new_idempotency_key();
    let first = client.record_usage(&credentials, "exports", 30, &use_key).await.unwrap();
    let again = client.record_usage(&credentials, "exports", 30, &use_key).await.unwrap();
    assert_eq!((first.count.used, first.replayed, again.count.used, again.replayed), (30, false, 30, true));
    let refused = client.record_usage(&credentials, "cpu-hours", 51, "too-much").await.unwrap_err();
    assert!(
        matches!(&refused, licensing_client::error::ClientError::Server { code: tonic::Code::ResourceExhausted, reason, .. } if reason == "METER_LIMIT_REACHED"),
        "{refused:?}"
    );
    let counts = client.meter_usage(&credentials).await.unwrap();
    assert_eq!(
        counts.iter().map(|c| (c.meter.as_str(), c.used, c.remaining)).collect::<Vec<_>>(),
        [("exports", 30, 70), ("cpu-hours", 0, 50)]
    );

    let shown = json(&ctl(Some(&app), t, &["--json", "meters", "show", &license_id]).await);
    assert_eq!(shown["current"][0]["used"], 30);
    assert_eq!(shown["current"][0]["remaining"], 70);
    assert_eq!(shown["history"].as_array().unwrap().len(), 1, "only exports counted anything");
    let human = stdout(&ctl(Some(&app), t, &["meters", "show", &license_id]).await);
    assert!(human.contains("Every period counted"), "{human}");
    let csv = stdout(&ctl(Some(&app), t, &["meters", "show", &license_id, "--csv"]).await);
    assert!(
        csv.starts_with("meter,period_start,period_end,used,limit,overage_allowed,overage_used,remaining\nexports,"),
        "{csv}"
    );

    let removed = json(&ctl(Some(&app), t, &["--json", "meters", "remove", &license_id, "cpu-hours"]).await);
    assert_eq!(removed["meters"].as_array().unwrap().len(), 1);
    let bad = stderr(
        &ctl(Some(&app), t, &["meters", "set", &license_id, "exports", "--limit", "-5", "--reset", "yearly"]).await,
    );
    assert!(bad.contains("meter.limit") && bad.lines().count() <= 2, "{bad}");
}

#[tokio::test]
async fn operators_set_and_lift_a_heartbeat_timeout() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let issue = [
        "--json",
        "licenses",
        "issue",
        "--product",
        &f.product,
        "--customer",
        &f.customer_id,
        "--kind",
        "node-locked",
        "--heartbeat-timeout",
        "10m",
    ];
    let issued = json(&ctl(Some(&app), t, &issue).await);
    assert_eq!(issued["heartbeat_timeout"], "10m");
    let license_id = issued["license_id"].as_str().unwrap().to_owned();
    let changed = json(&ctl(Some(&app), t, &["--json", "licenses", "heartbeat", &license_id, "2h"]).await);
    assert_eq!(changed[0]["heartbeat_timeout"], "2h");
    let shown = stdout(&ctl(Some(&app), t, &["licenses", "show", &license_id]).await);
    assert!(shown.contains("2h"), "{shown}");
    let too_short = stderr(&ctl(Some(&app), t, &["licenses", "heartbeat", &license_id, "30s"]).await);
    assert!(too_short.contains("heartbeat_timeout: must be between 60 s"), "{too_short}");
    let lifted = json(&ctl(Some(&app), t, &["--json", "licenses", "heartbeat", &license_id, "off"]).await);
    assert_eq!(lifted[0]["heartbeat_timeout"], Value::Null);
}

#[tokio::test]
async fn operators_add_a_module_to_a_product_and_grant_it_with_a_value() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let added = json(
        &ctl(Some(&app), t, &["--json", "products", "add-module", &f.product, "max-resolution=Max. resolution"]).await,
    );
    assert_eq!(added["modules"][2], serde_json::json!({"code": "max-resolution", "name": "Max. resolution"}));
    let again = stderr(&ctl(Some(&app), t, &["products", "add-module", &f.product, "max-resolution=Again"]).await);
    assert!(again.contains("'max-resolution'") && again.contains("already exists"), "{again}");

    let (license_id, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 1, |r| {
        r.modules = vec!["render".into(), "max-resolution".into()];
    })
    .await;
    let args = ["--value", "4096", "--expires", "2031-06-30"];
    let entitle = [&["--json", "licenses", "entitle", &license_id, "max-resolution"][..], &args].concat();
    let granted = json(&ctl(Some(&app), t, &entitle).await);
    assert_eq!(granted[0]["entitlements"], serde_json::json!(["max-resolution=4096 until 2031-06-30T00:00:00Z"]));
    let shown = stdout(&ctl(Some(&app), t, &["licenses", "show", &license_id]).await);
    assert!(shown.contains("max-resolution=4096 until 2031-06-30T00:00:00Z"), "{shown}");
    let refused = stderr(&ctl(Some(&app), t, &["licenses", "entitle", &license_id, "export", "--value", "1"]).await);
    assert!(refused.contains("module") && refused.contains("AddLicenseModules"), "{refused}");
    let cleared = json(&ctl(Some(&app), t, &["--json", "licenses", "entitle", &license_id, "max-resolution"]).await);
    assert_eq!(cleared[0]["entitlements"], serde_json::json!([]));
}

#[tokio::test]
async fn operators_create_policies_and_issue_from_them() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let created = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "policies",
                "create",
                "--product",
                &f.product,
                "--name",
                "Annual, 2 machines",
                "--kind",
                "node-locked",
                "--seats",
                "2",
                "--validity",
                "365d",
                "--upgrade-period",
                "365d",
                "--start",
                "first-use",
                "--grace",
                "14d",
                "--meter",
                "exports=100+10/monthly",
            ],
        )
        .await,
    );
    let policy_id = created["policy_id"].as_str().unwrap().to_owned();
    assert_eq!(created["revision"], 1);
    assert_eq!(created["start"], "first_use");
    assert_eq!(created["meters"], serde_json::json!(["exports=100+10/monthly"]));
    let listed = stdout(&ctl(Some(&app), t, &["policies", "list", "--product", &f.product]).await);
    assert!(listed.starts_with("POLICY_ID") && listed.contains("Annual, 2 machines"), "{listed}");

    let issued = json(
        &ctl(Some(&app), t, &["--json", "licenses", "issue", "--customer", &f.customer_id, "--policy", &policy_id])
            .await,
    );
    assert_eq!(issued["seats"], 2);
    assert_eq!(issued["starts_at_first_use"], true);
    assert_eq!(issued["expires"], serde_json::Value::Null, "nothing runs out before the first use");
    assert_eq!(issued["policy"], format!("{policy_id} (revision 1)"));
    let license_id = issued["license_id"].as_str().unwrap().to_owned();

    let updated = json(
        &ctl(
            Some(&app),
            t,
            &[
                "--json",
                "policies",
                "update",
                &policy_id,
                "--kind",
                "node-locked",
                "--seats",
                "4",
                "--validity",
                "730d",
                "--start",
                "first-use",
            ],
        )
        .await,
    );
    assert_eq!(updated["revision"], 2);
    let applied = json(&ctl(Some(&app), t, &["--json", "policies", "apply", &policy_id, &license_id]).await);
    assert_eq!(applied[0]["seats"], 4);
    assert_eq!(applied[0]["policy"], format!("{policy_id} (revision 2)"));

    let bad = stderr(
        &ctl(
            Some(&app),
            t,
            &[
                "policies",
                "create",
                "--product",
                &f.product,
                "--name",
                "X",
                "--kind",
                "cloud",
                "--seats",
                "0",
                "--validity",
                "30d",
                "--start",
                "first-use",
            ],
        )
        .await,
    );
    assert!(bad.contains("terms.start") && bad.lines().count() <= 2, "{bad}");
    let no_kind = stderr(
        &ctl(Some(&app), t, &["licenses", "issue", "--customer", &f.customer_id, "--product", &f.product]).await,
    );
    assert!(no_kind.contains("--kind"), "{no_kind}");
}

#[tokio::test]
async fn operators_see_trials_and_convert_one() {
    use licensing_proto::account::v1 as acc;
    use licensing_proto::activation::v1 as act;
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let mut admin = app.admin().await;
    let policy = |name: &str, trial: bool, seats: i32| acc::CreatePolicyRequest {
        product_code: f.product.clone(),
        name: name.into(),
        terms: Some(licensing_proto::common::v1::LicenseTerms {
            kind: LicenseKind::NodeLocked as i32,
            seats,
            validity: Some(prost_types::Duration { seconds: 14 * 86_400, nanos: 0 }),
            trial,
            ..Default::default()
        }),
    };
    admin.create_policy(admin_req(policy("Trial", true, 1))).await.unwrap();
    let paid = admin.create_policy(admin_req(policy("Paid", false, 3))).await.unwrap().into_inner().policy.unwrap();
    let mut product =
        licensing_proto::activation::v1::activation_service_client::ActivationServiceClient::new(app.channel().await);
    let machine = activate_by_key("unused", "box-1").machine;
    let started = product
        .activate_trial(act::ActivateTrialRequest { product_code: f.product.clone(), machine })
        .await
        .unwrap()
        .into_inner();

    let stats = json(&ctl(Some(&app), t, &["--json", "trials", "stats", &f.product]).await);
    assert_eq!(
        (stats["started"].as_i64(), stats["active"].as_i64(), stats["converted"].as_i64()),
        (Some(1), Some(1), Some(0))
    );
    let convert =
        ["--json", "trials", "convert", &started.license_id, "--customer", &f.customer_id, "--policy", &paid.policy_id];
    let converted = json(&ctl(Some(&app), t, &convert).await);
    assert_eq!(
        (converted["customer_id"].as_str(), converted["seats"].as_i64()),
        (Some(f.customer_id.as_str()), Some(3))
    );
    let table = stdout(&ctl(Some(&app), t, &["trials", "stats", &f.product]).await);
    assert!(table.contains("converted") && table.contains('1'), "{table}");
    let again = stderr(&ctl(Some(&app), t, &convert).await);
    assert!(again.contains("converted already"), "{again}");
}

#[tokio::test]
async fn operators_issue_a_server_license_and_answer_an_air_gapped_servers_request() {
    use licensing_domain::server_license::{encode_server_request, ServerRequest, ServerRequestKind};
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let t = Some(ADMIN_TOKEN);
    let (product, render) = (format!("{}=25", f.product), format!("{}/render=5", f.product));
    let node_locked = format!("{}=10", f.product);
    let issue = [
        "--json",
        "licenses",
        "issue",
        "--product",
        &f.product,
        "--customer",
        &f.customer_id,
        "--kind",
        "server",
        "--grant",
        &product,
        "--grant",
        &render,
        "--grant-node-locked",
        &node_locked,
    ];
    let issued = json(&ctl(Some(&app), t, &issue).await);
    assert_eq!(issued["kind"], "LICENSE_KIND_SERVER");
    let grants = serde_json::json!([format!("{}=25 node-locked=10", f.product), format!("{}/render=5", f.product)]);
    assert_eq!(issued["server_grants"], grants);
    let unknown = [&issue[..9], &["--grant", "no-such-product=3"]].concat();
    let refused = stderr(&ctl(Some(&app), t, &unknown).await);
    assert!(refused.contains("server_grants.product_code") && refused.contains("no-such-product"), "{refused}");

    let dir = tempfile::tempdir().unwrap();
    let (request, out) = (dir.path().join("vault.request"), dir.path().join("vault.server-license"));
    let text = encode_server_request(&ServerRequest {
        v: 1,
        kind: ServerRequestKind::Activate,
        license_key: issued["license_key"].as_str().unwrap().into(),
        fingerprint: vec![licensing_domain::fingerprint::Component {
            name: "machine-id".into(),
            value: "vault".into(),
        }],
        server_name: "vault".into(),
        installation_id: String::new(),
        serial: 0,
        created_at_ms: 0,
    });
    std::fs::write(&request, text).unwrap();
    let (request, out) = (request.to_str().unwrap(), out.to_str().unwrap());
    let missing_out = stderr(&ctl(Some(&app), t, &["server-license", "respond", "--request", request]).await);
    assert!(missing_out.contains("--out"), "{missing_out}");
    assert_eq!(get_license(&app, issued["license_id"].as_str().unwrap()).await.activations_used, 0);
    let answered =
        json(&ctl(Some(&app), t, &["--json", "server-license", "respond", "--request", request, "--out", out]).await);
    assert_eq!((answered["serial"].as_i64(), answered["returned"].as_bool()), (Some(1), Some(false)));
    let file = std::fs::read_to_string(out).unwrap();
    assert!(file.starts_with("-----BEGIN LICENSING SERVER LICENSE-----"), "{file}");

    // The server reports its use; licensectl shows the server and the report.
    use licensing_proto::activation::v1 as act;
    let license_id = issued["license_id"].as_str().unwrap();
    let installation_id = answered["installation_id"].as_str().unwrap();
    let none = stdout(&ctl(Some(&app), t, &["server-license", "usage", license_id]).await);
    assert!(none.contains("no usage report"), "{none}");
    let key = issued["license_key"].as_str().unwrap();
    act::activation_service_client::ActivationServiceClient::new(app.channel().await)
        .report_server_usage(act::ReportServerUsageRequest {
            credentials: Some(act::LicenseCredentials {
                credential: Some(act::license_credentials::Credential::LicenseKey(key.into())),
            }),
            installation_id: installation_id.into(),
            serial: 1,
            period_start: ts(now_s() - 7200),
            period_end: ts(now_s() - 3600),
            grants: vec![act::ServerGrantUsage {
                product_code: f.product.clone(),
                kind: "floating".into(),
                granted: 25,
                peak_in_use: 17,
                checkouts: 40,
                denials: 2,
                seat_seconds: 5400,
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    let table = stdout(&ctl(Some(&app), t, &["server-license", "usage", license_id]).await);
    let header = table.lines().next().unwrap();
    for column in ["RECEIVED", "PERIOD_START", "INSTALLATION_ID", "GRANT", "PEAK", "DENIALS", "SEAT_HOURS"] {
        assert!(header.contains(column), "{table}");
    }
    let row = table.lines().nth(1).unwrap();
    for value in [installation_id, f.product.as_str(), "floating", "17", "1.5"] {
        assert!(row.contains(value), "{value}: {table}");
    }
    let reports = json(&ctl(Some(&app), t, &["--json", "server-license", "usage", license_id]).await);
    assert_eq!(reports[0]["grants"][0]["seat_seconds"], 5400, "{reports}");
    let shown = stdout(&ctl(Some(&app), t, &["licenses", "show", license_id]).await);
    assert!(shown.contains("server_grants") && shown.contains(&format!("{}=25", f.product)), "{shown}");
    assert!(shown.contains(installation_id) && shown.contains("vault"), "the activated server: {shown}");
    let shown = json(&ctl(Some(&app), t, &["--json", "licenses", "show", license_id]).await);
    assert_eq!(shown["servers"][0]["installation_id"], installation_id, "{shown}");
    assert_eq!(shown["servers"][0]["serial"], 1, "{shown}");
}
