//! The web portal's defences over plain HTTP: forms refused without their CSRF token or from
//! another site (and nothing changed), another customer's license a 404 that reveals nothing,
//! the security headers, the session cookie out of reach of script, logout ending the session,
//! escaped output, and every `AccountService` method routed.

use crate::common::*;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use licensing_proto::account::v1 as pb;
use licensing_proto::common::v1::LicenseKind;
use std::collections::HashMap;

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    /// The `Set-Cookie` line that sets `name`.
    pub fn set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_owned)
    }

    /// The value of the page's first hidden `csrf` field.
    pub fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form with a csrf field") + 19;
        self.body[start..].split('"').next().unwrap().to_owned()
    }
}

/// A client that keeps cookies like a browser, for one portal.
pub struct Visitor {
    base: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
    pub cookies: HashMap<String, String>,
}

impl Visitor {
    pub fn new(app: &TestApp) -> Self {
        Self {
            base: format!("http://{}", app.portal_addr.expect("the test server serves the portal")),
            client: Client::builder(TokioExecutor::new()).build_http(),
            cookies: HashMap::new(),
        }
    }

    pub async fn send(&mut self, method: &str, path: &str, form: &[(&str, &str)], extra: &[(&str, &str)]) -> Answer {
        let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let mut request = http::Request::builder().method(method).uri(format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let jar: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
            request = request.header("cookie", jar.join("; "));
        }
        if method == "POST" {
            request = request.header("content-type", "application/x-www-form-urlencoded");
        }
        for (k, v) in extra {
            request = request.header(*k, *v);
        }
        let response = self.client.request(request.body(Full::from(body)).unwrap()).await.expect("the portal answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        for line in headers.get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()) {
            let (pair, attributes) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').unwrap();
            if value.is_empty() || attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let body = String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned();
        Answer { status, headers, body }
    }

    pub async fn get(&mut self, path: &str) -> Answer {
        self.send("GET", path, &[], &[]).await
    }

    pub async fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Answer {
        self.send("POST", path, form, &[]).await
    }

    /// Logs in through the login form; returns the answer to the form.
    pub async fn log_in(&mut self, login: &str, password: &str) -> Answer {
        let token = self.get("/login").await.csrf();
        self.post("/login", &[("csrf", &token), ("login", login), ("password", password)]).await
    }
}

async fn activation_password(app: &TestApp, session: &str, license_id: &str) -> String {
    portal(app)
        .await
        .get_activation_password(with_token(
            session,
            pb::GetActivationPasswordRequest { license_id: license_id.into() },
        ))
        .await
        .unwrap()
        .into_inner()
        .activation_password
}

#[tokio::test]
async fn a_form_without_its_token_or_from_another_site_is_refused_and_changes_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| r.associate = true).await;
    let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
    let before = activation_password(&app, &session, &license_id).await;

    let mut browser = Visitor::new(&app);
    let answer = browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.header("location"), "/licenses");
    let page = browser.get(&format!("/licenses/{license_id}")).await;
    assert_eq!(page.status, 200);
    let token = page.csrf();
    let regenerate = format!("/licenses/{license_id}/activation-password/regenerate");
    let licensee = format!("/licenses/{license_id}/licensee");

    for (what, form, headers) in [
        ("no token", vec![], vec![]),
        ("a wrong token", vec![("csrf", "0".repeat(64))], vec![]),
        ("another session's token", vec![("csrf", "f".repeat(64))], vec![]),
        ("another site's page", vec![("csrf", token.clone())], vec![("origin", "https://evil.example")]),
        ("a cross-site request", vec![("csrf", token.clone())], vec![("sec-fetch-site", "cross-site")]),
    ] {
        let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
        for path in [&regenerate, &licensee] {
            let mut form = form.clone();
            form.push(("licensee_name", "Mallory"));
            let answer = browser.send("POST", path, &form, &headers).await;
            assert_eq!(answer.status, 403, "{what} on {path}");
            assert!(answer.body.contains("nothing was done"), "{what}: {}", answer.body);
        }
    }
    assert_eq!(activation_password(&app, &session, &license_id).await, before, "the password was not regenerated");
    assert_eq!(get_license(&app, &license_id).await.licensee_name, "", "the licensee name was not changed");

    // A form from a page of this site, with the page's token, is done.
    let origin = format!("http://{}", app.portal_addr.unwrap());
    let answer = browser
        .send("POST", &licensee, &[("csrf", &token), ("licensee_name", "Acme Research")], &[("origin", &origin)])
        .await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(get_license(&app, &license_id).await.licensee_name, "Acme Research");
    // A form sent before logging in (the login form) needs its token too.
    let mut stranger = Visitor::new(&app);
    stranger.get("/login").await;
    let answer = stranger.post("/login", &[("login", &f.customer_id), ("password", CUSTOMER_PASSWORD)]).await;
    assert_eq!(answer.status, 403);
    assert!(!stranger.cookies.contains_key("portal_session"), "no session without the token");
}

