#![doc = include_str!("../README.md")]

mod consumer;

pub use consumer::{
    Consumer, Delivery, ExpiredPolicy, Handler, HandlerError, IdempotencyKey, InboxConfig, Tx, once_per_event,
};
pub use outbox_core::async_trait;

/// Metric: events dropped as duplicates (counter, label `consumer`).
pub const DUPLICATES: &str = "outbox.consumer.duplicates";
/// Metric: events refused as older than the inbox retention (counter,
/// label `consumer`).
pub const EXPIRED: &str = "outbox.consumer.expired";
