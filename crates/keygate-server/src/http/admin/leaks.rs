//! `POST /v1/leaks/github`: GitHub's secret-scanning partner endpoint
//! (crates/keygate-server/src/github.rs). Unauthenticated by key: GitHub's
//! signature is the credential. Each token is acted on by
//! `Admin::report_leak` (crates/keygate-engine/src/admin/leaks.rs).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::Json;
use keygate_core::ErrorCode;
use keygate_engine::admin::LeakReport;
use secrecy::ExposeSecret;

use crate::github::{self, Feedback, ReportedToken, MAX_TOKENS};
use crate::http::dto::ErrorEnvelope;
use crate::http::error::ApiError;
use crate::http::extract::parse;

use super::AdminState;

fn header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, github::SignatureError> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .ok_or(github::SignatureError::Missing(name))
}

/// A report from GitHub's secret scanning: each token that is a live key of
/// this deployment is acted on as `leaks.on_report` says, within this
/// request; the answer labels every token.
#[utoipa::path(post, path = "/v1/leaks/github", tag = "leaks", security(()),
    request_body = Vec<ReportedToken>,
    params(
        ("Github-Public-Key-Identifier" = String, Header, description = "The id of GitHub's key (`leaks.github_keys_file` or `_url`) that signed the body"),
        ("Github-Public-Key-Signature" = String, Header, description = "Base64 DER ECDSA P-256 signature of the body")),
    responses(
        (status = 200, body = Vec<Feedback>),
        (status = 400, description = "`INVALID_JSON`", body = ErrorEnvelope),
        (status = 401, description = "`INVALID_SIGNATURE`: unsigned, an unknown key id, or a signature that does not verify; nothing changed", body = ErrorEnvelope),
        (status = 404, description = "neither `leaks.github_keys_file` nor `leaks.github_keys_url` is set", body = ErrorEnvelope),
        (status = 413, description = "`PAYLOAD_TOO_LARGE`: over 64 KiB", body = ErrorEnvelope),
        (status = 422, description = "`VALIDATION_ERROR`: not an array of `{token, type, url?, source?}`, or over 1,000 tokens", body = ErrorEnvelope),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the store does not answer, or GitHub's keys could not be fetched; nothing changed, send it again", body = ErrorEnvelope)))]
pub(super) async fn github_report(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Vec<Feedback>>, ApiError> {
    let Some(keys) = state.github_keys.as_deref() else {
        return Err(ApiError::new(ErrorCode::NotFound));
    };
    let body = body?;
    let signed = async {
        let key_id = header(&headers, "github-public-key-identifier")?;
        let signature = header(&headers, "github-public-key-signature")?;
        keys.verify(key_id, signature, &body).await
    };
    match signed.await {
        Ok(()) => {}
        Err(err @ github::SignatureError::KeysUnavailable(_)) => {
            tracing::warn!(error = %err, "a GitHub leak report could not be checked; GitHub will send it again");
            return Err(ApiError::new(ErrorCode::ServiceUnavailable));
        }
        Err(err) => {
            tracing::warn!(error = %err, "a GitHub leak report was refused");
            return Err(ApiError::new(ErrorCode::InvalidSignature));
        }
    }
    let tokens: Vec<ReportedToken> = parse(&body)?;
    if tokens.len() > MAX_TOKENS {
        return Err(ApiError::validation(
            "body",
            format!("at most {MAX_TOKENS} tokens a report"),
        ));
    }
    let mut feedback = Vec::with_capacity(tokens.len());
    for reported in &tokens {
        let token = reported.token.expose_secret();
        let report = LeakReport {
            reporter: "github",
            url: reported.url.as_deref(),
            source: reported.source.as_deref(),
            ip: None,
        };
        let verdict = state.engine.admin().report_leak(token, report).await?;
        feedback.push(Feedback::new(token, &reported.kind, verdict.is_ours()));
    }
    Ok(Json(feedback))
}
