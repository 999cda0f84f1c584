//! Logging in and out, the forgotten password and the reset page the mail links to; and
//! [`Me`], the logged-in customer every other page is for.

use super::security::{cookie, CsrfSecret};
use super::view::{field_message, page, page_with, refusal, see_other, FieldErrors, Layout, MeView};
use super::Web;
use crate::AccountError;
use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Form};
use serde::Deserialize;

/// The customer of the request's session; pages that need one redirect to the login otherwise.
pub(crate) struct Me {
    pub customer_id: String,
    pub company_name: String,
    /// The session token (from the cookie), e.g. to log out or to keep this session when the
    /// password changes.
    pub token: String,
    /// The token this page's forms carry.
    pub csrf: String,
}

impl Me {
    pub(crate) fn layout(&self, title: impl Into<String>, nav: &'static str) -> Layout {
        Layout {
            me: Some(MeView { customer_id: self.customer_id.clone(), company_name: self.company_name.clone() }),
            nav,
            ..Layout::new(title, self.csrf.clone())
        }
    }
}

/// A path inside the portal to return to after logging in; anything else (another site,
/// `//host`, a scheme) goes to the licenses.
fn local_path(next: &str) -> &str {
    let safe = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains(['\\', '\r', '\n'])
        && next.len() <= 200
        && next != "/login";
    if safe {
        next
    } else {
        "/licenses"
    }
}

fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

impl FromRequestParts<Web> for Me {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, Response> {
        let token = cookie(&parts.headers, web.session_cookie()).map(str::to_owned);
        let csrf = parts.extensions.get::<CsrfSecret>().map(|s| web.csrf_token(s)).unwrap_or_default();
        match web.portal.authenticate(token.as_deref()).await {
            Ok(customer_id) => {
                let customer = web.portal.account(&customer_id).await.map_err(refusal)?;
                Ok(Me { customer_id, company_name: customer.company_name, token: token.unwrap_or_default(), csrf })
            }
            Err(AccountError::Unauthenticated { .. }) => {
                let back = if parts.method == Method::GET { parts.uri.path() } else { "/licenses" };
                let mut response = see_other(&format!("/login?next={}", encode(local_path(back))));
                if token.is_some() {
                    // Expired or logged out elsewhere: forget it, so the login page starts clean.
                    response
                        .headers_mut()
                        .append(header::SET_COOKIE, web.set_cookie(web.session_cookie(), "", Some(0)));
                }
                Err(response)
            }
            Err(e) => Err(refusal(e)),
        }
    }
}

/// The address the request came from (the portal's per-client limits and login throttling).
pub(crate) struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(super::serve::client_ip(&parts.extensions)))
    }
}

/// The CSRF token for a page seen before logging in.
fn csrf(web: &Web, secret: &CsrfSecret) -> String {
    web.csrf_token(secret)
}

fn password_rules() -> String {
    use licensing_domain::secrets::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
    format!(
        "{MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters. A few unrelated words make a strong password that is easy to remember."
    )
}

pub(crate) fn rules() -> String {
    password_rules()
}

