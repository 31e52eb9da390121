//! A custom outbox store: the whole store contract over a small key-value
//! backend (a map made durable by an append-only log file), proved by the
//! conformance suite in `tests/conformance.rs`.
//!
//! - [`kv`]: the backend. It knows nothing of the outbox: atomic batches
//!   of puts and deletes, synced before they return.
//! - [`store`]: the contract's five traits on it, deciding with the
//!   core's shared rules (`outbox_core::rules`: claim planning, fencing,
//!   validation) so it agrees with every other store.

pub mod kv;
pub mod store;

pub use store::KvStore;
