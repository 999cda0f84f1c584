//! `licensectl` end to end against a running server, including its error messages.

use crate::common::*;
use licensing_proto::common::v1::LicenseKind;
use serde_json::Value;
use std::process::Output;

async fn ctl(app: Option<&TestApp>, token: Option<&str>, args: &[&str]) -> Output {
    let server = app.map_or_else(|| "http://127.0.0.1:9".to_owned(), |a| format!("http://{}", a.addr));
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_licensectl"));
    cmd.env_clear().env("LICENSING_SERVER", server).args(args);
    if let Some(token) = token {
        cmd.env("LICENSING_ADMIN_TOKEN", token);
    }
    cmd.output().await.unwrap()
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
    assert_eq!(issued["expires"], "2031-06-30 00:00");

    let listed = json(&ctl(Some(&app), t, &["--json", "licenses", "list", "--customer", &f.customer_id]).await);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let table = stdout(&ctl(Some(&app), t, &["licenses", "list"]).await);
    assert!(table.starts_with("LICENSE_ID") && table.contains(&license_id), "{table}");
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
    assert_eq!(renewed[0]["expires"], "2033-01-01 00:00");

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
