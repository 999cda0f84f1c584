//! The portal's defences as a web application:
//!
//! - **Cookies.** The session token lives only in an `HttpOnly`, `SameSite=Lax` cookie (`Secure`
//!   and `__Host-` prefixed over TLS), never in a URL. A visitor without a session gets a random
//!   pre-session cookie the same way, for the forms it sends before logging in.
//! - **CSRF.** [`guard`] refuses every POST whose `csrf` field is not the keyed digest of the
//!   request's own session token (or pre-session cookie), and every POST another site's page
//!   sends (`Origin`, `Sec-Fetch-Site`): one check for every form, none to forget.
//! - **Headers.** [`SecurityHeadersLayer`] puts `Content-Security-Policy` (`default-src 'self'`,
//!   `frame-ancestors 'none'`), `X-Content-Type-Options`, `Referrer-Policy: same-origin`, `X-Frame-Options` and
//!   `Cache-Control: no-store` (HSTS over TLS) on every answer.
//! - **Logs.** A line per request with its method, path (never the query: a reset link carries a
//!   token there), status and duration; never a form, a cookie or a header.

use super::Web;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use licensing_domain::secrets::constant_time_eq;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Largest form body read (the portal's forms are a few hundred bytes).
const MAX_FORM_BYTES: usize = 64 * 1024;

/// The keyed-digest purpose of form tokens, so one never matches a digest made for another use.
const CSRF_PURPOSE: &str = "portal-csrf";

/// The secret the current request's forms are bound to: its session token, or its pre-session
/// cookie. Put in the request's extensions by [`guard`].
#[derive(Clone)]
pub struct CsrfSecret(pub String);

/// The value of cookie `name`, if the request sent it.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

impl Web {
    pub(crate) fn session_cookie(&self) -> &'static str {
        if self.secure {
            "__Host-portal_session"
        } else {
            "portal_session"
        }
    }

    fn presession_cookie(&self) -> &'static str {
        if self.secure {
            "__Host-portal_presession"
        } else {
            "portal_presession"
        }
    }

    /// `Set-Cookie` for `name`: HttpOnly, SameSite=Lax, the whole site; Secure over TLS.
    /// `max_age` 0 deletes the cookie; `None` keeps it until the browser closes.
    pub fn set_cookie(&self, name: &str, value: &str, max_age: Option<i64>) -> HeaderValue {
        let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
        if let Some(seconds) = max_age {
            text.push_str(&format!("; Max-Age={}", seconds.max(0)));
        }
        if self.secure {
            text.push_str("; Secure");
        }
        HeaderValue::from_str(&text).expect("cookie names and values are plain ASCII")
    }

    /// The token forms carry for `secret`.
    pub fn csrf_token(&self, secret: &CsrfSecret) -> String {
        self.keys.digest(CSRF_PURPOSE, &secret.0)
    }
}

/// Whether a POST comes from a page of this site, as far as the browser says: by
/// `Sec-Fetch-Site` where the browser sends it (same-origin, or none for one the person started),
/// else by `Origin` naming this host. Neither header (an old browser, a script): the token decides.
fn same_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, rest)| rest);
    origin_host.is_some_and(|o| !host.is_empty() && o.eq_ignore_ascii_case(host))
}

/// The `csrf` field of a URL-encoded form.
fn form_token(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned())
}

fn refused_form() -> Response {
    super::view::failure(
        StatusCode::FORBIDDEN,
        "This form has expired",
        "The form was sent from an old page, another site, or without the portal's cookie, so nothing was done. Go back, reload the page and send it again (cookies must be allowed for this site).".into(),
    )
}

