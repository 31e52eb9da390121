#![doc = include_str!("../README.md")]

mod actor;
#[cfg(all(target_arch = "wasm32", store_idb))]
pub mod browser;
mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod enlist;
mod fallback;
mod runtime;
pub mod trace;

pub use actor::{Actor, ActorError, ActorRef, Context, Sent};
pub use config::{Durability, OnQuota, OutboxConfig, StoreChoice};
#[cfg(not(target_arch = "wasm32"))]
pub use runtime::default_sqlite_path;
pub use runtime::{Outbox, configure_outbox, system_clock};

pub use outbox_consumer as consumer;
pub use outbox_core::{
    ActorId, Backoff, Commit, CommitReceipt, ConsumerId, DurableStore, Envelope, Error, ErrorKind, EventId,
    GiveUp, NewEvent, OrderingKey, Outcome, Payload, Result, RetryLimits, RetryPolicy, SharedClock, Sink,
    StoreStats, Timestamp, Version, prelude,
};
/// `async_trait` with the target's `Send`-ness: `#[async_trait]` natively,
/// `#[async_trait(?Send)]` on wasm32, so one `impl Actor` (or `Sink`,
/// `Handler`) compiles unchanged for both. With arguments, as written.
pub use outbox_macros::async_trait;

#[doc(hidden)]
pub mod __private {
    pub use outbox_core::async_trait;
}
pub use outbox_forwarder::{
    BreakerConfig, Bus, DeadLetterPolicy, ErrorCallback, ForwarderConfig, Subscription, Topic, metrics,
};
#[cfg(sink_nats)]
pub use outbox_sink_nats::NatsSink;
#[cfg(store_idb)]
pub use outbox_store_idb::IdbStore;
pub use outbox_store_memory::MemoryStore;
#[cfg(store_postgres)]
pub use outbox_store_postgres::PostgresStore;
#[cfg(store_sled)]
pub use outbox_store_sled::SledStore;
#[cfg(store_sqlite)]
pub use outbox_store_sqlite::SqliteStore;