#[tokio::test]
async fn another_customers_license_is_a_404_that_reveals_nothing() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (theirs, _, _) = issue_license(&app, &f, LicenseKind::Concurrent, 4, |r| r.associate = true).await;
    let other =
        create_customer(&app, "Globex", &format!("{}@g.example", licensing_domain::ids::new_id("m").to_lowercase()))
            .await;
    let mut browser = Visitor::new(&app);
    assert_eq!(browser.log_in(&other, CUSTOMER_PASSWORD).await.status, 303);
    let missing = "lic_0000000000000000";
    for suffix in [
        "",
        "/installations",
        "/history",
        "/usage",
        "/usage.csv",
        "/meters.csv",
        "/activation-password",
        "/transfer",
        "/return",
    ] {
        let foreign = browser.get(&format!("/licenses/{theirs}{suffix}")).await;
        let unknown = browser.get(&format!("/licenses/{missing}{suffix}")).await;
        assert_eq!(foreign.status, 404, "{suffix}: {}", foreign.body);
        assert_eq!(foreign.body, unknown.body, "{suffix}: another account's license reads as one that does not exist");
        assert!(!foreign.body.contains(&f.product) && !foreign.body.contains("Acme"), "{suffix}");
    }
    let token = browser.get("/licenses").await.csrf();
    let answer =
        browser.post(&format!("/licenses/{theirs}/licensee"), &[("csrf", &token), ("licensee_name", "Globex")]).await;
    assert_eq!(answer.status, 404);
    assert_eq!(get_license(&app, &theirs).await.licensee_name, "", "nothing changed");
}

#[tokio::test]
async fn pages_carry_the_security_headers_and_the_session_cookie_is_out_of_reach_of_script() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let mut browser = Visitor::new(&app);
    let login_page = browser.get("/login").await;
    let stylesheet = browser.get("/static/portal.css").await;
    let missing = browser.get("/no/such/page").await;
    for (what, answer) in [("login", &login_page), ("stylesheet", &stylesheet), ("404", &missing)] {
        let csp = answer.header("content-security-policy");
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert_eq!(answer.header("x-content-type-options"), "nosniff", "{what}");
        assert_eq!(answer.header("referrer-policy"), "same-origin", "{what}");
        assert_eq!(answer.header("x-frame-options"), "DENY", "{what}");
        assert!(answer.header("strict-transport-security").is_empty(), "{what}: no HSTS over plain HTTP");
    }
    assert_eq!(login_page.header("cache-control"), "no-store");
    assert!(stylesheet.header("content-type").starts_with("text/css"));
    assert_eq!(missing.status, 404);

    let answer = browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await;
    let cookie = answer.set_cookie("portal_session").expect("a session cookie");
    for attribute in ["HttpOnly", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    let token = cookie.split(';').next().unwrap().split_once('=').unwrap().1;
    assert!(token.starts_with("ses_"));
    assert!(!answer.header("location").contains("ses_"), "never in a URL");
    let licenses = browser.get("/licenses").await;
    assert!(!licenses.body.contains(token), "the session token is never in a page");
}

#[tokio::test]
async fn logout_ends_the_session_everywhere() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let mut browser = Visitor::new(&app);
    browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await;
    let token = browser.cookies["portal_session"].clone();
    let page = browser.get("/licenses").await;
    assert_eq!(page.status, 200);
    let answer = browser.post("/logout", &[("csrf", &page.csrf())]).await;
    assert_eq!((answer.status, answer.header("location")), (303, "/login?notice=logged_out"));
    assert!(!browser.cookies.contains_key("portal_session"), "the cookie is cleared");

    // The old cookie, sent again, is worth nothing: on the web and over gRPC.
    browser.cookies.insert("portal_session".into(), token.clone());
    let answer = browser.get("/licenses").await;
    assert_eq!(answer.status, 303);
    assert!(answer.header("location").starts_with("/login"), "{}", answer.header("location"));
    let err = portal(&app).await.get_account(with_token(&token, pb::GetAccountRequest {})).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
}

#[tokio::test]
async fn what_a_customer_typed_is_shown_escaped() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    let (license_id, _, _) = issue_license(&app, &f, LicenseKind::NodeLocked, 2, |r| r.associate = true).await;
    let session = login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.unwrap();
    let hostile = r#"<script>alert("x")</script><img src=x onerror=alert(1)>"#;
    portal(&app)
        .await
        .set_licensee_name(with_token(
            &session,
            pb::SetLicenseeNameRequest { license_id: license_id.clone(), licensee_name: hostile.into() },
        ))
        .await
        .unwrap();
    let mut browser = Visitor::new(&app);
    browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await;
    let page = browser.get(&format!("/licenses/{license_id}")).await;
    assert!(!page.body.contains("<script>") && !page.body.contains("<img src=x"), "{}", page.body);
    assert!(page.body.contains("&#60;script&#62;") || page.body.contains("&lt;script&gt;"), "shown as text");
    let search = browser.get("/licenses?q=%3Cscript%3Ealert(1)%3C/script%3E").await;
    assert!(!search.body.contains("<script>"), "a query is shown escaped too");
}