/// A refusal by a per-client limit, as a page to send the form again from later.
fn too_many(retry_after: std::time::Duration, mut response: Response) -> Response {
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    if let Ok(value) = HeaderValue::from_str(&retry_after.as_secs().max(1).to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

pub(crate) async fn home(State(web): State<Web>, request_headers: axum::http::HeaderMap) -> Response {
    let logged_in = web.portal.authenticate(cookie(&request_headers, web.session_cookie())).await.is_ok();
    see_other(if logged_in { "/licenses" } else { "/login" })
}

#[derive(Template)]
#[template(path = "login.html")]
pub(crate) struct LoginPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub login: String,
    pub next: String,
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    #[serde(default)]
    next: String,
    #[serde(default)]
    notice: String,
}

pub(crate) async fn login_page(
    State(web): State<Web>,
    Extension(secret): Extension<CsrfSecret>,
    Query(q): Query<LoginQuery>,
) -> Response {
    let mut layout = Layout::new("Log in", csrf(&web, &secret));
    layout.notice = match q.notice.as_str() {
        "logged_out" => Some("You are logged out.".into()),
        "password_reset" => Some("Your new password is set. Log in with it.".into()),
        "password_changed" => Some("The password was changed. Log in with the new one.".into()),
        _ => None,
    };
    page(LoginPage { layout, errors: FieldErrors::default(), login: String::new(), next: local_path(&q.next).into() })
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    login: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: String,
}

pub(crate) async fn login(
    State(web): State<Web>,
    Extension(secret): Extension<CsrfSecret>,
    ClientIp(client): ClientIp,
    Form(form): Form<LoginForm>,
) -> Response {
    let again = |errors: FieldErrors, problem: Option<String>| {
        let mut layout = Layout::new("Log in", csrf(&web, &secret));
        layout.problem = problem;
        LoginPage { layout, errors, login: form.login.clone(), next: local_path(&form.next).into() }
    };
    let mut errors = FieldErrors::default();
    if form.login.trim().is_empty() {
        errors.add("login", "Enter your customer ID or contact email.");
    }
    if form.password.is_empty() {
        errors.add("password", "Enter your password.");
    }
    if !errors.is_empty() {
        return page_with(StatusCode::UNPROCESSABLE_ENTITY, again(errors, None));
    }
    if let Err(limited) = web.login_limit.acquire(&client, || "this address".to_owned()) {
        let problem = super::view::sentence(&limited.to_string());
        return too_many(limited.retry_after, page(again(FieldErrors::default(), Some(problem))));
    }
    match web.portal.login(&form.login, &form.password, &client).await {
        Ok((token, _expires_at, _customer)) => {
            let mut response = see_other(local_path(&form.next));
            // No Max-Age: the browser forgets it when it closes; the server ends it after the
            // session lifetime either way.
            response.headers_mut().append(header::SET_COOKIE, web.set_cookie(web.session_cookie(), &token, None));
            response
        }
        Err(AccountError::Unauthenticated { message, .. }) => {
            page_with(StatusCode::UNAUTHORIZED, again(FieldErrors::default(), Some(super::view::sentence(&message))))
        }
        Err(AccountError::InvalidArgument { message, .. }) => page_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            again(FieldErrors::one("login", field_message("Customer ID or email", &message)), None),
        ),
        Err(AccountError::ResourceExhausted { message, retry_after, .. }) => {
            too_many(retry_after, page(again(FieldErrors::default(), Some(super::view::sentence(&message)))))
        }
        Err(other) => refusal(other),
    }
}

pub(crate) async fn logout(State(web): State<Web>, me: Me) -> Response {
    if let Err(e) = web.portal.logout(&me.customer_id, &me.token).await {
        return refusal(e);
    }
    let mut response = see_other("/login?notice=logged_out");
    response.headers_mut().append(header::SET_COOKIE, web.set_cookie(web.session_cookie(), "", Some(0)));
    response
}

#[derive(Template)]
#[template(path = "forgot.html")]
pub(crate) struct ForgotPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub login: String,
    pub sent: bool,
}

pub(crate) async fn forgot_page(State(web): State<Web>, Extension(secret): Extension<CsrfSecret>) -> Response {
    page(ForgotPage {
        layout: Layout::new("Forgot your password?", csrf(&web, &secret)),
        errors: FieldErrors::default(),
        login: String::new(),
        sent: false,
    })
}

#[derive(Deserialize)]
pub(crate) struct ForgotForm {
    #[serde(default)]
    login: String,
}

