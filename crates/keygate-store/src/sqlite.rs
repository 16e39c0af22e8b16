//! The embedded default store: SQLite in WAL mode with `synchronous = FULL`,
//! so an acknowledged write survives a crash of the process (and of the machine).

use std::str::FromStr;
use std::time::Duration;

use std::borrow::Cow;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::StoreError;

pub struct SqliteStore {
    pool: SqlitePool,
}

/// Connections to one SQLite file at most: it has one writer at a time.
pub const MAX_CONNECTIONS: u32 = 8;

/// The database file a `sqlite:` URL names, as [`SqliteStore::open`] reads
/// it; `None` for an in-memory database or another scheme. Files that live
/// next to the database (the secrets key) are found from it.
pub fn database_file(url: &str) -> Option<std::path::PathBuf> {
    if !url.starts_with("sqlite:") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    // sqlx names an in-memory database `file:sqlx-in-memory-...`.
    let name = file.to_string_lossy();
    let in_memory = name.is_empty() || name == ":memory:" || name.starts_with("file:");
    (!in_memory).then(|| file.to_path_buf())
}

impl SqliteStore {
    /// Opens (creating the file and its folder if needed) and migrates.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_connections(url, MAX_CONNECTIONS).await
    }

    /// [`SqliteStore::open`] with at most `connections` connections.
    pub async fn open_with_connections(url: &str, connections: u32) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        if let Some(parent) = options.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent).map_err(|e| StoreError::Unavailable(sqlx::Error::Io(e)))?;
            }
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(connections.max(1))
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// One node per SQLite file: the node that writes evicts its own cache,
    /// so nothing is announced and there is nobody to hear from.
    async fn open_change_feed(&self) -> Result<Option<Box<dyn crate::ChangeFeed>>, StoreError> {
        Ok(None)
    }

    fn announcement(&self) -> Option<(&'static str, &str)> {
        None
    }

    /// How the store's transactions start. Each of them writes, and
    /// `IMMEDIATE` takes SQLite's write lock at once: a transaction that read
    /// first and then wrote would fail with `SQLITE_BUSY_SNAPSHOT` (not wait
    /// for `busy_timeout`) when another connection had written in between.
    /// The background thread's store connection makes that likelier
    /// (crates/keygate-server/src/background.rs).
    fn begin_write(&self) -> &'static str {
        "BEGIN IMMEDIATE"
    }

    /// A write first: the job holds SQLite's one write lock from its start,
    /// so nothing is flushed while it reads the minutes.
    fn roll_up_lock(&self) -> &'static str {
        "UPDATE usage_rollup_progress SET rolled_until = rolled_until WHERE id = 1"
    }

    /// Nothing: SQLite's planner picks the rollups' primary key for the
    /// windows' sums by its equality columns, statistics or not
    /// (PostgreSQL's does not: crates/keygate-store/src/postgres.rs).
    fn before_windows_move(&self) -> Option<&'static str> {
        None
    }
}

/// SQLite takes the `?` placeholders the shared SQL is written with.
fn sql_text(sql: &str) -> Cow<'_, str> {
    Cow::Borrowed(sql)
}

crate::sql::sql_store!(SqliteStore, sqlx::Sqlite, super::sql_text);
