//! The shared store for many nodes: PostgreSQL, with the same schema and SQL
//! as the SQLite store (see `sql.rs`). Every write and its audit event share
//! one transaction, as on SQLite.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::PgPool;

use crate::changes::{channel_for_schema, Change, ChangeFeed, FeedEvent};
use crate::StoreError;

pub struct PostgresStore {
    pool: PgPool,
    /// Where this deployment's changes are announced (see [`channel_for_schema`]).
    channel: String,
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
        let schema: String = sqlx::query_scalar("SELECT current_schema()::TEXT")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            pool,
            channel: channel_for_schema(&schema),
        })
    }

    /// NOTIFY inside the writing transaction: delivered on commit, never on rollback.
    fn announcement(&self) -> Option<(&'static str, &str)> {
        Some(("SELECT pg_notify(?, ?)", &self.channel))
    }

    async fn open_change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(Some(Box::new(PgChangeFeed {
            pool: self.pool.clone(),
            channel: self.channel.clone(),
            listener: None,
        })))
    }
}

/// LISTEN on a connection of its own. A lost connection is dropped and a new
/// one made, rather than left to sqlx's silent reconnect, so the node knows
/// when it may have missed changes ([`FeedEvent::Connected`]).
struct PgChangeFeed {
    pool: PgPool,
    channel: String,
    listener: Option<PgListener>,
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<FeedEvent, StoreError> {
        let Some(listener) = self.listener.as_mut() else {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel).await?;
            self.listener = Some(listener);
            return Ok(FeedEvent::Connected);
        };
        match listener.try_recv().await {
            Ok(Some(notification)) => Ok(match Change::decode(notification.payload()) {
                Some(change) => FeedEvent::Changed(change),
                None => FeedEvent::Unreadable,
            }),
            Ok(None) => {
                self.listener = None;
                Err(StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the change feed's connection was lost",
                ))))
            }
            Err(err) => {
                self.listener = None;
                Err(err.into())
            }
        }
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
