//! SQLite: the embedded default (one controller, a file in its data dir). Writers are
//! serialised by the database; a reservation runs in a `BEGIN IMMEDIATE` transaction,
//! which takes the write lock up front, so two reservations cannot interleave.
//!
//! WAL with `synchronous = NORMAL`, SQLite's recommended pairing: a commit survives a
//! crash or restart of the controller (and so every audit row written before a command
//! starts); only an OS crash or power loss may roll back the last commits. Measured on
//! the exec path with `exec-bench` (see ARCHITECTURE.md): FULL cost an fsync per commit.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use super::dialect::{Dialect, RowsAffected, Tx};
use super::{LoopKey, LoopLock, StoreError, rows, trust_rows};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file at `path` and migrates it.
    pub async fn open_file(path: &Path) -> Result<Self, StoreError> {
        Self::open(SqliteConnectOptions::new().filename(path)).await
    }

    /// Opens a `sqlite:` URL and migrates it.
    pub async fn connect_url(url: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("{url}: {e}")))?;
        Self::open(opts).await
    }

    async fn open(opts: SqliteConnectOptions) -> Result<Self, StoreError> {
        let opts = opts
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(15))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(opts)
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(format!("migrating: {e}")))?;
        Ok(Self { pool })
    }
}

#[async_trait]
impl Dialect for SqliteStore {
    type Db = Sqlite;

    fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front: reservations cannot interleave.
    const HOST_FOR_RESERVATION: &'static str = rows::HOST_BY_NAME;

    async fn begin_reservation(&self) -> Result<Tx<Self>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// Under the write lock (`begin_chain`), the state read stays current.
    const SANDBOX_STATE_FOR_UPDATE: &'static str = trust_rows::SANDBOX_STATE;

    /// A write that appends to the audit chain: `BEGIN IMMEDIATE` takes the write lock
    /// up front, which is the chain's lock too.
    async fn begin_chain(&self) -> Result<Tx<Self>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    /// A reservation was begun `IMMEDIATE`: it is the only writer already.
    async fn lock_owner(_tx: &mut Tx<Self>, _agent_id: &str) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// Every transaction that appends was begun `IMMEDIATE` (`begin_chain`,
    /// `begin_reservation`): it holds the lock already.
    async fn lock_chain(_tx: &mut Tx<Self>) -> Result<(), sqlx::Error> {
        Ok(())
    }

    /// One SQLite file has one controller: its loops always run.
    async fn lock_loop(&self, _key: LoopKey) -> Result<Option<LoopLock>, StoreError> {
        Ok(Some(LoopLock { tx: None }))
    }
}

/// sqlx's own `rows_affected`, an inherent method of the result type.
impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows_affected(&self) -> u64 {
        Self::rows_affected(self)
    }
}
