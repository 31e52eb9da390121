//! Outbox commits written through the application's own database
//! transaction, next to its own tables: both commit, or neither.
//!
//! - SQLite (the `sqlite` feature, on by default): open a connection to
//!   the outbox file (the `rusqlite` re-exported here), begin a
//!   transaction, write your tables, call `SqliteStore::enlist` with the
//!   transaction and an outbox [`Commit`](crate::Commit) (events, and
//!   optionally an actor's state), then commit through the returned
//!   `SqliteEnlisted::commit`, which wakes the store's listeners;
//!   `wake_on_sqlite_commits` makes that wake the outbox's forwarder.
//! - PostgreSQL (the `postgres` feature): `PostgresStore::enlist` with a
//!   transaction of the `tokio_postgres` re-exported here; its `NOTIFY`
//!   goes out when the transaction commits, and
//!   `wake_on_postgres_commits` makes it wake the outbox's forwarder.
//!
//! The store's README (`outbox-store-sqlite`, `outbox-store-postgres`)
//! says what holds (ordering, savepoints, errors).
//!
//! ```
//! # #[cfg(feature = "sqlite")] {
//! use std::sync::Arc;
//! use outbox::enlist::{rusqlite, wake_on_sqlite_commits};
//! use outbox::{configure_outbox, ActorId, Bus, Commit, NewEvent, OutboxConfig, SqliteStore, StoreChoice, Topic};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let path = dir.path().join("app.db");
//! let store = Arc::new(SqliteStore::open(&path)?);
//! let bus = Bus::new();
//! let mut placed = bus.subscribe(Topic::EventType("ORDER_PLACED".into()));
//! let config = OutboxConfig::default().store(StoreChoice::Custom(store.clone()));
//! let outbox = configure_outbox(config, Arc::new(bus.sink())).await?;
//! let _wake = wake_on_sqlite_commits(&outbox, &store);
//!
//! // The application's connection, table and transaction.
//! let mut app = rusqlite::Connection::open(&path)?;
//! app.busy_timeout(std::time::Duration::from_secs(5))?;
//! app.execute_batch("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER)")?;
//! let tx = app.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
//! tx.execute("INSERT INTO orders VALUES ('o-1', 42)", [])?;
//! let event = NewEvent::json(ActorId::new("o-1")?, "ORDER_PLACED", &serde_json::json!({"total": 42}))?;
//! let enlisted = store.enlist(&tx, Commit::events_only().event(event))?;
//! enlisted.commit(tx)?; // the row and the event, one commit; then the forwarder is woken
//!
//! assert_eq!(placed.recv().await.expect("delivered").origin.as_str(), "o-1");
//! outbox.shutdown().await;
//! # Ok(()) }
//! # }
//! # #[cfg(not(feature = "sqlite"))] fn main() {}
//! ```

#[cfg(store_postgres)]
pub use outbox_store_postgres::{CommitListener as PostgresCommitListener, tokio_postgres};
#[cfg(store_sqlite)]
pub use outbox_store_sqlite::{CommitListener as SqliteCommitListener, Enlisted as SqliteEnlisted, rusqlite};

/// Wakes `outbox`'s forwarder after every commit enlisted through `store`
/// (committed with [`SqliteEnlisted::commit`], or announced with
/// `store.notify_committed()`), until the returned listener is dropped.
#[cfg(store_sqlite)]
pub fn wake_on_sqlite_commits(outbox: &crate::Outbox, store: &crate::SqliteStore) -> SqliteCommitListener {
    let outbox = outbox.clone();
    store.listen(move || outbox.wake())
}

/// Wakes `outbox`'s forwarder after every commit to `store`'s schema (by
/// any process, enlisted or not: PostgreSQL's `LISTEN`), until the
/// returned listener is dropped.
///
/// # Errors
///
/// The listening connection's failure to open, as
/// [`PostgresStore::listen`](crate::PostgresStore::listen) returns it.
#[cfg(store_postgres)]
pub async fn wake_on_postgres_commits(
    outbox: &crate::Outbox,
    store: &crate::PostgresStore,
) -> crate::Result<PostgresCommitListener> {
    let outbox = outbox.clone();
    store.listen(move || outbox.wake()).await
}
