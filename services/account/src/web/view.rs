//! What every page shares: the layout, field errors, dates and amounts as people read them, and
//! the pages that answer a failure.

use crate::AccountError;
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use licensing_domain::clock::Millis;
use licensing_domain::model::{License, LicenseKind, LicenseStatus};
use std::collections::BTreeMap;

/// The logged-in account, as the header shows it.
pub(crate) struct MeView {
    pub customer_id: String,
    pub company_name: String,
}

/// What the base template needs.
pub(crate) struct Layout {
    pub title: String,
    /// `None` on pages seen logged out (no navigation, no logout form).
    pub me: Option<MeView>,
    /// The token every form of the page sends back.
    pub csrf: String,
    /// Which navigation entry is the current page.
    pub nav: &'static str,
    pub notice: Option<String>,
    /// A problem that concerns the whole page or form rather than one field.
    pub problem: Option<String>,
}

impl Layout {
    pub(crate) fn new(title: impl Into<String>, csrf: String) -> Self {
        Self { title: title.into(), me: None, csrf, nav: "", notice: None, problem: None }
    }
}

/// Errors of a form, by field name.
#[derive(Default)]
pub(crate) struct FieldErrors(BTreeMap<&'static str, String>);

impl FieldErrors {
    pub(crate) fn one(field: &'static str, message: impl Into<String>) -> Self {
        let mut errors = Self::default();
        errors.add(field, message);
        errors
    }
    pub(crate) fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.entry(field).or_insert_with(|| message.into());
    }
    pub(crate) fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
    pub(crate) fn get(&self, field: &str) -> Option<&str> {
        self.0.get(field).map(String::as_str)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Renders a page; a template that fails to render is our bug, answered 500.
pub(crate) fn page(template: impl Template) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "portal: a page failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "the page could not be shown").into_response()
        }
    }
}

/// A page with a status other than 200 (a form sent back with its errors, a refusal).
pub(crate) fn page_with(status: StatusCode, template: impl Template) -> Response {
    let mut response = page(template);
    if response.status() == StatusCode::OK {
        *response.status_mut() = status;
    }
    response
}

/// After a form: see the result with GET (so reloading does not send the form again).
pub(crate) fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

#[derive(Template)]
#[template(path = "error.html")]
pub(crate) struct ErrorPage {
    pub layout: Layout,
    pub heading: String,
    pub message: String,
    pub back: String,
    pub back_label: String,
}

/// A page for a failure that ends the request: not found, too many attempts, unavailable.
pub(crate) fn failure(status: StatusCode, heading: &str, message: String) -> Response {
    page_with(
        status,
        ErrorPage {
            layout: Layout::new(heading, String::new()),
            heading: heading.into(),
            message,
            back: "/licenses".into(),
            back_label: "Back to your licenses".into(),
        },
    )
}

pub(crate) fn not_found() -> Response {
    failure(
        StatusCode::NOT_FOUND,
        "Not found",
        "There is no such page in your account. Check the address, or start again from your licenses.".into(),
    )
}

/// The error of a use case, for requests whose only answer is a page (reads, links): the
/// account's own data or nothing. Forms show invalid input next to their fields before this.
pub(crate) fn refusal(error: AccountError) -> Response {
    use licensing_domain::error::ClassifiedError;
    match &error {
        AccountError::Unauthenticated { .. } => see_other("/login"),
        // An ID in a URL that is malformed, unknown or another account's: the same 404.
        AccountError::NotFound { .. } | AccountError::InvalidArgument { .. } => not_found(),
        AccountError::ResourceExhausted { message, retry_after, .. } => {
            let mut response = failure(StatusCode::TOO_MANY_REQUESTS, "Please wait", sentence(message));
            let seconds = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        AccountError::FailedPrecondition { message, .. } | AccountError::AlreadyExists(message) => {
            failure(StatusCode::CONFLICT, "Not possible now", sentence(message))
        }
        other if other.class() == licensing_domain::error::ErrorClass::Unavailable => {
            tracing::warn!(error = %other, "portal: a store is unavailable");
            failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                "The portal cannot reach its data for a moment. Try again in a minute.".into(),
            )
        }
        other => {
            tracing::error!(error = %other, "portal: request failed");
            failure(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Something went wrong",
                "This went wrong on our side and nothing was changed. Try again; if it keeps happening, contact your vendor.".into(),
            )
        }
    }
}

