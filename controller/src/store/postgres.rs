//! PostgreSQL: production, and the path to several controller replicas. A reservation
//! locks the host row (`SELECT … FOR UPDATE`) for its transaction, so concurrent
//! creates on any replica serialise per host; background loops take a transaction-level
//! advisory lock per tick so only one replica runs each.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use super::dialect::{Dialect, RowsAffected, Tx};
use super::{LoopKey, LoopLock, StoreError, rows, trust_rows};

/// The advisory lock (transaction-scoped) under which events are appended to the audit
/// chain, on every replica. Beside the loops' keys ([`LoopKey`]).
const CHAIN_LOCK: i64 = 0x666c_7510;

/// The first key of the owners' quota locks (`pg_advisory_xact_lock(int4, int4)`: a
/// space apart from the one-key locks above).
const OWNER_LOCK_SPACE: i32 = 0x666c_7511;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and migrates the database.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let opts = PgConnectOptions::from_str(url)
            .map_err(|e| StoreError::Unavailable(format!("database_url: {e}")))?;
        Self::connect_with(opts).await
    }

    /// Connects with explicit options (tests use a private `search_path`) and migrates.
    pub async fn connect_with(opts: PgConnectOptions) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
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
impl Dialect for PgStore {
    type Db = Postgres;

    fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The host row stays locked until the reservation commits: concurrent creates on
    /// any replica serialise per host.
    const HOST_FOR_RESERVATION: &'static str = rows::HOST_BY_NAME_FOR_UPDATE;

    async fn begin_reservation(&self) -> Result<Tx<Self>, sqlx::Error> {
        self.pool.begin().await
    }

    /// An advisory lock per owner (its name hashed), in a key space of its own.
    async fn lock_owner(tx: &mut Tx<Self>, agent_id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .bind(OWNER_LOCK_SPACE)
            .bind(agent_id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The sandbox row stays locked until the update commits, so the state read is the
    /// one the update changes.
    const SANDBOX_STATE_FOR_UPDATE: &'static str = trust_rows::SANDBOX_STATE_FOR_UPDATE;

    /// A write that appends to the audit chain; the chain's lock is taken as late as
    /// possible, by `append_in_tx` (`lock_chain`).
    async fn begin_chain(&self) -> Result<Tx<Self>, sqlx::Error> {
        self.pool.begin().await
    }

    /// Waits for the chain's advisory lock, held until `tx` ends: appends serialise
    /// across replicas, each reading the head the previous one committed. It is the last
    /// lock any transaction takes, so it cannot deadlock with row locks.
    async fn lock_chain(tx: &mut Tx<Self>) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHAIN_LOCK)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// A transaction-level advisory lock, held while the returned guard lives.
    async fn lock_loop(&self, key: LoopKey) -> Result<Option<LoopLock>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (got,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
            .bind(key as i64)
            .fetch_one(&mut *tx)
            .await?;
        Ok(got.then_some(LoopLock { tx: Some(tx) }))
    }
}

/// sqlx's own `rows_affected`, an inherent method of the result type.
impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows_affected(&self) -> u64 {
        Self::rows_affected(self)
    }
}
