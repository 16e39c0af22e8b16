use thiserror::Error;

/// Store failures, by what the caller can do about them.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database cannot be reached or failed mid-operation; nothing was applied.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// A uniqueness rule was violated (e.g. a duplicate key hash).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The object to change does not exist.
    #[error("not found")]
    NotFound,
    /// A stored row cannot be read back (hand-edited database, bad migration).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Migrations could not be applied.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(db.message().to_owned()),
            sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) | sqlx::Error::ColumnNotFound(_) => {
                Self::Corrupt(err.to_string())
            }
            _ => Self::Unavailable(err),
        }
    }
}
