#![doc = include_str!("../README.md")]

mod consumer;

pub use consumer::{
    Consumer, Delivery, ExpiredPolicy, Handler, HandlerError, IdempotencyKey, InboxConfig, Tx, once_per_event,
};
pub use outbox_core::async_trait;

/// Metric (counter, label `consumer`): events dropped as duplicates.
/// Exported by Prometheus as `outbox_consumer_duplicates_total`.
pub const DUPLICATES: &str = "outbox.consumer.duplicates.total";
/// Metric (counter, label `consumer`): events refused as older than the
/// inbox retention.
pub const EXPIRED: &str = "outbox.consumer.expired.total";
/// Metric (counter, label `consumer`): events applied (their effects and
/// inbox mark committed).
pub const APPLIED: &str = "outbox.consumer.applied.total";

/// Describes the consumer's metrics (help text and unit) to the current
/// `metrics` recorder, so an exporter prints `# HELP` and `# TYPE` lines.
/// Called by [`once_per_event`]; describing again is harmless.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter};
    describe_counter!(APPLIED, Unit::Count, "Events a consumer applied: effects and inbox mark committed.");
    describe_counter!(DUPLICATES, Unit::Count, "Redelivered events a consumer dropped as already processed.");
    describe_counter!(
        EXPIRED,
        Unit::Count,
        "Events a consumer refused as older than its inbox retention (reported, not applied)."
    );
}
