//! The metric names the forwarder reports through the `metrics` crate, and
//! [`describe`], which gives each its help text and unit.
//!
//! The names follow the Prometheus conventions once an exporter turns
//! `.` into `_` (as `metrics-exporter-prometheus` does): base units
//! (seconds), counters ending in `_total`, a unit suffix on what has one.
//! `outbox.delivered.total` is exported as `outbox_delivered_total`,
//! `outbox.flush.seconds` as `outbox_flush_seconds`, and so on; an
//! exporter's "recommended naming" option adds nothing to them.
//!
//! Labels stay bounded:
//!
//! - `sink`: the sink's [`Sink::name`](outbox_core::Sink::name), one short
//!   constant per kind of sink (`"bus"`, `"nats"`, `"consumer"`, ...).
//! - `event_type`: the event's type. Event types are a small set the
//!   application chooses (`"FORM_SAVED"`, `"ORDER_PLACED"`), never data;
//!   an application that makes types from data (ids, user input) gets a
//!   time series per value, and should not.
//!
//! Every counter is registered at 0 (labelled with `sink` only) when a
//! forwarder is created, so a dashboard sees `outbox_failed_total 0`
//! before the first failure instead of no series at all; the series with
//! an `event_type` appear with their first event.
//!
//! The gauges are read by the leader from the store (at most every
//! `stats_every`); a follower reports none of them.

/// Gauge: events committed and not yet delivered or dead (a count).
/// No labels.
pub const PENDING: &str = "outbox.pending";
/// Histogram: seconds per forwarder cycle that delivered something
/// (claim, publish, settle). Label `sink`.
pub const FLUSH_SECONDS: &str = "outbox.flush.seconds";
/// Gauge: 1 when new commits go to a durable store, 0 when not (memory,
/// `Durability::Off`, after a quota fallback). No labels.
pub const DURABLE: &str = "outbox.durable";
/// Gauge: age of the oldest pending event, in seconds (0 when none).
/// No labels.
pub const LAG_SECONDS: &str = "outbox.lag.seconds";
/// Counter: events delivered (the sink took them, and they were acked).
/// Labels `sink`, `event_type`.
pub const DELIVERED: &str = "outbox.delivered.total";
/// Counter: failed delivery attempts that are retried (`Retriable`,
/// `RetryAfter`, a missing outcome), including one that hits an opt-in
/// limit and is dead-lettered; a `NonRetriable` outcome is counted in
/// [`DEAD_LETTERED`] only. Labels `sink`, `event_type`.
pub const FAILED: &str = "outbox.failed.total";
/// Counter: events dead-lettered (a `NonRetriable` outcome or an opt-in
/// retry limit). Labels `sink`, `event_type`.
pub const DEAD_LETTERED: &str = "outbox.dead_lettered.total";
/// Gauge: ordering keys held back by a dead letter (under
/// `DeadLetterPolicy::Park`, a count). No labels.
pub const BLOCKED_KEYS: &str = "outbox.blocked_keys";
/// Gauge: 1 while the circuit breaker is open or probing, 0 when closed.
/// Label `sink`.
pub const CIRCUIT_OPEN: &str = "outbox.circuit_open";

/// The counters, each registered at 0 when a forwarder is created.
pub const COUNTERS: [&str; 3] = [DELIVERED, FAILED, DEAD_LETTERED];

/// Describes every metric above (help text and unit) to the current
/// `metrics` recorder, so an exporter prints `# HELP` and `# TYPE` lines.
///
/// Called by `Forwarder::new`; describing again is harmless (a recorder
/// keeps the last description). Call it yourself if you install a
/// recorder after the forwarder starts. Without the `metrics` feature it
/// does nothing.
pub fn describe() {
    #[cfg(feature = "metrics")]
    {
        use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
        describe_gauge!(PENDING, Unit::Count, "Events committed and not yet delivered or dead.");
        describe_histogram!(
            FLUSH_SECONDS,
            Unit::Seconds,
            "Duration of a forwarder cycle that delivered something: claim, publish, settle."
        );
        describe_gauge!(DURABLE, "1 when new commits go to a durable store, 0 when not.");
        describe_gauge!(LAG_SECONDS, Unit::Seconds, "Age of the oldest pending event (0 when none).");
        describe_counter!(DELIVERED, Unit::Count, "Events delivered to the sink and acknowledged.");
        describe_counter!(FAILED, Unit::Count, "Failed delivery attempts that are retried.");
        describe_counter!(
            DEAD_LETTERED,
            Unit::Count,
            "Events dead-lettered (non-retriable, or an opt-in retry limit reached)."
        );
        describe_gauge!(BLOCKED_KEYS, Unit::Count, "Ordering keys held back by a dead letter.");
        describe_gauge!(CIRCUIT_OPEN, "1 while the circuit breaker is open or probing, 0 when closed.");
    }
}
