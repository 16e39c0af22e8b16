//! The one place where errors become HTTP responses.
//!
//! Data-plane errors render in the deployment's format through its
//! [`ErrorCatalog`]; the admin API always answers with the envelope. Causes
//! (store errors and the like) are logged here and never sent to clients.

use std::sync::LazyLock;

use axum::body::Body;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keygate_core::error::ErrorInstance;
use keygate_core::{ErrorCatalog, ErrorCode};
use keygate_engine::{AdminError, Rejection};

use crate::config::ConfigError;
use crate::reload::ReloadError;

/// The admin API's catalog: envelope bodies, default messages.
pub(crate) static ADMIN_CATALOG: LazyLock<ErrorCatalog> = LazyLock::new(ErrorCatalog::default);

/// Renders an error with a catalog: status, body, `WWW-Authenticate`, `Retry-After`.
pub fn render(catalog: &ErrorCatalog, error: &ErrorInstance) -> Response {
    let rendered = catalog.render(error);
    let mut response = Response::new(Body::from(rendered.body));
    *response.status_mut() = StatusCode::from_u16(rendered.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(rendered.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(challenge) = rendered.www_authenticate.and_then(|c| HeaderValue::from_str(&c).ok()) {
        headers.insert(header::WWW_AUTHENTICATE, challenge);
    }
    if let Some(seconds) = rendered.retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// An admin API error, rendered as an envelope.
#[derive(Debug)]
pub struct ApiError(pub ErrorInstance);

impl ApiError {
    pub fn new(code: ErrorCode) -> Self {
        Self(ErrorInstance::new(code))
    }

    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self(
            ErrorInstance::new(ErrorCode::ValidationError)
                .with_message(format!("{field}: {message}"))
                .with_data("field", field),
        )
    }
}

impl ApiError {
    /// The admin API's message for this error, as a person should read it.
    pub fn message(&self) -> String {
        ADMIN_CATALOG.message(&self.0)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        render(&ADMIN_CATALOG, &self.0)
    }
}

impl From<AdminError> for ApiError {
    fn from(err: AdminError) -> Self {
        match err {
            AdminError::Validation { field, message } => Self::validation(&field, message),
            AdminError::NotFound => Self::new(ErrorCode::NotFound),
            AdminError::Forbidden(why) => Self(
                ErrorInstance::new(ErrorCode::Forbidden)
                    .with_message(format!("This API key may not perform this operation: {why}.")),
            ),
            AdminError::Conflict(why) => Self(
                ErrorInstance::new(ErrorCode::Conflict)
                    .with_message(format!("The request conflicts with the current state: {why}.")),
            ),
            AdminError::Unavailable(cause) => {
                tracing::error!(error = %cause, "admin operation failed in the store");
                Self(
                    ErrorInstance::new(ErrorCode::ServiceUnavailable)
                        .with_message("The store is unavailable; nothing was changed. Retry shortly."),
                )
            }
        }
    }
}

impl From<ReloadError> for ApiError {
    fn from(err: ReloadError) -> Self {
        let message = format!("{err}. The running config is unchanged.");
        match err {
            ReloadError::Invalid(ConfigError::Invalid { field, .. }) => Self(
                ErrorInstance::new(ErrorCode::InvalidConfig)
                    .with_message(message)
                    .with_data("field", field),
            ),
            ReloadError::Invalid(_) => Self(ErrorInstance::new(ErrorCode::InvalidConfig).with_message(message)),
            ReloadError::Secrets(_) => Self(
                ErrorInstance::new(ErrorCode::InvalidConfig)
                    .with_message(message)
                    .with_data("field", "secrets.key_file"),
            ),
            ReloadError::NeedsRestart(fields) => Self(
                ErrorInstance::new(ErrorCode::ConfigNeedsRestart)
                    .with_message(message)
                    .with_data("fields", fields),
            ),
            ReloadError::Interrupted => {
                tracing::error!("a config reload did not finish");
                Self::new(ErrorCode::InternalError)
            }
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(rejection: Rejection) -> Self {
        Self(rejection.error)
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self(ErrorInstance::new(ErrorCode::PayloadTooLarge).with_message(format!(
                "The request body is too large; the admin API accepts at most {} bytes ({} for a key import).",
                crate::http::extract::MAX_ADMIN_BODY,
                crate::http::extract::MAX_IMPORT_BODY
            )))
        } else {
            Self(ErrorInstance::new(ErrorCode::InvalidJson).with_message("The request body could not be read."))
        }
    }
}

impl From<PathRejection> for ApiError {
    fn from(_: PathRejection) -> Self {
        Self::new(ErrorCode::NotFound)
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        let text = rejection.body_text();
        let detail = text.trim_start_matches("Failed to deserialize query string: ");
        // `wait: must be ...`: the parameter's path, then what is wrong with it.
        if let Some((field, message)) = detail.split_once(": ") {
            if !field.is_empty() && field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Self::validation(field, message);
            }
        }
        // `unknown variant `x``: the name in backticks.
        let field = detail
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "query".to_owned());
        Self::validation(&field, detail)
    }
}

/// Known admin paths with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed)
}
