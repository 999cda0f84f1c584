//! The Prometheus side, checked by the real `promtool` (Debian's `prometheus` package; scripts/test.sh
//! and .ci/run install it): the alert rules of deploy/prometheus/alerts.yml (`check rules`, and
//! they name only series the services export), and a live scrape of /metrics (`check metrics`:
//! names, types, suffixes, help), which has the standard `process_*` series and
//! `licensing_build_info`.

use crate::common::*;
use licensing_proto::common::v1::LicenseKind;
use std::io::Write as _;
use std::process::{Command, Stdio};

fn path(file: &str) -> String {
    format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))
}

/// The promtool to run; `None` (the test is skipped) when it is missing and CI is not set.
fn promtool() -> Option<String> {
    let tool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    match Command::new(&tool).arg("--version").output() {
        Ok(_) => Some(tool),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED: {tool} not found ({e}); ./scripts/test.sh installs it (Debian package prometheus)");
            None
        }
        Err(e) => panic!("{tool}: {e} (CI is set: promtool must run; apt-get install prometheus)"),
    }
}

/// Every `licensing_*` series the alert rules query.
pub(crate) fn alert_series() -> Vec<String> {
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path("deploy/prometheus/alerts.yml")).unwrap()).unwrap();
    let mut names: Vec<String> = rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .flat_map(|rule| licensing_series_in(rule["expr"].as_str().unwrap()))
        .collect();
    names.sort();
    names.dedup();
    names
}

#[test]
fn the_alert_rules_pass_promtool_and_cover_seats_stores_errors_and_recovery() {
    let series = alert_series();
    for needed in [
        "licensing_seats_in_use",
        "licensing_seats_allowed",
        "licensing_store_up",
        "licensing_rpc_duration_seconds_count",
        "licensing_lease_store_recovery_seconds",
    ] {
        assert!(series.iter().any(|s| s == needed), "an alert on {needed}: {series:?}");
    }
    // Prometheus loads them beside its configuration (docker-compose.yml mounts both).
    let config: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(path("deploy/prometheus/prometheus.yml")).unwrap()).unwrap();
    assert_eq!(config["rule_files"][0].as_str(), Some("alerts.yml"));
    let Some(tool) = promtool() else { return };
    for (what, file) in [("rules", "deploy/prometheus/alerts.yml"), ("config", "deploy/prometheus/prometheus.yml")] {
        let out = Command::new(&tool).args(["check", what, &path(file)]).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("SUCCESS"), "promtool check {what} {file}:\n{said}");
    }
}

#[tokio::test]
async fn a_live_scrape_passes_promtool_check_metrics() {
    let Some(tool) = promtool() else { return };
    let app = spawn_seat_app(Leases::Embedded).await;
    let f = fixture(&app).await;
    let (_, key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 1, |_| {}).await;
    let mut seats = seat_client(&app).await;
    seats.checkout(checkout_by_key(&key, "a", 60)).await.unwrap();
    seats.checkout(checkout_by_key(&key, "b", 60)).await.unwrap_err();
    let text = scrape(app.metrics_addr.expect("metrics on")).await;
    for series in ["licensing_seats_allowed", "process_resident_memory_bytes", "process_cpu_seconds_total"] {
        assert!(text.lines().any(|l| l.starts_with(series)), "{series} in\n{text}");
    }
    let version = format!("licensing_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
    assert!(text.contains(&version), "{version} in\n{text}");
    assert!(!text.contains("licensing_seats_total"), "a gauge does not end in _total");

    let mut child = Command::new(&tool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n---\n{text}");
    app.stop().await;
}
