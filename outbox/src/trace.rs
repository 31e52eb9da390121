//! W3C trace context (`traceparent`) from the handler to the consumer's
//! effect.
//!
//! Every committed event carries a [`TRACEPARENT`] header: a child (same
//! trace id, a span id of its own) of the trace context current where the
//! work started:
//!
//! - [`ActorRef::send`](crate::ActorRef::send) captures the context current
//!   where it is called ([`current`], set with [`in_trace`]) or, if there is
//!   none, starts a new trace; the actor handles the message in a child of
//!   it (current while the handler runs, so what the handler sends or
//!   commits continues it), and each event it emits gets a child of that.
//! - [`Outbox::commit`](crate::Outbox::commit) stamps every event that has
//!   no `traceparent` of its own with a child of the current context (a new
//!   trace for the commit if there is none). An event whose header the
//!   application set is left alone.
//! - The forwarder's `outbox.publish` span and a consumer's
//!   `outbox.consume` span (both at debug level) continue the event's
//!   trace: their `trace_id` field is the event's, `span_id` their own,
//!   `parent_id` the event's span. Sinks pass headers on (the NATS sink as
//!   message headers), and the events a consumer's handler emits through
//!   [`Tx::emit`](crate::consumer::Tx::emit) carry a child of the
//!   consumer's span: one trace from the handler to the consumer's effect
//!   and beyond.
//!
//! The context is a task-local that needs no runtime (it is set while the
//! future is polled), so it works on any executor and on wasm32; tasks a
//! future spawns do not inherit it. Trace and span ids are random
//! (`SplitMix64` per thread, seeded from a UUID v7's random bits).
//!
//! ```
//! use outbox::trace::{self, TraceParent};
//!
//! # futures::executor::block_on(async {
//! // An incoming request's header (a malformed or missing one starts a new trace).
//! let incoming = trace::continue_or_start(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
//! let seen = trace::in_trace(incoming, async {
//!     // form.send(msg).await: the actor's events join this trace.
//!     trace::current()
//! })
//! .await;
//! assert_eq!(seen, Some(incoming));
//! assert_eq!(trace::current(), None);
//! # });
//! ```

use std::future::Future;

use outbox_core::NewEvent;
pub use outbox_core::event::{TRACEPARENT, TraceParent};

/// Runs `fut` with `trace` as the [current] trace context: actor messages
/// sent and events committed inside it join that trace.
pub async fn in_trace<F: Future>(trace: TraceParent, fut: F) -> F::Output {
    trace.scope(fut).await
}

/// The current trace context: the one set by [`in_trace`], by an actor
/// while it handles a message, or by a consumer while it handles an event.
pub fn current() -> Option<TraceParent> {
    TraceParent::current()
}

/// The trace context to continue from an incoming `traceparent` header (an
/// HTTP request's, a message's): the header's, if well-formed; otherwise
/// (missing, malformed, another version) a new trace.
pub fn continue_or_start(header: Option<&str>) -> TraceParent {
    header.and_then(TraceParent::parse).unwrap_or_else(TraceParent::new_trace)
}

/// Stamps each event that has no `traceparent` with a child of the current
/// context, started for this commit if there is none.
pub(crate) fn stamp(events: &mut [NewEvent]) {
    if events.iter().all(|e| e.headers.contains_key(TRACEPARENT)) {
        return;
    }
    let trace = current().unwrap_or_else(TraceParent::new_trace);
    for e in events {
        trace.stamp(e);
    }
}
