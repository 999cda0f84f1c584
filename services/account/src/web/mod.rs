//! The customer portal in a web browser: server-rendered HTML (askama templates in
//! `services/account/templates`, checked at compile time) with one small stylesheet of our own
//! and no script: every page works without JavaScript.
//!
//! Built on the same use cases as `AccountService` ([`Portal`]): a handler decodes the form,
//! calls one `Portal` method and renders; no rule is written twice. [`PAGES`] says where each
//! `AccountService` method is reached in a browser.
//!
//! # Layout
//! - [`router`]: the routes, with the security middleware ([`security`]).
//! - `auth`: log in and out, forgotten password, the reset page the mail links to; the
//!   logged-in customer (`Me`).
//! - `pages`: licenses, installations, history, usage, payments, account, activity.
//! - `view`: the layout, field errors, dates and amounts; `chart`: the usage chart as SVG.
//! - [`serve`]: the HTTP(S) server loop that stops with the server's drain.

mod auth;
mod chart;
mod pages;
pub mod security;
pub mod serve;
mod view;

use crate::portal::Portal;
use axum::routing::{get, post};
use axum::Router;
use licensing_domain::secrets::KeyedHasher;
use licensing_runtime::limiter::RateLimiter;
use std::time::Duration;

/// How the portal is served.
#[derive(Clone)]
pub struct WebSettings {
    /// The server's keyed-hash key: form tokens are keyed digests of the session (so every
    /// replica accepts the forms another rendered).
    pub keys: KeyedHasher,
    /// Served over TLS: cookies are `Secure` and `__Host-` prefixed, and HSTS is sent.
    pub secure: bool,
    /// Logins per client address: the gRPC port's own limiter for `AccountService/Login`, so a
    /// client has one budget on both ports.
    pub login_per_client: RateLimiter,
    /// Password reset requests and resets per client address, shared the same way.
    pub reset_per_client: RateLimiter,
    /// The longest a request may take.
    pub request_timeout: Duration,
    /// Requests served at once.
    pub concurrency_limit: usize,
}

/// What every handler shares.
#[derive(Clone)]
pub struct Web {
    portal: Portal,
    keys: KeyedHasher,
    secure: bool,
    login_limit: RateLimiter,
    reset_limit: RateLimiter,
    request_timeout: Duration,
}

/// Where each `AccountService` method is in the web portal: (method, HTTP method, path). Every
/// method of the service has a row (a test checks it against the API), so a customer reaches
/// in a browser everything the gRPC portal offers.
pub const PAGES: &[(&str, &str, &str)] = &[
    ("Login", "POST", "/login"),
    ("Logout", "POST", "/logout"),
    ("RequestPasswordReset", "POST", "/forgot-password"),
    ("ResetPassword", "POST", "/reset-password"),
    ("GetAccount", "GET", "/account"),
    ("ListMyLicenses", "GET", "/licenses"),
    ("GetMyLicense", "GET", "/licenses/{license_id}"),
    ("ListMyLeases", "GET", "/licenses/{license_id}/usage"),
    ("GetMySeatPolicy", "GET", "/licenses/{license_id}/usage"),
    ("GetMyUsageReport", "GET", "/licenses/{license_id}/usage.csv"),
    ("DeactivateInstallation", "POST", "/licenses/{license_id}/installations/{installation_id}/deactivate"),
    ("GetActivationPassword", "GET", "/licenses/{license_id}/activation-password"),
    ("RegenerateActivationPassword", "POST", "/licenses/{license_id}/activation-password/regenerate"),
    ("ReturnConcurrentLicense", "POST", "/licenses/{license_id}/return"),
    ("AssociateLicense", "POST", "/licenses/associate"),
    ("TransferLicense", "POST", "/licenses/{license_id}/transfer"),
    ("ListReceipts", "GET", "/payments"),
    ("ListMyAuditEvents", "GET", "/activity"),
    ("ChangePassword", "POST", "/account/password"),
    ("UpdateContactDetails", "POST", "/account/contact"),
    ("SetLicenseeName", "POST", "/licenses/{license_id}/licensee"),
    ("ListRecurringPayments", "GET", "/payments/recurring"),
    ("GetMyMeterUsage", "GET", "/licenses/{license_id}/meters.csv"),
];

/// The web portal's routes over `portal`.
pub fn router(portal: Portal, settings: WebSettings) -> Router {
    let web = Web {
        portal,
        keys: settings.keys,
        secure: settings.secure,
        login_limit: settings.login_per_client,
        reset_limit: settings.reset_per_client,
        request_timeout: settings.request_timeout,
    };
    Router::new()
        .route("/", get(auth::home))
        .route("/login", get(auth::login_page).post(auth::login))
        .route("/logout", post(auth::logout))
        .route("/forgot-password", get(auth::forgot_page).post(auth::forgot))
        .route("/reset-password", get(auth::reset_page).post(auth::reset))
        .route("/static/portal.css", get(auth::stylesheet))
        .route("/licenses", get(pages::licenses))
        .route("/licenses/associate", get(pages::associate_page).post(pages::associate))
        .route("/licenses/{license_id}", get(pages::license))
        .route("/licenses/{license_id}/licensee", post(pages::set_licensee))
        .route("/licenses/{license_id}/activation-password", get(pages::activation_password))
        .route(
            "/licenses/{license_id}/activation-password/regenerate",
            get(pages::regenerate_page).post(pages::regenerate),
        )
        .route("/licenses/{license_id}/installations", get(pages::installations))
        .route(
            "/licenses/{license_id}/installations/{installation_id}/deactivate",
            get(pages::deactivate_page).post(pages::deactivate),
        )
        .route("/licenses/{license_id}/history", get(pages::history))
        .route("/licenses/{license_id}/usage", get(pages::usage))
        .route("/licenses/{license_id}/usage.csv", get(pages::usage_csv))
        .route("/licenses/{license_id}/meters.csv", get(pages::meters_csv))
        .route("/licenses/{license_id}/return", get(pages::return_page).post(pages::return_license))
        .route("/licenses/{license_id}/transfer", get(pages::transfer_page).post(pages::transfer))
        .route("/payments", get(pages::payments))
        .route("/payments/recurring", get(pages::recurring))
        .route("/account", get(pages::account))
        .route("/account/contact", post(pages::update_contact))
        .route("/account/password", post(pages::change_password))
        .route("/activity", get(pages::activity))
        .fallback(|| async { view::not_found() })
        .layer(axum::middleware::from_fn_with_state(web.clone(), security::guard))
        .layer(security::SecurityHeadersLayer { secure: settings.secure })
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(settings.concurrency_limit.max(1)))
        .with_state(web)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_account_service_method_has_a_page() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(licensing_proto::FILE_DESCRIPTOR_SET).unwrap();
        let methods: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| f.service.iter())
            .filter(|s| s.name() == "AccountService")
            .flat_map(|s| s.method.iter().map(|m| m.name().to_owned()))
            .collect();
        assert!(methods.len() >= 20, "{methods:?}");
        for method in &methods {
            assert!(PAGES.iter().any(|(m, _, _)| m == method), "AccountService/{method} has no page in the web portal");
        }
        for (method, _, _) in PAGES {
            assert!(methods.iter().any(|m| m == method), "{method} is not an AccountService method");
        }
    }
}
