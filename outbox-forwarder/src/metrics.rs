//! The metric names the forwarder reports through the `metrics` crate.

/// Gauge: pending events.
pub const PENDING: &str = "outbox.pending";
/// Histogram: milliseconds per cycle that delivered something.
pub const FLUSH_MS: &str = "outbox.flush.ms";
/// Gauge: 1 when the store is durable, 0 when not.
pub const DURABLE: &str = "outbox.durable";
/// Gauge: age of the oldest pending event, in seconds.
pub const LAG_SECONDS: &str = "outbox.lag.seconds";
/// Counter: events delivered.
pub const DELIVERED: &str = "outbox.delivered";
/// Counter: failed delivery attempts.
pub const FAILED: &str = "outbox.failed";
/// Counter: events dead-lettered.
pub const DEAD_LETTERED: &str = "outbox.dead_lettered";
/// Gauge: keys held back by a dead letter (park policy).
pub const BLOCKED_KEYS: &str = "outbox.blocked_keys";
/// Gauge: 1 while the circuit breaker is open or probing.
pub const CIRCUIT_OPEN: &str = "outbox.circuit_open";