/// A message as a sentence: capital first letter, full stop.
pub(crate) fn sentence(message: &str) -> String {
    let message = message.trim();
    let mut chars = message.chars();
    let mut out: String = match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => return String::new(),
    };
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// The error of a form field, in plain words: "New password must be 12 to 128 characters long."
pub(crate) fn field_message(label: &str, message: &str) -> String {
    sentence(&format!("{label} {message}"))
}

/// A date as `YYYY-MM-DD` (UTC).
pub(crate) fn date(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(at).map(|t| t.strftime("%Y-%m-%d").to_string()).unwrap_or_else(|_| at.to_string())
}

/// An instant as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn instant(at: Millis) -> String {
    jiff::Timestamp::from_millisecond(at)
        .map(|t| t.strftime("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_else(|_| at.to_string())
}

pub(crate) fn optional_date(at: Option<Millis>, none: &str) -> String {
    at.map_or_else(|| none.to_owned(), date)
}

/// An amount in minor units as people write it: `EUR 499.00`.
pub(crate) fn money(amount_minor: i64, currency: &str) -> String {
    const NO_MINOR_UNITS: [&str; 6] = ["JPY", "KRW", "VND", "CLP", "ISK", "UGX"];
    if NO_MINOR_UNITS.contains(&currency) {
        return format!("{currency} {amount_minor}");
    }
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    format!("{currency} {sign}{}.{:02}", abs / 100, abs % 100)
}

pub(crate) fn months(n: i32) -> String {
    match n {
        1 => "month".into(),
        12 => "year".into(),
        n if n % 12 == 0 => format!("{} years", n / 12),
        n => format!("{n} months"),
    }
}

pub(crate) fn kind(kind: LicenseKind) -> &'static str {
    match kind {
        LicenseKind::NodeLocked => "Node-locked",
        LicenseKind::Concurrent => "Concurrent",
        LicenseKind::Cloud => "Cloud",
        LicenseKind::Server => "Server (on-premises)",
    }
}

pub(crate) fn status(status: LicenseStatus) -> &'static str {
    match status {
        LicenseStatus::Active => "Active",
        LicenseStatus::Suspended => "Suspended",
        LicenseStatus::Retired => "Retired",
    }
}

/// A license as a row of a table or the head of its page.
pub(crate) struct LicenseRow {
    pub license_id: String,
    pub product: String,
    pub kind: &'static str,
    pub seats: String,
    pub status: &'static str,
    pub status_class: &'static str,
    pub expires: String,
    pub upgrades: String,
}

impl LicenseRow {
    /// The row of `l` as of `now` (the portal's clock): a license in its grace period says until
    /// when, next to its expiry.
    pub(crate) fn of(l: &License, now: Millis) -> Self {
        let expires = match l.in_grace(now) {
            Some(end) => format!("{} (expired; in grace until {})", optional_date(l.expires_at, "Never"), date(end)),
            None => optional_date(l.expires_at, "Never"),
        };
        Self {
            license_id: l.license_id.clone(),
            product: l.product_code.clone(),
            kind: kind(l.kind),
            seats: if l.kind == LicenseKind::Cloud { "—".into() } else { l.seats.to_string() },
            status: status(l.status),
            status_class: l.status.as_str(),
            expires,
            upgrades: optional_date(l.upgrades_until, "Every version"),
        }
    }
}

/// "Previous / Page n of m / Next" links over `total` items, `per_page` each.
pub(crate) struct Pager {
    pub page: usize,
    pub pages: usize,
    pub prev: Option<String>,
    /// What the link back says: "Previous" between numbered pages, "First page" between keyset
    /// pages (which know only the way on).
    pub prev_label: &'static str,
    pub next: Option<String>,
}

