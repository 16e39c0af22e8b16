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
    feed_timing: FeedTiming,
}

impl PostgresStore {
    /// Connects to `postgres://...` and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::connect(PgConnectOptions::from_str(url)?).await
    }

    /// [`PostgresStore::open`] with at most `connections` connections.
    pub async fn open_with_connections(url: &str, connections: u32) -> Result<Self, StoreError> {
        Self::connect_with_connections(PgConnectOptions::from_str(url)?, connections).await
    }

    /// Connects with explicit options (tests use them to pick a schema) and migrates.
    pub async fn connect(options: PgConnectOptions) -> Result<Self, StoreError> {
        Self::connect_with_connections(options, crate::DEFAULT_CONNECTIONS).await
    }

    /// [`PostgresStore::connect`] with at most `connections` connections.
    pub async fn connect_with_connections(options: PgConnectOptions, connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(connections.max(1))
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
            feed_timing: FeedTiming::default(),
        })
    }

    /// NOTIFY inside the writing transaction: delivered on commit, never on rollback.
    fn announcement(&self) -> Option<(&'static str, &str)> {
        Some(("SELECT pg_notify(?, ?)", &self.channel))
    }

    /// How the store's transactions start: PostgreSQL's row locks need nothing more.
    fn begin_write(&self) -> &'static str {
        "BEGIN"
    }

    /// Conflicts with the flushes' inserts (ROW EXCLUSIVE) and with other
    /// jobs: the job waits for running flushes, and new ones wait for it.
    fn roll_up_lock(&self) -> &'static str {
        "LOCK TABLE usage_minutes IN SHARE ROW EXCLUSIVE MODE"
    }

    /// Fresh statistics before the top keys' windows move to a new day.
    /// Each moving window sums its key's leaving days, which the rollups'
    /// primary key finds at once; but statistics taken while the tables
    /// were small (a young deployment, its first midnight) make PostgreSQL
    /// read every key's days for each window instead: 51 s for 10,000
    /// keys, with the flushes waiting (BENCHMARKS.md, "PostgreSQL's work
    /// halved"). Once a day, this costs a sample of each table.
    fn before_windows_move(&self) -> Option<&'static str> {
        Some("ANALYZE usage_rollups, usage_key_windows")
    }

    async fn open_change_feed(&self) -> Result<Option<Box<dyn ChangeFeed>>, StoreError> {
        Ok(Some(Box::new(PgChangeFeed {
            pool: self.pool.clone(),
            channel: self.channel.clone(),
            timing: self.feed_timing,
            listener: None,
            heartbeat: None,
        })))
    }

    /// Changes the feed's heartbeat and silence limit (tests shorten them).
    pub fn with_feed_timing(mut self, timing: FeedTiming) -> Self {
        self.feed_timing = timing;
        self
    }
}

/// A LISTEN connection can die without an error: a NAT or proxy that drops an
/// idle connection leaves it half-open, and the node would stop hearing
/// revocations without knowing. So every node announces a heartbeat on the
/// channel, and a feed that hears nothing at all for `silence_limit` presumes
/// its connection dead and connects anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedTiming {
    pub heartbeat: Duration,
    pub silence_limit: Duration,
}

impl Default for FeedTiming {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(5),
            silence_limit: Duration::from_secs(12),
        }
    }
}

const HEARTBEAT: &str = "heartbeat";

/// LISTEN on a connection of its own. A lost connection is dropped and a new
/// one made, rather than left to sqlx's silent reconnect, so the node knows
/// when it may have missed changes ([`FeedEvent::Connected`]).
struct PgChangeFeed {
    pool: PgPool,
    channel: String,
    timing: FeedTiming,
    listener: Option<PgListener>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl PgChangeFeed {
    fn start_heartbeat(&mut self) {
        let (pool, channel, every) = (self.pool.clone(), self.channel.clone(), self.timing.heartbeat);
        self.heartbeat = Some(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            loop {
                ticker.tick().await;
                // A failure is the feed's to notice, by its silence.
                let _ = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&channel)
                    .bind(HEARTBEAT)
                    .execute(&pool)
                    .await;
            }
        }));
    }

    fn lost(&mut self, why: &str) -> StoreError {
        self.listener = None;
        StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            format!("the change feed's connection was lost: {why}"),
        )))
    }
}

impl Drop for PgChangeFeed {
    fn drop(&mut self) {
        if let Some(heartbeat) = self.heartbeat.take() {
            heartbeat.abort();
        }
    }
}

#[async_trait]
impl ChangeFeed for PgChangeFeed {
    async fn next(&mut self) -> Result<FeedEvent, StoreError> {
        let Some(listener) = self.listener.as_mut() else {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel).await?;
            self.listener = Some(listener);
            if self.heartbeat.is_none() {
                self.start_heartbeat();
            }
            return Ok(FeedEvent::Connected);
        };
        loop {
            // On silence the listener is dropped, never used again after the cancelled wait.
            let received = tokio::time::timeout(self.timing.silence_limit, listener.try_recv()).await;
            return match received {
                Ok(Ok(Some(notification))) if notification.payload() == HEARTBEAT => continue,
                Ok(Ok(Some(notification))) => Ok(match Change::decode(notification.payload()) {
                    Some(change) => FeedEvent::Changed(change),
                    None => FeedEvent::Unreadable,
                }),
                Ok(Ok(None)) => Err(self.lost("closed")),
                Ok(Err(err)) => {
                    self.listener = None;
                    Err(err.into())
                }
                Err(_) => Err(self.lost("nothing heard, not even a heartbeat")),
            };
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