/// Every request passes here: it gets its CSRF secret, a POST is checked before any handler
/// sees it, and the whole request is bounded in time and logged.
pub async fn guard(State(web): State<Web>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let (mut parts, body) = request.into_parts();
    let mut new_presession = None;
    let secret = match cookie(&parts.headers, web.session_cookie()).or(cookie(&parts.headers, web.presession_cookie()))
    {
        Some(existing) => existing.to_owned(),
        None => {
            let fresh = licensing_domain::secrets::random_token("pre", 20);
            new_presession = Some(fresh.clone());
            fresh
        }
    };
    let secret = CsrfSecret(secret);
    let body = if method == Method::POST {
        let bytes = match axum::body::to_bytes(body, MAX_FORM_BYTES).await {
            Ok(bytes) => bytes,
            Err(_) => return (StatusCode::PAYLOAD_TOO_LARGE, "the form is too large").into_response(),
        };
        let sent = form_token(&bytes).unwrap_or_default();
        let expected = web.csrf_token(&secret);
        if new_presession.is_some()
            || !same_site(&parts.headers)
            || !constant_time_eq(sent.as_bytes(), expected.as_bytes())
        {
            tracing::info!(%method, %path, "portal: a form without a valid token or from another site was refused");
            return refused_form();
        }
        Body::from(bytes)
    } else {
        body
    };
    parts.extensions.insert(secret);
    let request = Request::from_parts(parts, body);
    let mut response = match tokio::time::timeout(web.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => super::view::failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "That took too long",
            "The portal did not finish in time. Try again in a moment.".into(),
        ),
    };
    if let Some(fresh) = new_presession {
        response.headers_mut().append(header::SET_COOKIE, web.set_cookie(web.presession_cookie(), &fresh, None));
    }
    tracing::info!(
        %method,
        %path,
        status = response.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "portal request"
    );
    response
}

/// The headers every answer carries; `secure` adds HSTS.
#[derive(Clone, Copy)]
pub struct SecurityHeadersLayer {
    /// Whether the portal is served over TLS.
    pub secure: bool,
}

impl<S> Layer<S> for SecurityHeadersLayer {
    type Service = SecurityHeaders<S>;
    fn layer(&self, inner: S) -> SecurityHeaders<S> {
        SecurityHeaders { inner, secure: self.secure }
    }
}

/// The service [`SecurityHeadersLayer`] wraps around `S`.
#[derive(Clone)]
pub struct SecurityHeaders<S> {
    inner: S,
    secure: bool,
}

/// No script, no plugin, no framing, forms only to this site.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

impl<S, B> Service<axum::http::Request<B>> for SecurityHeaders<S>
where
    S: Service<axum::http::Request<B>, Response = Response>,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::http::Request<B>) -> Self::Future {
        let future = self.inner.call(request);
        let secure = self.secure;
        Box::pin(async move {
            let mut response = future.await?;
            let headers = response.headers_mut();
            let mut set = |name: &'static str, value: &'static str| {
                headers.insert(name, HeaderValue::from_static(value));
            };
            set("content-security-policy", CONTENT_SECURITY_POLICY);
            set("x-content-type-options", "nosniff");
            set("x-frame-options", "DENY");
            // Nothing to other sites (a reset link's token stays here); the full URL to this one,
            // so browsers send a real Origin with forms (with no-referrer they send "null").
            set("referrer-policy", "same-origin");
            set("cross-origin-opener-policy", "same-origin");
            if secure {
                set("strict-transport-security", "max-age=31536000");
            }
            // Pages hold a customer's data and secrets: never kept by a browser or a proxy. The
            // stylesheet says otherwise for itself.
            headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; portal_session=ses_X; portal_session_old=y"));
        assert_eq!(cookie(&headers, "portal_session"), Some("ses_X"));
        assert_eq!(cookie(&headers, "session"), None);
    }

    #[test]
    fn a_post_from_another_site_is_not_same_site() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(same_site(&headers(&[("host", "portal.example:8080"), ("origin", "http://portal.example:8080")])));
        assert!(same_site(&headers(&[("host", "portal.example")])), "no Origin: the token decides");
        assert!(!same_site(&headers(&[("host", "portal.example"), ("origin", "https://evil.example")])));
        assert!(!same_site(&headers(&[("host", "portal.example"), ("origin", "null")])));
        assert!(!same_site(&headers(&[("host", "portal.example"), ("sec-fetch-site", "cross-site")])));
        assert!(!same_site(&headers(&[("host", "portal.example"), ("sec-fetch-site", "same-site")])), "a sibling site");
        assert!(same_site(&headers(&[
            ("host", "portal.example"),
            ("origin", "null"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn the_form_token_is_read_from_the_body() {
        assert_eq!(form_token(b"a=1&csrf=abc%20d&b=2").as_deref(), Some("abc d"));
        assert_eq!(form_token(b"a=1"), None);
    }
}
