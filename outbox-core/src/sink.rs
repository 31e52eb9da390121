//! Where events go: the [`Sink`] trait and the typed [`Outcome`] a sink
//! reports per event. Runtime-free (like `tower`'s trait crate): a sink
//! crate depends on the core, never on the forwarder that drives it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::event::Envelope;
use crate::store::{MaybeSendSync, async_trait};

/// What happened to one event handed to a sink. The forwarder decides
/// retries from this, never from message text.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Outcome {
    /// Delivered; the event is acked.
    Ok,
    /// Not delivered this time; retry with backoff.
    Retriable(String),
    /// Never deliverable (rejected, malformed); dead-letter it now.
    NonRetriable(String),
    /// Not delivered; retry no earlier than after this delay (a broker's
    /// or an HTTP 429's "retry after").
    RetryAfter(Duration, String),
}

impl Outcome {
    /// Whether the event was delivered.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// A destination for events: an in-process bus, a broker, a webhook.
///
/// # Contract
///
/// `publish` returns exactly one outcome per event, in order. The forwarder
/// never hands a sink two events of one ordering key in the same call, and
/// never the next event of a key before the previous one's outcome is
/// known, so a sink may deliver a batch concurrently. Delivery is at least
/// once: a sink sees an event again after a crash between delivery and ack,
/// and should pass [`Envelope::idempotency_key`] on (NATS: `Nats-Msg-Id`).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Sink: MaybeSendSync + fmt::Debug {
    /// Delivers `batch`; one outcome per event, in order.
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome>;

    /// A short, fixed name for this kind of sink (`"bus"`, `"nats"`,
    /// `"webhook"`): the `sink` label of the forwarder's metrics and a
    /// field of its spans. Keep it one constant per sink, never per event
    /// or per destination: each distinct value is a time series of its
    /// own. Defaults to `"sink"`.
    fn name(&self) -> &str {
        "sink"
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<S: Sink + ?Sized> Sink for Arc<S> {
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        (**self).publish(batch).await
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}