impl Pager {
    /// Pages that continue from a token (newest first): a link on while there is more, and one
    /// back to the first page once past it.
    pub(crate) fn keyset(first: Option<String>, next: Option<String>) -> Self {
        Self { page: 0, pages: 0, prev: first, prev_label: "First page", next }
    }

    /// `link(n)` is the URL of page `n`; `page` is clamped to the pages there are.
    pub(crate) fn new(total: usize, per_page: usize, page: usize, link: impl Fn(usize) -> String) -> Self {
        let pages = total.div_ceil(per_page).max(1);
        let page = page.clamp(1, pages);
        Self {
            page,
            pages,
            prev: (page > 1).then(|| link(page - 1)),
            prev_label: "Previous",
            next: (page < pages).then(|| link(page + 1)),
        }
    }

    /// The items of the current page.
    pub(crate) fn slice<'a, T>(&self, items: &'a [T], per_page: usize) -> &'a [T] {
        let start = (self.page - 1) * per_page;
        &items[start.min(items.len())..(start + per_page).min(items.len())]
    }
}

/// "Showing 1–20 of 45 installations".
pub(crate) fn shown(pager: &Pager, per_page: usize, total: usize, what: &str) -> String {
    if total == 0 {
        return format!("No {what}");
    }
    let first = (pager.page - 1) * per_page + 1;
    let last = (pager.page * per_page).min(total);
    format!("Showing {first}–{last} of {total} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_amounts_and_sentences_read_as_people_write_them() {
        let at = licensing_domain::clock::parse_instant("2027-02-28T09:05:00Z").unwrap();
        assert_eq!(date(at), "2027-02-28");
        assert_eq!(instant(at), "2027-02-28 09:05 UTC");
        assert_eq!(money(49_900, "EUR"), "EUR 499.00");
        assert_eq!(money(-5, "USD"), "USD -0.05");
        assert_eq!(money(1200, "JPY"), "JPY 1200");
        assert_eq!(months(12), "year");
        assert_eq!(months(3), "3 months");
        assert_eq!(
            field_message("New password", "must be 12 to 128 characters long"),
            "New password must be 12 to 128 characters long."
        );
    }

    #[test]
    fn a_license_in_its_grace_period_shows_until_when() {
        let at = |text: &str| licensing_domain::clock::parse_instant(text).unwrap();
        let license = License {
            license_id: "lic_X".into(),
            product_code: "cad".into(),
            customer_id: "cus_X".into(),
            kind: LicenseKind::NodeLocked,
            status: LicenseStatus::Active,
            seats: 1,
            allowed_deactivations: 1,
            activations_used: 0,
            deactivations_used: 0,
            modules: vec![],
            module_entitlements: Default::default(),
            valid_from: 0,
            expires_at: Some(at("2027-03-01")),
            grace_period_ms: 14 * licensing_domain::clock::DAY,
            upgrades_until: None,
            associated_customer_id: None,
            portal_deactivation_counts: true,
            replaces_license_id: None,
            notes: String::new(),
            licensee_name: String::new(),
            seat_policy: Default::default(),
            meters: Vec::new(),
            heartbeat_timeout_ms: None,
            policy_id: None,
            policy_revision: 0,
            first_use: None,
            server_grants: Vec::new(),
            created_at: 0,
            updated_at: 0,
        };
        assert_eq!(LicenseRow::of(&license, at("2027-02-01")).expires, "2027-03-01");
        assert_eq!(
            LicenseRow::of(&license, at("2027-03-02")).expires,
            "2027-03-01 (expired; in grace until 2027-03-15)"
        );
        assert_eq!(LicenseRow::of(&license, at("2027-03-15")).expires, "2027-03-01");
    }

    #[test]
    fn a_pager_clamps_and_links() {
        let pager = Pager::new(45, 20, 9, |n| format!("?page={n}"));
        assert_eq!((pager.page, pager.pages), (3, 3));
        assert_eq!(pager.prev.as_deref(), Some("?page=2"));
        assert!(pager.next.is_none());
        let items: Vec<usize> = (0..45).collect();
        assert_eq!(pager.slice(&items, 20), &items[40..45]);
        assert_eq!(shown(&pager, 20, 45, "installations"), "Showing 41–45 of 45 installations");
    }
}