#[tokio::test]
async fn every_account_service_method_is_routed_in_the_web_portal() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut browser = Visitor::new(&app);
    for (method, verb, path) in licensing_account::web::PAGES {
        let path =
            path.replace("{license_id}", "lic_0000000000000000").replace("{installation_id}", "ins_0000000000000000");
        // Logged out: a page redirects to the login, a form-only path refuses GET (405); only an
        // unknown path answers 404.
        let answer = browser.get(&path).await;
        assert_ne!(answer.status, 404, "{method}: {verb} {path} is not served");
    }
}

#[tokio::test]
async fn the_reset_mail_links_to_the_portals_own_reset_page() {
    let app = spawn_app(Backend::Sqlite).await;
    let f = fixture(&app).await;
    portal(&app)
        .await
        .request_password_reset(pb::RequestPasswordResetRequest { login: f.customer_id.clone() })
        .await
        .unwrap();
    let link = mailed_link(&app).await;
    let base = format!("http://{}/reset-password?token=rst_", app.portal_addr.unwrap());
    assert!(link.starts_with(&base), "{link}");
    let mut browser = Visitor::new(&app);
    let page = browser.get(link.strip_prefix(&format!("http://{}", app.portal_addr.unwrap())).unwrap()).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("New password again"), "{}", page.body);
}

/// The link in the newest mail of the outbox.
pub async fn mailed_link(app: &TestApp) -> String {
    for _ in 0..100 {
        for entry in std::fs::read_dir(app.data_dir.path().join("outbox")).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if let Some(link) = text.split_whitespace().find(|w| w.starts_with("http") && w.contains("token=")) {
                let _ = std::fs::remove_file(entry.path());
                return link.to_owned();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no mail with a link in the outbox");
}

#[tokio::test]
async fn grpc_web_calls_from_a_configured_origin_only() {
    use hyper_util::client::legacy::Client;
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let origin = "https://app.vendor.example";
    let call = |addr: std::net::SocketAddr, method: &'static str, origin: &'static str| {
        let client = client.clone();
        async move {
            // One empty GetAccountRequest message, framed; no session: UNAUTHENTICATED.
            let body = if method == "POST" { vec![0u8, 0, 0, 0, 0] } else { vec![] };
            let request = http::Request::builder()
                .method(method)
                .uri(format!("http://{addr}/licensing.account.v1.AccountService/GetAccount"))
                .header("origin", origin)
                .header("content-type", "application/grpc-web+proto")
                .header("x-grpc-web", "1")
                .header("access-control-request-method", "POST")
                .header("access-control-request-headers", "content-type,x-grpc-web,authorization")
                .body(Full::from(body))
                .unwrap();
            client.request(request).await
        }
    };

    let dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, dir.path()).await;
    env.insert("LICENSING_GRPC_WEB_ORIGINS".into(), origin.into());
    let app = spawn_with_env(Backend::Sqlite, dir, env).await;
    let preflight = call(app.addr, "OPTIONS", "https://app.vendor.example").await.unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin);
    assert!(preflight.headers()["access-control-allow-headers"].to_str().unwrap().contains("authorization"));
    let answer = call(app.addr, "POST", "https://app.vendor.example").await.unwrap();
    assert_eq!(answer.headers()["access-control-allow-origin"], origin);
    assert!(answer.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web"));
    let headers = answer.headers().clone();
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    let trailers = String::from_utf8_lossy(&body).to_lowercase();
    let status = headers.get("grpc-status").map(|v| v.to_str().unwrap().to_owned());
    assert!(status.as_deref() == Some("16") || trailers.contains("grpc-status:16"), "{headers:?} {trailers}");
    let elsewhere = call(app.addr, "OPTIONS", "https://evil.example").await.unwrap();
    assert!(elsewhere.headers().get("access-control-allow-origin").is_none(), "another origin is not allowed");
    app.stop().await;

    // Off by default: the gRPC port speaks HTTP/2 only.
    let app = spawn_app(Backend::Sqlite).await;
    assert!(call(app.addr, "POST", "https://app.vendor.example").await.is_err(), "no HTTP/1.1 on the gRPC port");
}

/// A client address has one login budget, whether it logs in over gRPC or in the browser: the
/// portal shares the gRPC port's per-client limiter.
#[tokio::test]
async fn a_client_has_one_login_budget_across_grpc_and_the_browser() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut env = test_env(Backend::Sqlite, data_dir.path()).await;
    env.insert("LICENSING_RATE_LOGIN_PER_CLIENT".into(), "3/min".into());
    let app = spawn_with_env(Backend::Sqlite, data_dir, env).await;
    let f = fixture(&app).await;
    for _ in 0..3 {
        login(&app, &f.customer_id, CUSTOMER_PASSWORD).await.expect("within the budget");
    }
    let mut browser = Visitor::new(&app);
    let answer = browser.log_in(&f.customer_id, CUSTOMER_PASSWORD).await;
    assert_eq!(answer.status, 429, "the browser shares the budget the gRPC logins spent: {}", answer.body);
    assert!(answer.header("retry-after").parse::<u64>().is_ok_and(|s| s >= 1));
}
