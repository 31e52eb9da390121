#![doc = include_str!("../README.md")]

mod actor;
mod config;
mod fallback;
mod runtime;
pub mod trace;

pub use actor::{Actor, ActorError, ActorRef, Context};
pub use config::{Durability, OutboxConfig, StoreChoice};
pub use runtime::{Outbox, configure_outbox, default_sqlite_path, system_clock};

pub use outbox_consumer as consumer;
pub use outbox_core::{
    ActorId, Backoff, Commit, CommitReceipt, ConsumerId, DurableStore, Envelope, Error, ErrorKind, EventId,
    GiveUp, NewEvent, OrderingKey, Outcome, Payload, Result, RetryLimits, RetryPolicy, SharedClock, Sink,
    StoreStats, Timestamp, Version, async_trait, prelude,
};
pub use outbox_forwarder::{
    BreakerConfig, Bus, DeadLetterPolicy, ErrorCallback, ForwarderConfig, Subscription, Topic, metrics,
};
#[cfg(feature = "nats")]
pub use outbox_sink_nats::NatsSink;
pub use outbox_store_memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use outbox_store_postgres::PostgresStore;
#[cfg(feature = "sled")]
pub use outbox_store_sled::SledStore;
#[cfg(feature = "sqlite")]
pub use outbox_store_sqlite::SqliteStore;
