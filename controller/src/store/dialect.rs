//! What differs between SQLite and PostgreSQL, and nothing else.
//!
//! Every store method is written once, in a generic impl over [`Dialect`]
//! (`store_impl.rs`, `trust_impl.rs`, `egress.rs`, `snapshots.rs`, `playbooks_impl.rs`);
//! [`SqliteStore`] and [`PgStore`] implement `Dialect` and so get all of them. What a
//! dialect supplies:
//!
//! - its sqlx database ([`Dialect::Db`], with [`RowsAffected`]) and pool;
//! - how a reservation locks its host ([`Dialect::begin_reservation`],
//!   [`Dialect::HOST_FOR_RESERVATION`]);
//! - how a sandbox update reads the state it changes
//!   ([`Dialect::SANDBOX_STATE_FOR_UPDATE`]);
//! - how a write that appends to the audit chain begins and takes the chain's lock
//!   ([`Dialect::begin_chain`], [`Dialect::lock_chain`]);
//! - the replica lock of a background loop ([`Dialect::lock_loop`]).
//!
//! All other SQL is the same text for both.
//!
//! sqlx checks per database that a Rust type can be bound or read, so each generic impl
//! names in its `where` clause the types it uses ([`Param`], [`Field`]) and that the
//! database's connection executes queries and its rows are read by name (`&str`) and
//! position (`usize`). Both databases have all of it; the compiler checks that where
//! `SqliteStore` and `PgStore` become a `dyn Store`.
//!
//! [`SqliteStore`]: super::SqliteStore
//! [`PgStore`]: super::PgStore

use async_trait::async_trait;
use sqlx::{Database, Decode, Encode, IntoArguments, Pool, Transaction, Type};

use super::{LoopKey, LoopLock, StoreError};

/// A transaction of dialect `D`.
pub(super) type Tx<D> = Transaction<'static, <D as Dialect>::Db>;

/// A connection of dialect `D` (what `&mut *tx` and a pool execute on).
pub(super) type Conn<D> = <<D as Dialect>::Db as Database>::Connection;

/// A result row of dialect `D`.
pub(super) type Row<D> = <<D as Dialect>::Db as Database>::Row;

/// One SQL dialect: the database and the few statements and locks that differ.
#[async_trait]
pub(super) trait Dialect: Send + Sync + 'static {
    type Db: Database<Arguments: IntoArguments<Self::Db>, QueryResult: RowsAffected>;

    fn pool(&self) -> &Pool<Self::Db>;

    /// Reads the host a reservation checks room on (`HOST_BY_NAME` columns).
    const HOST_FOR_RESERVATION: &'static str;

    /// Begins a reservation's transaction.
    async fn begin_reservation(&self) -> Result<Tx<Self>, sqlx::Error>;

    /// Takes the lock of owner `agent_id`'s quota in a reservation's `tx`, held until
    /// it ends: reservations of one owner count its sandboxes one at a time. Taken
    /// first, before the host's lock.
    async fn lock_owner(tx: &mut Tx<Self>, agent_id: &str) -> Result<(), sqlx::Error>;

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

/// How many rows a statement changed: sqlx has it on each database's result type only.
pub(super) trait RowsAffected {
    fn rows_affected(&self) -> u64;
}

/// A value database `DB` binds as a parameter of a query that lives for `'q`.
pub(super) trait Param<'q, DB: Database>: Encode<'q, DB> + Type<DB> + Send + 'q {}

impl<'q, DB: Database, T> Param<'q, DB> for T where T: Encode<'q, DB> + Type<DB> + Send + 'q {}

/// An owned value database `DB` binds as a parameter and reads from a column.
pub(super) trait Field<DB: Database>:
    for<'q> Param<'q, DB> + for<'r> Decode<'r, DB>
{
}

impl<DB: Database, T> Field<DB> for T where T: for<'q> Param<'q, DB> + for<'r> Decode<'r, DB> {}
