//! Where the forwarder's metrics and spans go: the `metrics` crate's
//! recorder with the `metrics` feature (on by default), nowhere without it
//! (a browser bundle that reports no metrics does not carry the recorder
//! plumbing, and the forwarder skips the store reads that only feed
//! gauges); spans through `tracing`, at debug level.

use outbox_core::Envelope;
use outbox_core::event::TraceParent;
use tracing::Span;

#[cfg(feature = "metrics")]
use crate::metrics as m;

/// Delivered events per event type, counted while a batch is delivered and
/// reported once its acks are written (one counter update per type, not
/// per event). Event types are a small set: a linear search is enough.
#[derive(Debug, Default)]
pub(crate) struct TypeCounts {
    #[cfg(feature = "metrics")]
    counts: Vec<(String, u64)>,
}

impl TypeCounts {
    #[cfg(feature = "metrics")]
    pub(crate) fn add(&mut self, event_type: &str) {
        match self.counts.iter_mut().find(|(t, _)| t == event_type) {
            Some((_, n)) => *n += 1,
            None => self.counts.push((event_type.to_owned(), 1)),
        }
    }

    #[cfg(not(feature = "metrics"))]
    pub(crate) fn add(&mut self, _: &str) {}
}

/// A forwarder starts: every metric described, the counters registered at
/// 0 with its `sink` label, the circuit closed.
#[cfg(feature = "metrics")]
pub(crate) fn start(sink: &str) {
    m::describe();
    for name in m::COUNTERS {
        ::metrics::counter!(name, "sink" => sink.to_owned()).increment(0);
    }
    ::metrics::gauge!(m::CIRCUIT_OPEN, "sink" => sink.to_owned()).set(0.0);
}

#[cfg(feature = "metrics")]
pub(crate) fn delivered(sink: &str, types: &TypeCounts) {
    for (t, n) in &types.counts {
        ::metrics::counter!(m::DELIVERED, "sink" => sink.to_owned(), "event_type" => t.clone()).increment(*n);
    }
}

#[cfg(feature = "metrics")]
pub(crate) fn failed(sink: &str, event_type: &str) {
    ::metrics::counter!(m::FAILED, "sink" => sink.to_owned(), "event_type" => event_type.to_owned())
        .increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn dead_lettered(sink: &str, event_type: &str) {
    ::metrics::counter!(m::DEAD_LETTERED, "sink" => sink.to_owned(), "event_type" => event_type.to_owned())
        .increment(1);
}

#[cfg(feature = "metrics")]
pub(crate) fn flush(sink: &str, seconds: f64) {
    ::metrics::histogram!(m::FLUSH_SECONDS, "sink" => sink.to_owned()).record(seconds);
}

#[cfg(feature = "metrics")]
pub(crate) fn circuit(sink: &str, open: bool) {
    ::metrics::gauge!(m::CIRCUIT_OPEN, "sink" => sink.to_owned()).set(if open { 1.0 } else { 0.0 });
}

#[cfg(feature = "metrics")]
pub(crate) fn gauge(name: &'static str, v: f64) {
    ::metrics::gauge!(name).set(v);
}

#[cfg(not(feature = "metrics"))]
pub(crate) fn start(_: &str) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn delivered(_: &str, _: &TypeCounts) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn failed(_: &str, _: &str) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn dead_lettered(_: &str, _: &str) {}

#[cfg(not(feature = "metrics"))]
pub(crate) fn flush(_: &str, _: f64) {}

/// The span of one forwarder cycle; its results are recorded when it ends.
pub(crate) fn cycle_span(sink: &str) -> Span {
    tracing::debug_span!(target: "outbox", "outbox.cycle",
        sink,
        leader = tracing::field::Empty,
        claimed = tracing::field::Empty,
        delivered = tracing::field::Empty,
        retried = tracing::field::Empty,
        dead_lettered = tracing::field::Empty,
        released = tracing::field::Empty,
    )
}

/// The span of one event's publish: a child of the event's trace context
/// (its `traceparent` header; an event without a well-formed one starts a
/// new trace), with a span id of its own. `trace_id`, `span_id` and
/// `parent_id` are W3C hex ids, for finding the span from the event, the
/// producer's logs or the consumer's; `outcome` is recorded when known.
pub(crate) fn publish_span(sink: &str, e: &Envelope) -> Span {
    let span = tracing::debug_span!(target: "outbox", "outbox.publish",
        sink,
        event_id = %e.id,
        event_type = %e.event_type,
        key = %e.key,
        attempt = e.attempts,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let (parent, me) = match e.trace_parent() {
            Some(p) => (Some(p), p.child()),
            None => (None, TraceParent::new_trace()),
        };
        span.record("trace_id", me.trace_id_hex().as_str());
        span.record("span_id", me.span_id_hex().as_str());
        if let Some(p) = parent {
            span.record("parent_id", p.span_id_hex().as_str());
        }
    }
    span
}
