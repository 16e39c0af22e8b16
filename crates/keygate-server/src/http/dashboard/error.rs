//! The dashboard's errors: an HTML page with the same stable code and
//! message the admin API would give (crates/keygate-server/src/http/error.rs
//! makes the JSON ones), or a redirect to sign-in.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use keygate_core::error::ErrorInstance;
use keygate_core::ErrorCode;
use keygate_engine::AdminError;

use crate::http::error::{ApiError, ADMIN_CATALOG};

/// Why a dashboard page is not shown. Rendered as an HTML page with the same
/// stable code and message the admin API would give, or as a redirect to sign-in.
#[derive(Debug)]
pub enum DashboardError {
    /// No session, or it ended: go to the sign-in page.
    SignedOut,
    /// A form post without this session's CSRF token.
    CsrfRejected,
    Page(ErrorInstance),
}

impl DashboardError {
    pub fn not_found() -> Self {
        Self::Page(ErrorInstance::new(ErrorCode::NotFound))
    }

    pub fn bad_form(message: impl Into<String>) -> Self {
        Self::Page(ErrorInstance::new(ErrorCode::ValidationError).with_message(message))
    }
}

impl From<PathRejection> for DashboardError {
    fn from(_: PathRejection) -> Self {
        Self::not_found()
    }
}

impl From<QueryRejection> for DashboardError {
    fn from(rejection: QueryRejection) -> Self {
        Self::Page(ApiError::from(rejection).0)
    }
}

impl From<AdminError> for DashboardError {
    fn from(err: AdminError) -> Self {
        Self::Page(ApiError::from(err).0)
    }
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let error = match self {
            Self::SignedOut => return super::redirect(super::SIGN_IN_PATH),
            Self::CsrfRejected => ErrorInstance::new(ErrorCode::Forbidden).with_message(
                "This form did not come from your current dashboard session (its CSRF token is missing or wrong). \
                 Reload the page and try again.",
            ),
            Self::Page(error) => error,
        };
        let status = StatusCode::from_u16(ADMIN_CATALOG.status(error.code)).unwrap_or(StatusCode::BAD_REQUEST);
        let message = ADMIN_CATALOG.message(&error);
        super::error_page(status, error.code.as_str(), &message)
    }
}
