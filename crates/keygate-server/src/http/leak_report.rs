//! The public leak report on the data plane: `POST {leaks.report_path}`
//! with `{"key": "...", "url": "..."}`, taken before the configured routes,
//! from anyone and without a key (as GitHub's own token-revocation API).
//! The key's checksum is checked before anything else; every well-formed
//! report gets the same `202`, whether the key was live, dead or never
//! existed, so the endpoint tells nobody which keys exist; and one address
//! may send [`PUBLIC_REPORTS_PER_MINUTE`] a minute. What it does to a live
//! key is `leaks.on_report` (crates/keygate-engine/src/admin/leaks.rs).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keygate_core::error::ErrorInstance;
use keygate_core::ErrorCode;
use keygate_engine::admin::{PublicReport, PUBLIC_REPORTS_PER_MINUTE};
use serde::Deserialize;
use serde_json::json;

use super::dto::SecretKeyText;
use super::error::ApiError;
use super::extract::parse;
use super::gateway::Exchange;
use secrecy::ExposeSecret;

/// Far above a key and a URL, far below harm.
const MAX_REPORT_BYTES: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Report {
    key: SecretKeyText,
    url: Option<String>,
}

/// Answers one public report.
pub(crate) async fn answer(
    engine: &keygate_engine::Engine,
    exchange: &Exchange,
    request: axum::extract::Request,
) -> Response {
    let Ok(body) = axum::body::to_bytes(request.into_body(), MAX_REPORT_BYTES).await else {
        return exchange.error(&ErrorCode::PayloadTooLarge.into());
    };
    let report: Report = match parse(&body) {
        Ok(report) => report,
        Err(ApiError(error)) => return exchange.error(&error),
    };
    let reported = engine
        .admin()
        .report_leak_publicly(report.key.0.expose_secret(), report.url.as_deref(), exchange.client)
        .await;
    match reported {
        Ok(PublicReport::Received) => (StatusCode::ACCEPTED, Json(json!({"received": true}))).into_response(),
        Ok(PublicReport::TooMany { retry_after_secs }) => {
            let error = ErrorInstance::new(ErrorCode::RateLimitExceeded).with_message(format!(
                "At most {PUBLIC_REPORTS_PER_MINUTE} reports a minute from one address. Try again in {retry_after_secs} seconds."
            ));
            let mut response = exchange.error(&error);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        Err(err) => exchange.error(&ApiError::from(err).0),
    }
}
