//! What a call can end with besides its answer: keygate's refusal, with the
//! error catalog's stable code (crates/keygate-core/src/error.rs), or no
//! answer at all.

use keygate_core::ErrorCode;
use serde_json::Value;

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// keygate answered with an error from its catalog.
    #[error("{}", .0)]
    Api(ApiError),
    /// keygate could not be reached, or did not answer in time.
    #[error("keygate could not be reached: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// keygate answered with a body this client cannot read.
    #[error("keygate answered {status} with a body this client cannot read")]
    Unreadable { status: u16 },
}

impl Error {
    /// The catalog's code, when keygate refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Api(api) => api.code(),
            _ => None,
        }
    }

    /// Whether keygate was not there to answer (not reachable, or a 5xx):
    /// what the tower layer serves its last good answers for.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Api(api) => api.status >= 500,
            Self::Unreachable(_) | Self::Unreadable { .. } => true,
        }
    }
}

/// keygate's error envelope, as it was sent.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    /// The stable code (`INVALID_API_KEY`); a newer keygate may send one
    /// this client does not know, so it is kept as text.
    pub code: String,
    pub message: String,
    /// The whole body, for the fields of `data` (`scope`, `retry_after`).
    pub body: Value,
    /// The headers a client acts on: `Retry-After`, the rate-limit headers,
    /// `WWW-Authenticate`.
    pub headers: Vec<(String, String)>,
}

impl ApiError {
    /// The catalog's code, if this client knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.code)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

/// A refusal as the gateway sends it (`Client::verify_as_gateway`), in the
/// deployment's error format, for a middleware to pass on as it is.
#[derive(Debug, Clone)]
pub struct GatewayRefusal {
    pub status: u16,
    /// `Content-Type` and the headers a client acts on.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Headers of a refusal that a caller passes on to its own client (`name`
/// as the `http` crate keeps it: lowercase).
pub(crate) fn is_passed_on(name: &str) -> bool {
    name == "retry-after"
        || name == "www-authenticate"
        || name.starts_with("x-ratelimit-")
        || name.starts_with("ratelimit")
        || name.starts_with("x-credits-")
}
