//! Who is at the browser: the session cookie, and the CSRF token every form
//! post must carry.
//!
//! Cookies are `HttpOnly; SameSite=Strict; Path=/dashboard`, and `Secure`
//! when a trusted proxy says the browser reached it over HTTPS. The sign-in
//! form, which has no session yet, uses a double-submit token in a cookie of
//! its own.

use std::net::IpAddr;
use subtle::ConstantTimeEq;

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use cookie::{Cookie, SameSite};
use keygate_core::ip::is_trusted_proxy;
use keygate_engine::sessions::{BrowserSecret, DashboardSession, SessionError};
use serde::de::DeserializeOwned;

use crate::http::admin::AdminState as DashboardState;
use crate::http::dashboard::DashboardError;
use crate::http::extract::{client_ip, forwarded_https, peer_of};

pub const SESSION_COOKIE: &str = "kg_session";
pub const SIGN_IN_COOKIE: &str = "kg_sign_in";
pub const COOKIE_PATH: &str = "/dashboard";

/// The value of one cookie of the request, if present.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_owned())
}

/// A `Set-Cookie` value; `max_age: None` makes a browser-session cookie,
/// `Some(0)` removes the cookie.
pub fn set_cookie(name: &str, value: &str, secure: bool, max_age: Option<i64>) -> HeaderValue {
    let mut cookie = Cookie::build((name, value))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .build();
    if let Some(seconds) = max_age {
        cookie.set_max_age(cookie::time::Duration::seconds(seconds));
    }
    HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The browser's address, as the admin API sees it (trusted proxies apply).
pub fn browser_ip(parts: &Parts, state: &DashboardState) -> IpAddr {
    client_ip(peer_of(parts), &parts.headers, &state.trusted_proxies)
}

/// True when a trusted proxy terminated TLS for this request: cookies get `Secure`.
pub fn over_https(parts: &Parts, state: &DashboardState) -> bool {
    // The core's check, so an IPv4-mapped peer (`::ffff:10.0.0.1`) is
    // matched against IPv4 ranges here as it is on the data plane.
    let trusted = is_trusted_proxy(peer_of(parts).ip(), &state.trusted_proxies);
    forwarded_https(trusted, &parts.headers)
}

/// Compares in time independent of where the strings differ.
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// A signed-in browser. Without a live session: a redirect to the sign-in page.
pub struct SignedIn {
    pub secret: BrowserSecret,
    pub session: DashboardSession,
    pub secure: bool,
}

impl FromRequestParts<DashboardState> for SignedIn {
    type Rejection = DashboardError;

    async fn from_request_parts(parts: &mut Parts, state: &DashboardState) -> Result<Self, Self::Rejection> {
        let secret = cookie_value(&parts.headers, SESSION_COOKIE)
            .map(|value| BrowserSecret::from_presented(&value))
            .ok_or(DashboardError::SignedOut)?;
        let ip = browser_ip(parts, state);
        let session = state
            .engine
            .sessions()
            .session(&secret, ip)
            .await
            .map_err(|err| match err {
                SessionError::SignedOut => DashboardError::SignedOut,
                SessionError::Admin(err) => DashboardError::from(err),
            })?;
        Ok(Self {
            secret,
            session,
            secure: over_https(parts, state),
        })
    }
}

/// A form post from a signed-in browser whose CSRF token matches its session.
/// Every state-changing dashboard route takes its input through this.
pub struct Posted<T> {
    pub signed_in: SignedIn,
    pub form: T,
}

impl<T: DeserializeOwned + Send> FromRequest<DashboardState> for Posted<T> {
    type Rejection = DashboardError;

    async fn from_request(request: Request, state: &DashboardState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = request.into_parts();
        let signed_in = SignedIn::from_request_parts(&mut parts, state).await?;
        let bytes = axum::body::to_bytes(body, crate::http::extract::MAX_ADMIN_BODY)
            .await
            .map_err(|_| DashboardError::bad_form("The form is too large."))?;
        let csrf = form_field(&bytes, "csrf");
        if !csrf.is_some_and(|token| tokens_match(&token, &signed_in.session.csrf_token)) {
            return Err(DashboardError::CsrfRejected);
        }
        let form = serde_html_form::from_bytes(&bytes).map_err(|e| DashboardError::bad_form(e.to_string()))?;
        Ok(Self { signed_in, form })
    }
}

/// One field of a urlencoded body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(field, _)| field == name)
        .map(|(_, value)| value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_when_equal() {
        assert!(tokens_match("abc", "abc"));
        assert!(!tokens_match("abd", "abc"));
        assert!(!tokens_match("ab", "abc"));
        assert!(!tokens_match("", "abc"));
    }

    #[test]
    fn cookies_are_http_only_strict_and_scoped_to_the_dashboard() {
        let value = set_cookie(SESSION_COOKIE, "s3cret", false, None);
        let text = value.to_str().unwrap_or_default();
        assert!(text.starts_with("kg_session=s3cret"), "{text}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard"] {
            assert!(text.contains(attribute), "{text}");
        }
        assert!(!text.contains("Secure"));
        let secure = set_cookie(SESSION_COOKIE, "", true, Some(0));
        let text = secure.to_str().unwrap_or_default();
        assert!(text.contains("Secure") && text.contains("Max-Age=0"), "{text}");
    }

    #[test]
    fn a_cookie_is_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; kg_session=xyz; b=2"));
        assert_eq!(cookie_value(&headers, SESSION_COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie_value(&headers, SIGN_IN_COOKIE), None);
    }

    #[test]
    fn form_fields_are_decoded() {
        assert_eq!(form_field(b"name=a+b&csrf=x%2By", "csrf").as_deref(), Some("x+y"));
        assert_eq!(form_field(b"name=a", "csrf"), None);
    }
}
