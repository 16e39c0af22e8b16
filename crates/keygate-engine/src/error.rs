use keygate_store::StoreError;
use thiserror::Error;

/// Why an admin operation did not happen. The HTTP layer maps each variant to
/// one code; causes (store errors) go to the log, never to the client.
#[derive(Debug, Error)]
pub enum AdminError {
    #[error("{field}: {message}")]
    Validation { field: String, message: String },
    #[error("not found")]
    NotFound,
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("store unavailable")]
    Unavailable(#[source] StoreError),
}

impl AdminError {
    pub fn validation(field: &str, message: impl ToString) -> Self {
        Self::Validation {
            field: field.to_owned(),
            message: message.to_string(),
        }
    }
}

impl From<StoreError> for AdminError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => Self::NotFound,
            StoreError::Conflict(message) => Self::Conflict(message),
            other => Self::Unavailable(other),
        }
    }
}
