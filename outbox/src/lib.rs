#![doc = include_str!("../README.md")]
#![warn(clippy::unwrap_used)]

mod actor;
mod fallback;
mod runtime;

pub use actor::{Actor, ActorError, ActorRef, Context};
pub use runtime::{DEFAULT_SQLITE_PATH, Outbox, configure_outbox, configure_with, system_clock};

pub use outbox_consumer as consumer;
pub use outbox_core::{
    ActorId, Commit, CommitReceipt, ConsumerId, Durability, DurableStore, Envelope, Error, ErrorKind,
    EventId, NewEvent, OutboxConfig, Payload, Result, StoreChoice, Version, prelude,
};
pub use outbox_forwarder::{Bus, ForwarderConfig, Outcome, Sink, Subscription, Topic};
pub use outbox_store_memory::MemoryStore;
#[cfg(feature = "sled")]
pub use outbox_store_sled::SledStore;
#[cfg(feature = "sqlite")]
pub use outbox_store_sqlite::SqliteStore;