pub(crate) async fn forgot(
    State(web): State<Web>,
    Extension(secret): Extension<CsrfSecret>,
    ClientIp(client): ClientIp,
    Form(form): Form<ForgotForm>,
) -> Response {
    let layout = || Layout::new("Forgot your password?", csrf(&web, &secret));
    if let Err(limited) = web.reset_limit.acquire(&client, || "this address".to_owned()) {
        let mut layout = layout();
        layout.problem = Some(super::view::sentence(&limited.to_string()));
        let form_page = ForgotPage { layout, errors: FieldErrors::default(), login: form.login, sent: false };
        return too_many(limited.retry_after, page(form_page));
    }
    match web.portal.request_password_reset(&form.login) {
        Ok(()) => page(ForgotPage {
            layout: layout(),
            errors: FieldErrors::default(),
            login: form.login.trim().into(),
            sent: true,
        }),
        Err(AccountError::InvalidArgument { message, .. }) => page_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            ForgotPage {
                layout: layout(),
                errors: FieldErrors::one("login", field_message("Customer ID or contact email:", &message)),
                login: form.login,
                sent: false,
            },
        ),
        Err(other) => refusal(other),
    }
}

#[derive(Template)]
#[template(path = "reset.html")]
pub(crate) struct ResetPage {
    pub layout: Layout,
    pub errors: FieldErrors,
    pub token: String,
    pub rules: String,
}

#[derive(Deserialize)]
pub(crate) struct ResetQuery {
    #[serde(default)]
    token: String,
}

pub(crate) async fn reset_page(
    State(web): State<Web>,
    Extension(secret): Extension<CsrfSecret>,
    Query(q): Query<ResetQuery>,
) -> Response {
    page(ResetPage {
        layout: Layout::new("Set a new password", csrf(&web, &secret)),
        errors: FieldErrors::default(),
        token: q.token.trim().chars().take(64).collect(),
        rules: password_rules(),
    })
}

#[derive(Deserialize)]
pub(crate) struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    new_password_again: String,
}

pub(crate) async fn reset(
    State(web): State<Web>,
    Extension(secret): Extension<CsrfSecret>,
    ClientIp(client): ClientIp,
    Form(form): Form<ResetForm>,
) -> Response {
    let again = |errors: FieldErrors, problem: Option<String>| {
        let mut layout = Layout::new("Set a new password", csrf(&web, &secret));
        layout.problem = problem;
        ResetPage { layout, errors, token: form.token.clone(), rules: password_rules() }
    };
    if form.new_password != form.new_password_again {
        let errors =
            FieldErrors::one("new_password_again", "The two new passwords differ: type the same password twice.");
        return page_with(StatusCode::UNPROCESSABLE_ENTITY, again(errors, None));
    }
    if let Err(limited) = web.reset_limit.acquire(&client, || "this address".to_owned()) {
        let problem = super::view::sentence(&limited.to_string());
        return too_many(limited.retry_after, page(again(FieldErrors::default(), Some(problem))));
    }
    match web.portal.reset_password(&form.token, form.new_password.clone()).await {
        Ok(()) => see_other("/login?notice=password_reset"),
        Err(AccountError::InvalidArgument { field: "new_password", message }) => page_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            again(FieldErrors::one("new_password", field_message("The new password", &message)), None),
        ),
        Err(
            AccountError::InvalidArgument { message, .. }
            | AccountError::NotFound { message, .. }
            | AccountError::FailedPrecondition { message, .. },
        ) => {
            let problem = format!(
                "{} Ask for a new link below.",
                super::view::sentence(if message.contains("token") {
                    &message
                } else {
                    "this reset link is not valid"
                })
            );
            let mut errors = FieldErrors::default();
            errors.add("token", problem.clone());
            page_with(StatusCode::UNPROCESSABLE_ENTITY, again(errors, Some(problem)))
        }
        Err(other) => refusal(other),
    }
}

pub(crate) async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8")),
            (header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600")),
        ],
        include_str!("../../static/portal.css"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_inside_the_portal_are_returned_to() {
        assert_eq!(local_path("/licenses/lic_X"), "/licenses/lic_X");
        for other in ["https://evil.example/", "//evil.example", "/\\evil.example", "", "licenses", "/login"] {
            assert_eq!(local_path(other), "/licenses", "{other}");
        }
    }
}
