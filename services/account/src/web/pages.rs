//! The pages of a logged-in customer. Each handler reads the request, calls one [`Portal`] use
//! case (the same as `AccountService`'s) and renders; the rules live in the use cases.
//!
//! [`Portal`]: crate::portal::Portal

use super::auth::{ClientIp, Me};
use super::view::{
    date, field_message, instant, money, months, page, page_with, refusal, see_other, sentence, shown, FieldErrors,
    Layout, LicenseRow, Pager,
};
use super::Web;
use crate::portal::{ContactForm, ServerDetails};
use crate::AccountError;
use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use licensing_domain::meter::MeterUsage;
use licensing_domain::model::{License, LicenseKind, LicenseStatus, Page, UNLIMITED};
use licensing_domain::server_usage::GrantKind;
use serde::Deserialize;

/// The most licenses one account lists (read in pages of the store's largest).
const MAX_LISTED: usize = 10_000;
const LICENSES_PER_PAGE: usize = 50;
/// From this many licenses on, the list has a search box.
const SEARCH_FROM: usize = 10;
const INSTALLATIONS_PER_PAGE: usize = 20;
const HISTORY_PER_PAGE: usize = 50;
const ACTIVITY_PER_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub(crate) struct Notice {
    #[serde(default)]
    notice: String,
    /// Deactivations left (a number; text because flattened query fields arrive as text).
    #[serde(default)]
    left: String,
    #[serde(default)]
    installation: String,
    #[serde(default)]
    license: String,
}

impl Notice {
    /// The sentence for a notice code a form redirected with; unknown codes show nothing (no
    /// text from the URL is ever shown as is).
    fn text(&self) -> Option<String> {
        let installation: String =
            self.installation.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
        let license: String =
            self.license.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(40).collect();
        Some(match self.notice.as_str() {
            "deactivated" => match self.left.parse::<i32>().ok() {
                Some(UNLIMITED) | None => format!("Installation {installation} is deactivated."),
                Some(n) => format!("Installation {installation} is deactivated. {}", deactivations_left_sentence(n)),
            },
            "licensee" => "The licensee name is saved.".into(),
            "associated" => "The license is now associated with your account.".into(),
            "transferred" => format!("License {license} was transferred and has left your account."),
            "contact" => "Your contact details are saved.".into(),
            "password" => "The password was changed. Every other session of your account was logged out.".into(),
            _ => return None,
        })
    }
}

fn deactivations_left_sentence(left: i32) -> String {
    match left {
        UNLIMITED => "Deactivations are unlimited.".into(),
        0 => "No deactivations are left.".into(),
        1 => "1 deactivation is left.".into(),
        n => format!("{n} deactivations are left."),
    }
}

// ---------------------------------------------------------------------------------------------
// Licenses & Activations.
// ---------------------------------------------------------------------------------------------

pub(crate) struct Column {
    pub label: &'static str,
    pub href: String,
    /// "ascending", "descending" or "none" (for aria-sort).
    pub sorted: &'static str,
}

#[derive(Template)]
#[template(path = "licenses.html")]
pub(crate) struct LicensesPage {
    pub layout: Layout,
    pub customer_id: String,
    pub total: usize,
    pub show_search: bool,
    pub q: String,
    pub sort: String,
    pub dir: String,
    pub columns: Vec<Column>,
    pub rows: Vec<LicenseRow>,
    pub shown: String,
    pub pager: Pager,
}

#[derive(Deserialize, Default)]
pub(crate) struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    dir: String,
    #[serde(default)]
    page: String,
    #[serde(flatten)]
    notice: Notice,
}

/// A page number from a query (anything else is the first page).
fn page_number(text: &str) -> usize {
    text.parse().unwrap_or(1)
}

const SORTS: &[(&str, &str)] = &[
    ("license", "License ID"),
    ("product", "Product"),
    ("kind", "Kind"),
    ("seats", "Seats"),
    ("status", "Status"),
    ("expires", "Expires"),
    ("upgrades", "Upgrades until"),
];

