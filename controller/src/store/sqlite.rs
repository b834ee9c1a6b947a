//! SQLite: the embedded default (one controller, a file in its data dir). Writers are
//! serialised by the database; a reservation runs in a `BEGIN IMMEDIATE` transaction,
//! which takes the write lock up front, so two reservations cannot interleave.
//!
//! The transactions that append to the audit chain (reservations, state changes,
//! commands, approvals: nearly every write) are begun on a pool of their own with one
//! connection, so they queue in the process, each woken the moment the one before
//! commits. Begun on the shared pool, they found the write lock taken and waited in
//! SQLite's busy handler, which sleeps 1 to 100 ms between tries: under 300 concurrent
//! sessions the writer sat idle between those sleeps (loadtest: creates at 0.3-0.5 of a
//! core, p99 1.3 s; see docs/PERFORMANCE.md). Reads keep the shared pool (WAL readers
//! never wait for the writer).
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
    /// One connection: the chain's writes, one at a time.
    writer: SqlitePool,
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
            .connect_with(opts.clone())
            .await?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Db(format!("migrating: {e}")))?;
        // Queued writers wait here, not in SQLite's busy handler; the timeout is the
        // pool's acquire (a writer that holds it that long is a fault).
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(opts)
            .await?;
        Ok(Self { pool, writer })
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
        self.writer.begin_with("BEGIN IMMEDIATE").await
    }

    /// Under the write lock (`begin_chain`), the state read stays current.
    const SANDBOX_STATE_FOR_UPDATE: &'static str = trust_rows::SANDBOX_STATE;

    /// A write that appends to the audit chain: `BEGIN IMMEDIATE` takes the write lock
    /// up front, which is the chain's lock too.
    async fn begin_chain(&self) -> Result<Tx<Self>, sqlx::Error> {
        self.writer.begin_with("BEGIN IMMEDIATE").await
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
