//! What differs between SQLite and PostgreSQL, and nothing else: the sqlx database
//! ([`Dialect::Db`]), how a reservation locks its host
//! ([`Dialect::begin_reservation`], [`Dialect::HOST_FOR_RESERVATION`]), how a sandbox
//! update reads the state it changes ([`Dialect::SANDBOX_STATE_FOR_UPDATE`]), how a
//! write that appends to the audit chain begins and takes the chain's lock
//! ([`Dialect::begin_chain`], [`Dialect::lock_chain`]), and the replica lock of a
//! background loop ([`Dialect::lock_loop`]). [`SqliteStore`](super::SqliteStore) and
//! [`PgStore`](super::PgStore) implement it; all other SQL is the same text for both.

use async_trait::async_trait;
use sqlx::{Database, Transaction};

use super::{LoopKey, LoopLock, StoreError};

/// A transaction of dialect `D`.
pub(super) type Tx<D> = Transaction<'static, <D as Dialect>::Db>;

/// One SQL dialect: the database and the few statements and locks that differ.
#[async_trait]
pub(super) trait Dialect: Send + Sync + 'static {
    type Db: Database;

    /// Reads the host a reservation checks room on (`HOST_BY_NAME` columns).
    const HOST_FOR_RESERVATION: &'static str;

    /// Begins a reservation's transaction.
    async fn begin_reservation(&self) -> Result<Tx<Self>, sqlx::Error>;

    /// Reads a sandbox's state before an update that may change it.
    const SANDBOX_STATE_FOR_UPDATE: &'static str;

    /// Begins a write that appends to the audit chain.
    async fn begin_chain(&self) -> Result<Tx<Self>, sqlx::Error>;

    /// Takes the audit chain's lock in `tx` (which `begin_chain` or `begin_reservation`
    /// began), held until `tx` ends.
    async fn lock_chain(tx: &mut Tx<Self>) -> Result<(), sqlx::Error>;

    /// `Some` when this replica may run the loop's next tick.
    async fn lock_loop(&self, key: LoopKey) -> Result<Option<LoopLock>, StoreError>;
}