fn sort_key(sort: &str, l: &License) -> (i64, String) {
    // Unset dates sort after every date ("never" is the latest).
    let date = |d: Option<i64>| d.unwrap_or(i64::MAX);
    match sort {
        "product" => (0, l.product_code.clone()),
        "kind" => (0, l.kind.as_str().into()),
        "seats" => (i64::from(l.seats), String::new()),
        "status" => (0, l.status.as_str().into()),
        "expires" => (date(l.expires_at), String::new()),
        "upgrades" => (date(l.upgrades_until), String::new()),
        _ => (0, l.license_id.clone()),
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Every license of the account (up to [`MAX_LISTED`]), through the paged use case.
async fn all_licenses(web: &Web, me: &str) -> Result<Vec<License>, AccountError> {
    let mut all: Vec<License> = vec![];
    loop {
        let page =
            Page { after: all.last().map(|l| l.license_id.clone()), limit: licensing_domain::model::MAX_PAGE_SIZE };
        let batch = web.portal.licenses(me, &page).await?;
        let done = (batch.len() as u32) < page.limit;
        all.extend(batch);
        if done || all.len() >= MAX_LISTED {
            return Ok(all);
        }
    }
}

pub(crate) async fn licenses(State(web): State<Web>, me: Me, Query(q): Query<ListQuery>) -> Response {
    let all = match all_licenses(&web, &me.customer_id).await {
        Ok(all) => all,
        Err(e) => return refusal(e),
    };
    let total = all.len();
    let needle = q.q.trim().to_lowercase();
    let mut matching: Vec<&License> = all
        .iter()
        .filter(|l| {
            needle.is_empty()
                || [
                    &l.license_id,
                    &l.product_code,
                    &l.licensee_name,
                    &l.kind.as_str().to_owned(),
                    &l.status.as_str().to_owned(),
                ]
                .iter()
                .any(|field| field.to_lowercase().contains(&needle))
        })
        .collect();
    let sort = SORTS.iter().find(|(key, _)| *key == q.sort).map_or("license", |(key, _)| *key);
    let descending = q.dir == "desc";
    matching.sort_by(|a, b| {
        let order = sort_key(sort, a).cmp(&sort_key(sort, b)).then_with(|| a.license_id.cmp(&b.license_id));
        if descending {
            order.reverse()
        } else {
            order
        }
    });
    let dir = if descending { "desc" } else { "asc" };
    let link = |sort: &str, dir: &str, page: usize| {
        let mut href = format!("/licenses?sort={sort}&dir={dir}");
        if !needle.is_empty() {
            href.push_str(&format!("&q={}", encode(q.q.trim())));
        }
        if page > 1 {
            href.push_str(&format!("&page={page}"));
        }
        href
    };
    let columns = SORTS
        .iter()
        .map(|(key, label)| {
            let current = *key == sort;
            Column {
                label,
                href: link(key, if current && !descending { "desc" } else { "asc" }, 1),
                sorted: match (current, descending) {
                    (false, _) => "none",
                    (true, false) => "ascending",
                    (true, true) => "descending",
                },
            }
        })
        .collect();
    let pager = Pager::new(matching.len(), LICENSES_PER_PAGE, page_number(&q.page), |n| link(sort, dir, n));
    let now = web.portal.now_millis();
    let rows = pager.slice(&matching, LICENSES_PER_PAGE).iter().map(|l| LicenseRow::of(l, now)).collect();
    let mut layout = me.layout("Licenses & Activations", "licenses");
    layout.notice = q.notice.text();
    page(LicensesPage {
        layout,
        customer_id: me.customer_id.clone(),
        total,
        show_search: total >= SEARCH_FROM || !needle.is_empty(),
        shown: shown(&pager, LICENSES_PER_PAGE, matching.len(), "licenses"),
        q: q.q.trim().to_owned(),
        sort: sort.to_owned(),
        dir: dir.to_owned(),
        columns,
        rows,
        pager,
    })
}

#[derive(Template)]
#[template(path = "license.html")]
pub(crate) struct LicensePage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub l: LicenseRow,
    pub seats_label: &'static str,
    pub node_locked: bool,
    pub concurrent: bool,
    pub active: bool,
    pub activations_used: i32,
    pub deactivations_left: String,
    pub valid_from: String,
    pub replaces: Option<String>,
    pub modules: Vec<String>,
    pub licensee_name: String,
    pub licensee_shown: String,
    pub installations: usize,
    pub meters: Vec<MeterRow>,
    /// How the license's time counts from its first use, when it does.
    pub first_use: Option<String>,
    /// A server license: its grants, its servers and their latest usage reports.
    pub server: Option<ServerCard>,
}

/// What the license page shows of a server license.
pub(crate) struct ServerCard {
    /// `product` or `product/feature`, floating seats, node-locked activations.
    pub grants: Vec<(String, i32, i32)>,
    pub servers: Vec<ServerRow>,
    /// One row per grant of each report, newest report first.
    pub usage: Vec<UsageRow>,
}

pub(crate) struct ServerRow {
    pub installation_id: String,
    pub name: String,
    pub serial: i64,
    pub activated: String,
}

pub(crate) struct UsageRow {
    pub period: String,
    pub installation_id: String,
    pub grant: String,
    pub kind: &'static str,
    pub granted: i32,
    pub peak: i32,
    pub checkouts: i64,
    pub denials: i64,
    pub seat_hours: String,
}

impl ServerCard {
    fn of(l: &License, details: &ServerDetails) -> Self {
        Self {
            grants: l.server_grants.iter().map(|g| (g.name(), g.floating_seats, g.node_locked_activations)).collect(),
            servers: details
                .servers
                .iter()
                .map(|a| ServerRow {
                    installation_id: a.installation_id.clone(),
                    name: a.machine_name.clone(),
                    serial: a.server_serial,
                    activated: instant(a.activated_at),
                })
                .collect(),
            usage: details
                .reports
                .iter()
                .flat_map(|r| {
                    r.grants.iter().map(move |g| UsageRow {
                        period: format!("{} – {}", instant(r.period_start), instant(r.period_end)),
                        installation_id: r.installation_id.clone(),
                        grant: match g.feature.as_str() {
                            "" => g.product_code.clone(),
                            f => format!("{}/{f}", g.product_code),
                        },
                        kind: match g.kind {
                            GrantKind::Floating => "Floating seats",
                            GrantKind::NodeLocked => "Node-locked",
                        },
                        granted: g.granted,
                        peak: g.peak_in_use,
                        checkouts: g.checkouts,
                        denials: g.denials,
                        seat_hours: format!("{:.1}", g.seat_seconds as f64 / 3600.0),
                    })
                })
                .collect(),
        }
    }
}

/// A meter's use in its current period, as the license page shows it.
pub(crate) struct MeterRow {
    pub code: String,
    pub used: i64,
    pub limit: i64,
    pub remaining: i64,
    pub overage: String,
    pub resets: String,
}

impl MeterRow {
    fn of(u: &MeterUsage) -> Self {
        Self {
            code: u.meter.code.clone(),
            used: u.used,
            limit: u.meter.limit,
            remaining: u.remaining(),
            overage: match u.meter.overage {
                0 => "None".into(),
                allowed => format!("{} of {allowed} used", u.overage_used()),
            },
            resets: u.period.end.map_or_else(|| "Never".into(), date),
        }
    }
}

fn deactivations_left(l: &License) -> String {
    match l.deactivations_left() {
        UNLIMITED => "Unlimited".into(),
        n => format!("{n} of {}", l.allowed_deactivations),
    }
}

async fn license_page(
    web: &Web,
    me: &Me,
    license_id: &str,
    errors: FieldErrors,
    typed: Option<String>,
    notice: Option<String>,
) -> Response {
    let license = match web.portal.my_license(&me.customer_id, license_id).await {
        Ok(l) => l,
        Err(e) => return refusal(e),
    };
    let l = &license;
    let product_modules = match web.portal.product_modules(&l.product_code).await {
        Ok(m) => m,
        Err(e) => return refusal(e),
    };
    let modules = l
        .modules
        .iter()
        .map(|code| match product_modules.iter().find(|m| &m.code == code) {
            Some(m) if m.name != m.code => format!("{} ({})", m.name, m.code),
            _ => code.clone(),
        })
        .collect();
    let meters = match l.meters.is_empty() {
        true => Vec::new(),
        false => match web.portal.meter_usage(&me.customer_id, license_id).await {
            Ok((current, _)) => current.iter().map(MeterRow::of).collect(),
            Err(e) => return refusal(e),
        },
    };
    let server = match l.kind {
        LicenseKind::Server => match web.portal.server_details(&me.customer_id, license_id).await {
            Ok((_, details)) => Some(ServerCard::of(l, &details)),
            Err(e) => return refusal(e),
        },
        _ => None,
    };
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    let mut layout = me.layout(format!("License {}", l.license_id), "licenses");
    layout.notice = notice;
    page_with(
        status,
        LicensePage {
            layout,
            errors,
            l: LicenseRow::of(l, web.portal.now_millis()),
            seats_label: match l.kind {
                LicenseKind::NodeLocked => "Activations allowed",
                LicenseKind::Concurrent => "Seats",
                LicenseKind::Cloud => "Seats",
                LicenseKind::Server => "Servers allowed",
            },
            node_locked: l.kind == LicenseKind::NodeLocked,
            concurrent: l.kind == LicenseKind::Concurrent,
            active: l.status == LicenseStatus::Active,
            activations_used: l.activations_used,
            deactivations_left: deactivations_left(l),
            valid_from: date(l.valid_from),
            replaces: l.replaces_license_id.clone(),
            modules,
            licensee_name: typed.unwrap_or_else(|| l.licensee_name.clone()),
            licensee_shown: if l.licensee_name.is_empty() { me.company_name.clone() } else { l.licensee_name.clone() },
            installations: usize::try_from(l.activations_used).unwrap_or(0),
            meters,
            first_use: l.first_use.as_ref().map(|f| match f.started_at {
                Some(at) => format!("Counted from its first use on {}", date(at)),
                None => match f.validity_ms {
                    Some(v) => {
                        format!("Starts at its first use; valid {} days from then", v / licensing_domain::clock::DAY)
                    }
                    None => "Starts at its first use".to_owned(),
                },
            }),
            server,
        },
    )
}

pub(crate) async fn license(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Query(n): Query<Notice>,
) -> Response {
    license_page(&web, &me, &id, FieldErrors::default(), None, n.text()).await
}

#[derive(Deserialize)]
pub(crate) struct LicenseeForm {
    #[serde(default)]
    licensee_name: String,
}

pub(crate) async fn set_licensee(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Form(form): Form<LicenseeForm>,
) -> Response {
    match web.portal.set_licensee_name(&me.customer_id, &id, &form.licensee_name).await {
        Ok(_) => see_other(&format!("/licenses/{id}?notice=licensee")),
        Err(AccountError::InvalidArgument { field: "licensee_name", message }) => {
            let errors = FieldErrors::one("licensee_name", field_message("The licensee name", &message));
            license_page(&web, &me, &id, errors, Some(form.licensee_name), None).await
        }
        Err(e) => refusal(e),
    }
}

#[derive(Template)]
#[template(path = "password.html")]
pub(crate) struct PasswordPage {
    pub layout: Layout,
    pub license_id: String,
    pub password: String,
    pub regenerated: bool,
    pub retired: bool,
}

pub(crate) async fn activation_password(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    let license = match web.portal.my_license(&me.customer_id, &id).await {
        Ok(l) => l,
        Err(e) => return refusal(e),
    };
    match web.portal.activation_password(&me.customer_id, &id).await {
        Ok(password) => page(PasswordPage {
            layout: me.layout("Activation password", "licenses"),
            license_id: license.license_id,
            password,
            regenerated: false,
            retired: license.status == LicenseStatus::Retired,
        }),
        Err(e) => refusal(e),
    }
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub(crate) struct ConfirmPage {
    pub layout: Layout,
    pub license_id: String,
    pub heading: String,
    pub lines: Vec<String>,
    pub can_confirm: bool,
    pub action: String,
    pub confirm_label: String,
    pub cancel: String,
}

pub(crate) async fn regenerate_page(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    let license = match web.portal.my_license(&me.customer_id, &id).await {
        Ok(l) => l,
        Err(e) => return refusal(e),
    };
    let retired = license.status == LicenseStatus::Retired;
    page(ConfirmPage {
        layout: me.layout("Regenerate the activation password", "licenses"),
        heading: "Regenerate the activation password?".into(),
        lines: if retired {
            vec![format!("License {id} is retired: its activation password can no longer be changed.")]
        } else {
            vec![
                format!(
                    "A new activation password is made for license {id}, and the current one stops working at once."
                ),
                "Machines already activated keep working. New activations with the License ID need the new password."
                    .into(),
            ]
        },
        can_confirm: !retired,
        action: format!("/licenses/{id}/activation-password/regenerate"),
        confirm_label: "Regenerate the password".into(),
        cancel: format!("/licenses/{id}/activation-password"),
        license_id: license.license_id,
    })
}

pub(crate) async fn regenerate(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    match web.portal.regenerate_activation_password(&me.customer_id, &id).await {
        Ok(password) => page(PasswordPage {
            layout: me.layout("Activation password", "licenses"),
            license_id: id,
            password,
            regenerated: true,
            retired: false,
        }),
        Err(e) => refusal(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Manage Installations and the history.
// ---------------------------------------------------------------------------------------------

pub(crate) struct InstallationRow {
    pub installation_id: String,
    pub machine_name: String,
    pub platform: String,
    pub product_version: String,
    pub activated: String,
    pub last_seen: String,
    /// When it was deactivated; `None` while it is active.
    pub deactivated: Option<String>,
}

#[derive(Template)]
#[template(path = "installations.html")]
pub(crate) struct InstallationsPage {
    pub layout: Layout,
    pub license_id: String,
    pub deactivations: String,
    pub rows: Vec<InstallationRow>,
    pub shown: String,
    pub pager: Pager,
}

#[derive(Deserialize, Default)]
pub(crate) struct PageQuery {
    /// Where a keyset page starts (the token the previous page linked to).
    #[serde(default)]
    after: String,
    #[serde(flatten)]
    notice: Notice,
}

fn or_dash(text: &str) -> String {
    if text.trim().is_empty() {
        "—".into()
    } else {
        text.to_owned()
    }
}

/// What deactivating from the portal does to the license's allowance, in plain words.
fn deactivation_policy(l: &License) -> String {
    if !l.portal_deactivation_counts {
        return "Deactivating a machine here does not use up any of the license's deactivations.".into();
    }
    match l.deactivations_left() {
        UNLIMITED => "This license may deactivate machines without limit.".into(),
        0 => "This license has no deactivations left: ask your vendor to deactivate a machine.".into(),
        n => format!(
            "This license has {n} deactivation{} left (of {}); each deactivation here uses one.",
            if n == 1 { "" } else { "s" },
            l.allowed_deactivations
        ),
    }
}

pub(crate) async fn installations(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let wanted = Page { after: Some(q.after.clone()).filter(|t| !t.is_empty()), limit: INSTALLATIONS_PER_PAGE as u32 };
    let (license, installations, next) = match web.portal.installations(&me.customer_id, &id, &wanted).await {
        Ok(found) => found,
        Err(e) => return refusal(e),
    };
    let pager = Pager::keyset(
        wanted.after.is_some().then(|| format!("/licenses/{id}/installations")),
        // A token is digits, a dot and an Installation ID: nothing to escape in a URL.
        next.map(|cursor| format!("/licenses/{id}/installations?after={}", cursor.token())),
    );
    let rows = installations
        .iter()
        .map(|a| InstallationRow {
            installation_id: a.installation_id.clone(),
            machine_name: or_dash(&a.machine_name),
            platform: or_dash(&a.platform),
            product_version: or_dash(&a.product_version),
            activated: instant(a.activated_at),
            last_seen: instant(a.last_seen_at),
            deactivated: a.deactivated_at.map(instant),
        })
        .collect();
    let mut layout = me.layout("Manage Installations", "licenses");
    layout.notice = q.notice.text();
    page(InstallationsPage {
        layout,
        license_id: license.license_id.clone(),
        deactivations: deactivation_policy(&license),
        shown: format!(
            "{} active installation{} of {} allowed; newest first, deactivated ones too",
            license.activations_used,
            if license.activations_used == 1 { "" } else { "s" },
            license.seats
        ),
        rows,
        pager,
    })
}

pub(crate) async fn deactivate_page(
    State(web): State<Web>,
    me: Me,
    Path((id, installation_id)): Path<(String, String)>,
) -> Response {
    let (license, installation) = match web.portal.installation(&me.customer_id, &id, &installation_id).await {
        Ok(found) => found,
        Err(e) => return refusal(e),
    };
    if installation.deactivated_at.is_some() {
        return super::view::not_found();
    }
    let l = &license;
    let blocked = l.portal_deactivation_counts && l.deactivations_left() == 0;
    let mut lines = vec![format!(
        "Installation {} on {} ({}) stops working: the product there must be activated again to run.",
        installation.installation_id,
        or_dash(&installation.machine_name),
        or_dash(&installation.platform)
    )];
    lines.push(match (l.portal_deactivation_counts, l.deactivations_left()) {
        (false, _) => "Deactivating here does not use up any of the license's deactivations.".into(),
        (true, UNLIMITED) => "This license may deactivate machines without limit.".into(),
        (true, 0) => "This license has no deactivations left, so it cannot be done here: ask your vendor.".into(),
        (true, n) => format!(
            "This license has {n} deactivation{} left; after this one, {} will be left.",
            if n == 1 { "" } else { "s" },
            n - 1
        ),
    });
    page(ConfirmPage {
        layout: me.layout("Deactivate an installation", "licenses"),
        license_id: l.license_id.clone(),
        heading: format!("Deactivate {}?", or_dash(&installation.machine_name)),
        lines,
        can_confirm: !blocked,
        action: format!("/licenses/{id}/installations/{installation_id}/deactivate"),
        confirm_label: "Deactivate the installation".into(),
        cancel: format!("/licenses/{id}/installations"),
    })
}

pub(crate) async fn deactivate(
    State(web): State<Web>,
    me: Me,
    Path((id, installation_id)): Path<(String, String)>,
) -> Response {
    match web.portal.deactivate_installation(&me.customer_id, &id, &installation_id).await {
        Ok((done, license)) => see_other(&format!(
            "/licenses/{id}/installations?notice=deactivated&installation={}&left={}",
            done.installation_id,
            license.deactivations_left()
        )),
        Err(e) => refusal(e),
    }
}

pub(crate) struct HistoryRow {
    pub when: String,
    pub action: String,
    pub installation_id: String,
    pub machine_name: String,
    pub outcome: String,
    pub refused: bool,
}

#[derive(Template)]
#[template(path = "history.html")]
pub(crate) struct HistoryPage {
    pub layout: Layout,
    pub license_id: String,
    pub rows: Vec<HistoryRow>,
    pub shown: String,
    pub pager: Pager,
}

fn history_action(action: &str) -> String {
    match action {
        "activate" => "Activated".into(),
        "offline_activate" => "Activated offline".into(),
        "offline_deactivate" => "Deactivated offline (request file)".into(),
        "deactivate" => "Deactivated by the product".into(),
        "portal_deactivate" => "Deactivated in the portal".into(),
        "refresh" => "Certificate refreshed".into(),
        "support_return" => "Returned by support".into(),
        "cull" => "Deactivated: no heartbeat in time".into(),
        other => other.replace('_', " "),
    }
}

pub(crate) async fn history(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let wanted = Page { after: Some(q.after.clone()).filter(|t| !t.is_empty()), limit: HISTORY_PER_PAGE as u32 };
    let (license, events, next) = match web.portal.history(&me.customer_id, &id, &wanted).await {
        Ok(found) => found,
        Err(e) => return refusal(e),
    };
    let pager = Pager::keyset(
        wanted.after.is_some().then(|| format!("/licenses/{id}/history")),
        next.map(|before| format!("/licenses/{id}/history?after={before}")),
    );
    let rows = events
        .iter()
        .map(|e| HistoryRow {
            when: instant(e.occurred_at),
            action: history_action(&e.action),
            installation_id: or_dash(&e.installation_id),
            machine_name: or_dash(&e.machine_name),
            refused: !e.outcome.starts_with("ok"),
            outcome: if e.outcome.starts_with("ok") { "Done".into() } else { format!("Refused: {}", e.outcome) },
        })
        .collect();
    page(HistoryPage {
        layout: me.layout("Installation and activation history", "licenses"),
        license_id: license.license_id,
        shown: if events.is_empty() { "No events yet".into() } else { "Newest first, refusals included".into() },
        rows,
        pager,
    })
}

// ---------------------------------------------------------------------------------------------
// Concurrent licenses: live seats, usage, return / re-split.
// ---------------------------------------------------------------------------------------------

pub(crate) struct LeaseRow {
    pub user: String,
    pub host: String,
    pub feature: String,
    pub since: String,
    pub expires: String,
}

pub(crate) struct DayRow {
    pub day: String,
    pub peak_seats: i32,
    pub seat_hours: String,
    pub checkouts: i64,
    pub denials: i64,
}

#[derive(Template)]
#[template(path = "usage.html")]
pub(crate) struct UsagePage {
    pub layout: Layout,
    pub license_id: String,
    pub seats_now: String,
    pub leases: Vec<LeaseRow>,
    pub leases_unavailable: Option<String>,
    pub chart: String,
    pub chart_summary: String,
    pub days: Vec<DayRow>,
    pub policy: Vec<(String, String)>,
}

fn policy_lines(policy: &licensing_domain::seat_policy::SeatPolicy) -> Vec<(String, String)> {
    use licensing_domain::seat_policy::ShareScope;
    let mut lines = vec![];
    let share = match policy.share_scope {
        ShareScope::None => None,
        ShareScope::UserHost => Some("by the same user on the same host"),
        ShareScope::User => Some("by the same user"),
        ShareScope::Host => Some("on the same host"),
    };
    if let Some(share) = share {
        lines.push(("Seat sharing".into(), format!("One seat is shared {share}")));
    }
    if policy.linger_ms > 0 {
        lines.push(("Linger".into(), format!("A returned seat stays held for {} s", policy.linger_ms / 1000)));
    }
    if policy.max_borrow_ms > 0 {
        lines.push(("Borrowing".into(), format!("Up to {} hours offline", policy.max_borrow_ms / 3_600_000)));
    }
    if policy.overdraft_seats > 0 {
        lines.push(("Overdraft".into(), format!("{} seats beyond those bought", policy.overdraft_seats)));
    }
    for r in &policy.reservations {
        lines.push(("Reserved".into(), format!("{} seats for {}", r.seats, r.principal.key())));
    }
    for c in &policy.caps {
        lines.push(("At most".into(), format!("{} seats for {}", c.max_seats, c.principal.key())));
    }
    lines
}

pub(crate) async fn usage(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    let license = match web.portal.my_license(&me.customer_id, &id).await {
        Ok(l) => l,
        Err(e) => return refusal(e),
    };
    if license.kind != LicenseKind::Concurrent {
        return super::view::failure(
            StatusCode::NOT_FOUND,
            "No seats to show",
            format!("License {id} is not a concurrent license: it has no seats in use or usage report."),
        );
    }
    let (leases, leases_unavailable) = match web.portal.leases(&me.customer_id, &id).await {
        Ok(leases) => (leases, None),
        Err(AccountError::FailedPrecondition { .. }) => (
            vec![],
            Some("Live seats cannot be shown by this server (it has no access to the lease store).".to_owned()),
        ),
        Err(e) => return refusal(e),
    };
    let report = match web.portal.usage_report(&me.customer_id, &id, None, None).await {
        Ok(r) => r,
        Err(e) => return refusal(e),
    };
    let policy = match web.portal.seat_policy(&me.customer_id, &id).await {
        Ok(p) => policy_lines(&p),
        Err(e) => return refusal(e),
    };
    let in_use: i32 = leases.iter().filter(|l| l.group_id == l.lease_id).map(|l| l.seats_held).sum();
    let denials: i64 = report.days.iter().map(|d| d.denials).sum();
    let peak = report.days.iter().map(|d| d.peak_seats).max().unwrap_or(0);
    page(UsagePage {
        layout: me.layout("Seats in use and usage", "licenses"),
        seats_now: format!("{in_use} of {} seats in use.", license.seats),
        leases: leases
            .iter()
            .map(|l| LeaseRow {
                user: or_dash(&l.user),
                host: or_dash(&l.host),
                feature: or_dash(&l.feature),
                since: instant(l.checked_out_at),
                expires: instant(l.expires_at),
            })
            .collect(),
        leases_unavailable,
        chart: super::chart::peak_seats(&report.days, license.seats),
        chart_summary: format!(
            "From {} to {}: at most {peak} of {} seats in use on one day; {denials} checkout{} denied.",
            date(report.from),
            date(report.to),
            license.seats,
            if denials == 1 { "" } else { "s" }
        ),
        days: report
            .days
            .iter()
            .map(|d| DayRow {
                day: d.day.clone(),
                peak_seats: d.peak_seats,
                seat_hours: format!("{:.1}", d.seat_hours),
                checkouts: d.checkouts,
                denials: d.denials,
            })
            .collect(),
        policy,
        license_id: license.license_id,
    })
}

/// Every period the license's meters counted, as a CSV download.
pub(crate) async fn meters_csv(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    match web.portal.meter_usage(&me.customer_id, &id).await {
        Ok((_, history)) => csv_download(licensing_domain::meter::usage_csv(&history), &format!("meters-{id}.csv")),
        Err(e) => refusal(e),
    }
}

/// `body` as a CSV file the browser saves as `file`.
fn csv_download(body: String, file: &str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv; charset=utf-8"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

pub(crate) async fn usage_csv(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    match web.portal.usage_report(&me.customer_id, &id, None, None).await {
        Ok(report) => csv_download(report.to_csv(), &format!("usage-{}-{}.csv", report.license_id, date(report.to))),
        Err(e) => refusal(e),
    }
}

pub(crate) struct ReissuedRow {
    pub license_id: String,
    pub seats: i32,
    pub license_key: String,
    pub activation_password: String,
}

#[derive(Template)]
#[template(path = "return.html")]
pub(crate) struct ReturnPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub license_id: String,
    pub seats: i32,
    pub split: String,
    pub hint: String,
    pub reissued: Vec<ReissuedRow>,
}

fn split_hint(seats: i32) -> String {
    format!(
        "Leave empty for one new license with all {seats} seats, or list the seats of each new license separated by commas, adding up to {seats} (e.g. {}).",
        if seats >= 2 { format!("{}, {}", seats - seats / 2, seats / 2) } else { "1".into() }
    )
}

async fn return_form(web: &Web, me: &Me, id: &str, errors: FieldErrors, split: String) -> Response {
    let license = match web.portal.my_license(&me.customer_id, id).await {
        Ok(l) => l,
        Err(e) => return refusal(e),
    };
    if license.kind != LicenseKind::Concurrent || license.status == LicenseStatus::Retired {
        return super::view::failure(
            StatusCode::CONFLICT,
            "Not possible",
            format!("License {id} cannot be returned here: only active concurrent licenses can."),
        );
    }
    let status = if errors.is_empty() { StatusCode::OK } else { StatusCode::UNPROCESSABLE_ENTITY };
    page_with(
        status,
        ReturnPage {
            layout: me.layout("Return or re-split a license", "licenses"),
            errors,
            license_id: license.license_id,
            seats: license.seats,
            split,
            hint: split_hint(license.seats),
            reissued: vec![],
        },
    )
}

pub(crate) async fn return_page(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    return_form(&web, &me, &id, FieldErrors::default(), String::new()).await
}

#[derive(Deserialize)]
pub(crate) struct ReturnForm {
    #[serde(default)]
    split: String,
}

pub(crate) async fn return_license(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Form(form): Form<ReturnForm>,
) -> Response {
    let parsed: Result<Vec<i32>, _> =
        form.split.split([',', ' ', ';']).filter(|s| !s.trim().is_empty()).map(|s| s.trim().parse::<i32>()).collect();
    let Ok(split) = parsed else {
        let errors = FieldErrors::one("split", "Write whole numbers of seats separated by commas, like 6, 4.");
        return return_form(&web, &me, &id, errors, form.split).await;
    };
    match web.portal.return_concurrent_license(&me.customer_id, &id, 0, &split).await {
        Ok(returned) => page(ReturnPage {
            layout: me.layout("License returned", "licenses"),
            errors: FieldErrors::default(),
            license_id: returned.retired.license_id.clone(),
            seats: returned.retired.seats,
            split: String::new(),
            hint: String::new(),
            reissued: returned
                .reissued
                .iter()
                .map(|n| ReissuedRow {
                    license_id: n.license.license_id.clone(),
                    seats: n.license.seats,
                    license_key: n.license_key.to_string(),
                    activation_password: n.activation_password.clone(),
                })
                .collect(),
        }),
        Err(AccountError::InvalidArgument { message, .. }) => {
            return_form(&web, &me, &id, FieldErrors::one("split", sentence(&message)), form.split).await
        }
        Err(e) => refusal(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Associate and transfer.
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "associate.html")]
pub(crate) struct AssociatePage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub license_key: String,
}

pub(crate) async fn associate_page(me: Me) -> Response {
    page(AssociatePage {
        layout: me.layout("Associate a license", "licenses"),
        errors: FieldErrors::default(),
        license_key: String::new(),
    })
}

#[derive(Deserialize)]
pub(crate) struct AssociateForm {
    #[serde(default)]
    license_key: String,
}

pub(crate) async fn associate(State(web): State<Web>, me: Me, Form(form): Form<AssociateForm>) -> Response {
    let again = |message: String| {
        page_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            AssociatePage {
                layout: me.layout("Associate a license", "licenses"),
                errors: FieldErrors::one("license_key", message),
                license_key: form.license_key.clone(),
            },
        )
    };
    if form.license_key.trim().is_empty() {
        return again("Enter the license key.".into());
    }
    match web.portal.associate(&me.customer_id, &form.license_key).await {
        Ok(license) => see_other(&format!("/licenses/{}?notice=associated", license.license_id)),
        Err(
            AccountError::InvalidArgument { message, .. }
            | AccountError::NotFound { message, .. }
            | AccountError::FailedPrecondition { message, .. },
        ) => again(sentence(&message)),
        Err(e) => refusal(e),
    }
}

#[derive(Template)]
#[template(path = "transfer.html")]
pub(crate) struct TransferPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub license_id: String,
    pub to_customer_id: String,
}

pub(crate) async fn transfer_page(State(web): State<Web>, me: Me, Path(id): Path<String>) -> Response {
    match web.portal.my_license(&me.customer_id, &id).await {
        Ok(l) => page(TransferPage {
            layout: me.layout("Transfer a license", "licenses"),
            errors: FieldErrors::default(),
            license_id: l.license_id,
            to_customer_id: String::new(),
        }),
        Err(e) => refusal(e),
    }
}

#[derive(Deserialize)]
pub(crate) struct TransferForm {
    #[serde(default)]
    to_customer_id: String,
    #[serde(default)]
    confirm: String,
}

pub(crate) async fn transfer(
    State(web): State<Web>,
    me: Me,
    Path(id): Path<String>,
    Form(form): Form<TransferForm>,
) -> Response {
    let again = |errors: FieldErrors| {
        page_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            TransferPage {
                layout: me.layout("Transfer a license", "licenses"),
                errors,
                license_id: id.clone(),
                to_customer_id: form.to_customer_id.clone(),
            },
        )
    };
    if form.confirm != "yes" {
        return again(FieldErrors::one("confirm", "Tick the box to confirm the transfer."));
    }
    match web.portal.transfer(&me.customer_id, &id, form.to_customer_id.trim()).await {
        Ok(license) => see_other(&format!("/licenses?notice=transferred&license={}", license.license_id)),
        Err(AccountError::InvalidArgument { field: "to_customer_id", message }) => {
            again(FieldErrors::one("to_customer_id", field_message("The customer ID", &message)))
        }
        Err(AccountError::NotFound { reason: "CUSTOMER_NOT_FOUND", message }) => {
            again(FieldErrors::one("to_customer_id", sentence(&message)))
        }
        Err(e) => refusal(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Payments.
// ---------------------------------------------------------------------------------------------

pub(crate) struct ReceiptRow {
    pub paid: String,
    pub receipt_id: String,
    pub license_id: String,
    pub kind: String,
    pub amount: String,
    pub recurring: String,
}

#[derive(Template)]
#[template(path = "payments.html")]
pub(crate) struct PaymentsPage {
    pub layout: Layout,
    pub rows: Vec<ReceiptRow>,
}

fn receipt_kind(kind: &str) -> String {
    match kind {
        "issue" => "New license".into(),
        "renewal" => "Renewal".into(),
        "upgrade" => "Upgrade".into(),
        other => other.replace('_', " "),
    }
}

pub(crate) async fn payments(State(web): State<Web>, me: Me) -> Response {
    match web.portal.receipts(&me.customer_id).await {
        Ok(receipts) => page(PaymentsPage {
            layout: me.layout("Payment History", "payments"),
            rows: receipts
                .iter()
                .map(|r| ReceiptRow {
                    paid: date(r.paid_at),
                    receipt_id: r.receipt_id.clone(),
                    license_id: r.license_id.clone(),
                    kind: receipt_kind(&r.kind),
                    amount: money(r.amount_minor, &r.currency),
                    recurring: match r.next_renewal_at() {
                        Some(next) => format!("Every {}, next {}", months(r.recurring_months), date(next)),
                        None => "One-off".into(),
                    },
                })
                .collect(),
        }),
        Err(e) => refusal(e),
    }
}

pub(crate) struct RecurringRow {
    pub next: String,
    pub due: bool,
    pub license_id: String,
    pub amount: String,
    pub every: String,
    pub last_paid: String,
}

#[derive(Template)]
#[template(path = "recurring.html")]
pub(crate) struct RecurringPage {
    pub layout: Layout,
    pub rows: Vec<RecurringRow>,
}

pub(crate) async fn recurring(State(web): State<Web>, me: Me) -> Response {
    let now = web.portal.now_millis();
    match web.portal.recurring_payments(&me.customer_id).await {
        Ok(plans) => page(RecurringPage {
            layout: me.layout("Recurring Payments", "recurring"),
            rows: plans
                .iter()
                .map(|p| RecurringRow {
                    next: date(p.next_charge_at),
                    due: p.next_charge_at <= now,
                    license_id: p.receipt.license_id.clone(),
                    amount: money(p.receipt.amount_minor, &p.receipt.currency),
                    every: months(p.receipt.recurring_months),
                    last_paid: date(p.receipt.paid_at),
                })
                .collect(),
        }),
        Err(e) => refusal(e),
    }
}

// ---------------------------------------------------------------------------------------------
// Account and activity.
// ---------------------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "account.html")]
pub(crate) struct AccountPage {
    pub layout: Layout,
    pub customer_id: String,
    pub company_name: String,
    pub since: String,
    pub contact_errors: FieldErrors,
    pub contact_name: String,
    pub contact_email: String,
    pub phone: String,
    pub password_errors: FieldErrors,
    pub rules: String,
}

async fn account_page(
    web: &Web,
    me: &Me,
    notice: Option<String>,
    contact_errors: FieldErrors,
    typed: Option<ContactForm>,
    password_errors: FieldErrors,
) -> Response {
    let customer = match web.portal.account(&me.customer_id).await {
        Ok(c) => c,
        Err(e) => return refusal(e),
    };
    let failed = !contact_errors.is_empty() || !password_errors.is_empty();
    let typed = typed.unwrap_or(ContactForm {
        contact_name: customer.contact_name.clone(),
        contact_email: customer.contact_email.clone(),
        phone: customer.phone.clone(),
    });
    let mut layout = me.layout("Account", "account");
    layout.notice = notice;
    page_with(
        if failed { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK },
        AccountPage {
            layout,
            customer_id: customer.customer_id,
            company_name: customer.company_name,
            since: date(customer.created_at),
            contact_errors,
            contact_name: typed.contact_name,
            contact_email: typed.contact_email,
            phone: typed.phone,
            password_errors,
            rules: super::auth::rules(),
        },
    )
}

pub(crate) async fn account(State(web): State<Web>, me: Me, Query(n): Query<Notice>) -> Response {
    account_page(&web, &me, n.text(), FieldErrors::default(), None, FieldErrors::default()).await
}

#[derive(Deserialize)]
pub(crate) struct ContactFormFields {
    #[serde(default)]
    contact_name: String,
    #[serde(default)]
    contact_email: String,
    #[serde(default)]
    phone: String,
    #[serde(default)]
    current_password: String,
}

fn label(field: &str) -> &'static str {
    match field {
        "contact_name" => "Contact person",
        "contact_email" => "Contact email",
        "phone" => "Phone",
        "current_password" => "Current password",
        "new_password" => "New password",
        _ => "This",
    }
}

pub(crate) async fn update_contact(
    State(web): State<Web>,
    me: Me,
    ClientIp(client): ClientIp,
    Form(form): Form<ContactFormFields>,
) -> Response {
    let typed = ContactForm { contact_name: form.contact_name, contact_email: form.contact_email, phone: form.phone };
    let errors = match web.portal.update_contact_details(&me.customer_id, &typed, &form.current_password, &client).await
    {
        Ok(_) => return see_other("/account?notice=contact"),
        Err(AccountError::InvalidArgument { field, message }) => {
            let field = match field {
                "contact_name" => "contact_name",
                "contact_email" => "contact_email",
                "phone" => "phone",
                _ => "current_password",
            };
            FieldErrors::one(field, field_message(label(field), &message))
        }
        Err(AccountError::AlreadyExists(message)) => FieldErrors::one("contact_email", sentence(&message)),
        Err(AccountError::ResourceExhausted { message, .. }) => {
            FieldErrors::one("current_password", sentence(&message))
        }
        Err(e) => return refusal(e),
    };
    account_page(&web, &me, None, errors, Some(typed), FieldErrors::default()).await
}

#[derive(Deserialize)]
pub(crate) struct PasswordForm {
    #[serde(default)]
    current_password: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    new_password_again: String,
}

pub(crate) async fn change_password(
    State(web): State<Web>,
    me: Me,
    ClientIp(client): ClientIp,
    Form(form): Form<PasswordForm>,
) -> Response {
    let errors = if form.new_password != form.new_password_again {
        FieldErrors::one("new_password_again", "The two new passwords differ: type the same password twice.")
    } else {
        match web
            .portal
            .change_password(&me.customer_id, &me.token, &form.current_password, form.new_password, &client)
            .await
        {
            Ok(()) => return see_other("/account?notice=password"),
            Err(AccountError::InvalidArgument { field, message }) => {
                let field = if field == "new_password" { "new_password" } else { "current_password" };
                FieldErrors::one(field, field_message(label(field), &message))
            }
            Err(AccountError::ResourceExhausted { message, .. }) => {
                FieldErrors::one("current_password", sentence(&message))
            }
            Err(AccountError::FailedPrecondition { message, .. }) => {
                FieldErrors::one("current_password", sentence(&message))
            }
            Err(e) => return refusal(e),
        }
    };
    account_page(&web, &me, None, FieldErrors::default(), None, errors).await
}

pub(crate) struct ActivityRow {
    pub when: String,
    pub what: String,
    pub actor: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "activity.html")]
pub(crate) struct ActivityPage {
    pub layout: Layout,
    pub rows: Vec<ActivityRow>,
    pub next: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ActivityQuery {
    #[serde(default)]
    after: String,
}

fn activity_action(action: &str) -> String {
    let plain = match action {
        "portal.login" => "Logged in",
        "portal.login_failed" => "A login failed (wrong password)",
        "portal.logout" => "Logged out",
        "portal.password_reset_requested" => "A password reset mail was sent",
        "portal.password_reset" => "The password was reset",
        "portal.password_changed" => "The password was changed",
        "portal.password_check_failed" => "A wrong current password was entered",
        "portal.contact_details_changed" => "Contact details changed",
        "portal.installation_deactivated" => "An installation was deactivated",
        "portal.activation_password_regenerated" => "An activation password was regenerated",
        "portal.concurrent_license_returned" => "A concurrent license was returned",
        "portal.license_associated" => "A license was associated",
        "portal.license_transferred" => "A license was transferred away",
        "portal.license_received" => "A license was received",
        "portal.licensee_name_changed" => "A licensee name changed",
        "customer.created" => "The account was created",
        other => return other.replace(['.', '_'], " "),
    };
    plain.to_owned()
}

pub(crate) async fn activity(State(web): State<Web>, me: Me, Query(q): Query<ActivityQuery>) -> Response {
    let after = q.after.parse::<i64>().ok().filter(|a| *a > 0);
    let page_request = Page { after: after.map(|a| a.to_string()), limit: ACTIVITY_PER_PAGE };
    match web.portal.audit_events(&me.customer_id, &page_request).await {
        Ok(events) => page(ActivityPage {
            layout: me.layout("Activity", "activity"),
            next: (events.len() as u32 >= ACTIVITY_PER_PAGE)
                .then(|| events.last().map(|e| format!("/activity?after={}", e.sequence)))
                .flatten(),
            rows: events
                .iter()
                .map(|e| ActivityRow {
                    when: instant(e.occurred_at),
                    what: activity_action(&e.action),
                    actor: if e.actor.starts_with("customer:") { "You".into() } else { "Your vendor".into() },
                    details: if e.details_json == "{}" { String::new() } else { e.details_json.clone() },
                })
                .collect(),
        }),
        Err(e) => refusal(e),
    }
}
