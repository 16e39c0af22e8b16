//! The shared store for many nodes: PostgreSQL, with the same schema and SQL
//! as the SQLite store (see `sql.rs`). Every write and its audit event share
//! one transaction, as on SQLite.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::StoreError;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `postgres://...` and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(PgConnectOptions::from_str(url)?).await
    }

    /// Connects with explicit options (tests use them to pick a schema) and migrates.
    pub async fn connect(options: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A store that does not answer must fail fast: callers turn this into a 503.
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }
}

/// The shared SQL uses `?`; PostgreSQL numbers its parameters (`$1`, `$2`, ...).
/// The statements hold no `?` inside string literals, so every `?` is a parameter.
fn sql_text(sql: &str) -> Cow<'_, str> {
    if !sql.contains('?') {
        return Cow::Borrowed(sql);
    }
    let mut numbered = String::with_capacity(sql.len() + 16);
    let mut index = 0;
    for c in sql.chars() {
        if c == '?' {
            index += 1;
            numbered.push('$');
            numbered.push_str(&index.to_string());
        } else {
            numbered.push(c);
        }
    }
    Cow::Owned(numbered)
}

crate::sql::sql_store!(PostgresStore, sqlx::Postgres, super::sql_text);

#[cfg(test)]
mod tests {
    use super::sql_text;

    #[test]
    fn placeholders_are_numbered_in_order() {
        assert_eq!(sql_text("SELECT 1"), "SELECT 1");
        assert_eq!(
            sql_text("UPDATE t SET a = ?, b = ? WHERE id = ?"),
            "UPDATE t SET a = $1, b = $2 WHERE id = $3"
        );
    }
}
