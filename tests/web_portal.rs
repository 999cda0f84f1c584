//! The web portal in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`), over a whole customer day. The screenshots it takes are
//! the ones in docs/portal/ (written there with `UPDATE_SCREENSHOTS=1`).
//!
//! Without Chromium the test is skipped with a message; with `CI` set it fails instead.

use crate::common::*;
use crate::web_security::mailed_link;
use fantoccini::{Client, ClientBuilder, Locator};
use licensing_proto::account::v1 as pb;
use licensing_proto::common::v1::LicenseKind;
use std::process::Stdio;
use std::time::Duration;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver and a headless Chromium with a profile of its own, ended when dropped.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

async fn browser() -> Option<Browser> {
    if !std::path::Path::new(CHROMIUM).exists() || !std::path::Path::new(CHROMEDRIVER).exists() {
        let why = format!("{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver");
        if std::env::var_os("CI").is_some() {
            panic!("CI is set and the browser test cannot run: {why}");
        }
        eprintln!("SKIPPED the browser test: {why}");
        return None;
    }
    let port = crate::common::process::free_port();
    let driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    // Headless as root on a closed network: no sandbox, and none of Chromium's own traffic
    // (without the background-networking flags its connections are refused here).
    let args = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--hide-scrollbars",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("--user-data-dir={}", profile.path().display())])
    .collect::<Vec<_>>();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), "chrome".into());
    capabilities.insert("goog:chromeOptions".into(), serde_json::json!({ "binary": CHROMIUM, "args": args }));
    let mut last = None;
    for _ in 0..100 {
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return Some(Browser { client, _driver: driver, _profile: profile }),
            Err(e) => last = Some(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not start a session: {last:?}");
}

/// Where screenshots go: docs/portal with `UPDATE_SCREENSHOTS=1`, else a scratch directory.
fn screenshot_dir() -> (std::path::PathBuf, Option<tempfile::TempDir>) {
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        (concat!(env!("CARGO_MANIFEST_DIR"), "/docs/portal").into(), None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        (dir.path().to_path_buf(), Some(dir))
    }
}

async fn screenshot(client: &Client, dir: &std::path::Path, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name} is a PNG");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn fill(client: &Client, field: &str, text: &str) {
    let input = client.find(Locator::Id(field)).await.unwrap_or_else(|e| panic!("field {field}: {e}"));
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

/// Clicks a link or button and waits for the page it leads to (a click does not wait for the
/// navigation it starts).
async fn click_text(client: &Client, text: &str) {
    let xpath = format!("//a[normalize-space()='{text}'] | //button[normalize-space()='{text}']");
    let element =
        client.find(Locator::XPath(&xpath)).await.unwrap_or_else(|e| panic!("no link or button '{text}': {e}"));
    click_and_wait(client, element).await;
}

async fn click_and_wait(client: &Client, element: fantoccini::elements::Element) {
    client.execute("window.__before_click = true", vec![]).await.unwrap();
    element.click().await.unwrap();
    for _ in 0..200 {
        let loaded = client
            .execute("return window.__before_click === undefined && document.readyState === 'complete'", vec![])
            .await;
        if matches!(loaded, Ok(serde_json::Value::Bool(true))) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new page after the click, on {}", path(client).await);
}

async fn text_of(client: &Client, css: &str) -> String {
    match client.find(Locator::Css(css)).await {
        Ok(element) => element.text().await.unwrap(),
        Err(e) => panic!("{css}: {e} on {}:\n{}", path(client).await, client.source().await.unwrap_or_default()),
    }
}

async fn path(client: &Client) -> String {
    let url = client.current_url().await.unwrap();
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

#[tokio::test]
async fn a_customer_day_in_a_real_browser() {
    let Some(browser) = browser().await else { return };
    let client = &browser.client;
    let (shots, _scratch) = screenshot_dir();
    let app = spawn_app(Backend::Sqlite).await;
    let base = format!("http://{}", app.portal_addr.unwrap());
    let f = fixture(&app).await;
    let email = app
        .admin()
        .await
        .get_customer(admin_req(pb::GetCustomerRequest { customer_id: f.customer_id.clone() }))
        .await
        .unwrap()
        .into_inner()
        .customer
        .unwrap()
        .contact_email;
    let paid = |months| Some(pb::Payment { amount_minor: 49_900, currency: "EUR".into(), recurring_months: months });
    let (node_locked, key, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 3, |r| {
        r.associate = true;
        r.allowed_deactivations = 3;
        r.payment = paid(12);
    })
    .await;
    let (floating, floating_key, _) = issue_license(&app, &f, LicenseKind::Concurrent, 2, |r| {
        r.associate = true;
        r.payment = paid(0);
    })
    .await;
    let mut activations =
        licensing_proto::activation::v1::activation_service_client::ActivationServiceClient::new(app.channel().await);
    for machine in ["design-ws-01", "render-node-7"] {
        activations.activate(activate_by_key(&key, machine)).await.unwrap();
    }
    let mut seats = seat_client(&app).await;
    for (holder, host) in [("alice", "design-ws-01"), ("bob", "render-node-7")] {
        let mut checkout = checkout_by_key(&floating_key, holder, 600);
        checkout.user = holder.into();
        checkout.host = host.into();
        seats.checkout(checkout).await.unwrap();
    }
    seats.checkout(checkout_by_key(&floating_key, "carol", 600)).await.unwrap_err();

    // Log in by email.
    client.goto(&format!("{base}/licenses")).await.unwrap();
    assert!(path(client).await.starts_with("/login?next=%2Flicenses"), "{}", path(client).await);
    screenshot(client, &shots, "login").await;
    fill(client, "login", &email).await;
    fill(client, "password", CUSTOMER_PASSWORD).await;
    click_text(client, "Log in").await;
    assert_eq!(path(client).await, "/licenses", "{}", client.source().await.unwrap());
    let cookies = client.execute("return document.cookie", vec![]).await.unwrap();
    assert!(!cookies.as_str().unwrap_or_default().contains("ses_"), "script cannot read the session: {cookies}");
    let list = client.source().await.unwrap();
    assert!(list.contains(&node_locked) && list.contains(&floating));
    screenshot(client, &shots, "licenses").await;

    // Open a license; show and regenerate its activation password.
    click_text(client, &node_locked).await;
    assert_eq!(path(client).await, format!("/licenses/{node_locked}"));
    screenshot(client, &shots, "license").await;
    click_text(client, "Show the activation password").await;
    let before = text_of(client, "#activation-password").await;
    click_text(client, "Regenerate the activation password…").await;
    assert!(client.source().await.unwrap().contains("stops working at once"));
    click_text(client, "Regenerate the password").await;
    let after = text_of(client, "#activation-password").await;
    assert_ne!(before, after, "a new activation password");
    assert_eq!(before.len(), after.len());

    // Manage Installations: deactivate a machine and see the count change.
    client.goto(&format!("{base}/licenses/{node_locked}/installations")).await.unwrap();
    assert!(text_of(client, "#deactivations-left").await.contains("3 deactivations left"));
    assert_eq!(client.find_all(Locator::Css("tbody tr")).await.unwrap().len(), 2);
    screenshot(client, &shots, "installations").await;
    click_and_wait(client, client.find(Locator::Css("tbody tr a.danger")).await.unwrap()).await;
    let confirm = client.source().await.unwrap();
    assert!(confirm.contains("after this one, 2 will be left"), "{confirm}");
    click_text(client, "Deactivate the installation").await;
    assert!(text_of(client, ".notice").await.contains("2 deactivations are left"));
    assert!(text_of(client, "#deactivations-left").await.contains("2 deactivations left"));
    // One machine is still active (it can be deactivated); the other is listed as deactivated.
    assert_eq!(client.find_all(Locator::Css("tbody tr a.danger")).await.unwrap().len(), 1);
    assert!(client.source().await.unwrap().contains("Deactivated 20"), "the deactivated one says when");
    click_text(client, "Installation and activation history").await;
    assert!(client.source().await.unwrap().contains("Deactivated in the portal"));

    // The usage chart and its CSV.
    client.goto(&format!("{base}/licenses/{floating}/usage")).await.unwrap();
    let usage = client.source().await.unwrap();
    assert!(usage.contains("2 of 2 seats in use"), "{usage}");
    assert!(usage.contains("alice") && usage.contains("bob"));
    let chart = text_of(client, "figure.chart figcaption").await;
    assert!(chart.contains("at most 2 of 2 seats") && chart.contains("1 checkout denied"), "{chart}");
    assert!(client.find(Locator::Css("svg[role=img] rect.denied")).await.is_ok(), "the denial is drawn");
    screenshot(client, &shots, "usage").await;
    let csv = client
        .execute_async(
            "const done = arguments[arguments.length - 1]; fetch(arguments[0]).then(r => r.text()).then(done);",
            vec![serde_json::json!(format!("/licenses/{floating}/usage.csv"))],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap();
    assert!(csv.starts_with("metric,day,subject,value\n"), "{csv}");
    assert!(csv.contains(&format!("license,,{floating},")), "{csv}");

    // Payments, on a desktop and on a phone.
    client.goto(&format!("{base}/payments")).await.unwrap();
    assert!(client.source().await.unwrap().contains("EUR 499.00"));
    screenshot(client, &shots, "payments").await;
    client.goto(&format!("{base}/payments/recurring")).await.unwrap();
    assert!(client.source().await.unwrap().contains(&node_locked));
    client.set_window_size(412, 900).await.unwrap();
    client.goto(&format!("{base}/licenses")).await.unwrap();
    screenshot(client, &shots, "licenses-phone").await;
    client.set_window_size(1280, 900).await.unwrap();

    // Log out, forget the password, follow the mail's link, set a new one, log in with it.
    click_text(client, "Log out").await;
    assert!(text_of(client, ".notice").await.contains("logged out"));
    client.goto(&format!("{base}/licenses")).await.unwrap();
    assert!(path(client).await.starts_with("/login"), "logged out for good");
    click_text(client, "Forgot your password?").await;
    fill(client, "login", &email).await;
    click_text(client, "Send the link").await;
    assert!(client.source().await.unwrap().contains("we have sent a mail"));
    let link = mailed_link(&app).await;
    assert!(link.starts_with(&format!("{base}/reset-password?token=rst_")), "{link}");
    client.goto(&link).await.unwrap();
    fill(client, "new_password", "too short").await;
    fill(client, "new_password_again", "too short").await;
    click_text(client, "Set the new password").await;
    assert!(
        text_of(client, "#new_password-error").await.contains("12 to 128 characters"),
        "the error is next to the field"
    );
    screenshot(client, &shots, "reset-password").await;
    fill(client, "new_password", "an evening by the lake").await;
    fill(client, "new_password_again", "an evening by the lake").await;
    click_text(client, "Set the new password").await;
    assert_eq!(path(client).await, "/login?notice=password_reset");
    fill(client, "login", &email).await;
    fill(client, "password", "an evening by the lake").await;
    click_text(client, "Log in").await;
    assert_eq!(path(client).await, "/licenses", "logged in with the new password");

    browser.client.close().await.unwrap();
}
