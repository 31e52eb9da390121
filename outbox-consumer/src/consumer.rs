use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outbox_core::event::TraceParent;
use outbox_core::{
    ActorId, Commit, ConsumerId, DurableStore, Envelope, Error, ErrorKind, EventId, InboxMark, MaybeSendSync,
    NewEvent, Outcome, RetryPolicy, SharedClock, Sink, StateWrite, SystemClock, Timestamp, Version,
    async_trait,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::{APPLIED, DUPLICATES, EXPIRED};

/// The key a consumer deduplicates on, and the one to pass to an outside
/// system (an HTTP `Idempotency-Key` header, a payment provider's key) so
/// that it can deduplicate too: the event's origin actor and id.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IdempotencyKey {
    /// The event's origin actor.
    pub origin: ActorId,
    /// The event's id.
    pub id: EventId,
}

impl fmt::Display for IdempotencyKey {
    /// `origin/id`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.origin, self.id)
    }
}

/// Why a handler did not handle an event. Nothing it staged is committed.
#[derive(Debug)]
pub enum HandlerError {
    /// Try again later (the event is redelivered).
    Retriable(String),
    /// The event can never be handled; the producer dead-letters it.
    NonRetriable(String),
    /// The store failed.
    Store(Error),
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::Retriable(m) => write!(f, "retriable: {m}"),
            HandlerError::NonRetriable(m) => write!(f, "non-retriable: {m}"),
            HandlerError::Store(e) => write!(f, "store: {e}"),
        }
    }
}

impl std::error::Error for HandlerError {}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::Store(e)
    }
}

/// What became of a delivered event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Delivery {
    /// Handled now; its effects and the inbox mark committed together.
    Applied,
    /// Already processed by this consumer: dropped, counted, acknowledged.
    Duplicate,
    /// Older than what the inbox still remembers (its mark, if it ever
    /// had one, may have been pruned): reported, not applied.
    Expired,
}

/// What to do with an event older than the inbox retention watermark.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum ExpiredPolicy {
    /// Refuse it ([`Delivery::Expired`]; as a sink, `NonRetriable`, so the
    /// producer dead-letters it with the reason, for a person to decide).
    #[default]
    Report,
    /// Apply it anyway (for handlers that are idempotent by themselves).
    Apply,
}

/// Inbox settings.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InboxConfig {
    /// How long inbox marks are kept.
    pub retention: Duration,
    /// Marks pruned per [`Consumer::prune`] call.
    pub prune_batch: usize,
    /// What to do with events older than the pruning watermark.
    pub expired: ExpiredPolicy,
    /// Allowance for clocks of producers running ahead of this one.
    pub clock_skew: Duration,
    /// Reruns of the handler when the consumer's state moved under it.
    pub max_conflict_retries: u32,
}

impl InboxConfig {
    /// Retention derived from the producer's delivery settings (its
    /// forwarder's `retry`, `lease` and `retention`): a
    /// duplicate comes from a redelivery after a processed event's ack was
    /// lost, which happens within the retry horizon (every backoff ceiling
    /// plus a lease per attempt, [`RetryPolicy::horizon`](outbox_core::RetryPolicy::horizon)),
    /// while the event is still in the outbox, which keeps delivered events
    /// for its `retention`. Marks are kept for the sum of the two.
    ///
    /// A producer that retries without bound (the default
    /// [`RetryPolicy`]: transient failures never give up) can redeliver
    /// after any outage, so its consumers keep their marks for ever
    /// (`Duration::MAX`: nothing is pruned, no event is refused as
    /// expired). To bound the inbox, bound the producer's retries with an
    /// opt-in `max_age` or `max_attempts`.
    pub fn for_delivery(retry: &RetryPolicy, lease: Duration, retention: Option<Duration>) -> Self {
        let keep = match retry.horizon(lease) {
            Some(horizon) => horizon.saturating_add(retention.unwrap_or(Duration::ZERO)),
            None => Duration::MAX,
        };
        InboxConfig {
            retention: keep,
            prune_batch: 500,
            expired: ExpiredPolicy::Report,
            clock_skew: Duration::from_secs(60),
            max_conflict_retries: 8,
        }
    }
}

impl Default for InboxConfig {
    /// [`InboxConfig::for_delivery`] of the default delivery settings
    /// (the forwarder's defaults: [`RetryPolicy::default`],
    /// [`DEFAULT_LEASE`](outbox_core::retry::DEFAULT_LEASE),
    /// [`DEFAULT_RETENTION`](outbox_core::retry::DEFAULT_RETENTION)).
    fn default() -> Self {
        Self::for_delivery(
            &RetryPolicy::default(),
            outbox_core::retry::DEFAULT_LEASE,
            Some(outbox_core::retry::DEFAULT_RETENTION),
        )
    }
}

/// What a handler stages; committed with the inbox mark as one atomic
/// write when the handler returns `Ok`.
pub struct Tx<'a> {
    store: &'a dyn DurableStore,
    key: IdempotencyKey,
    trace: TraceParent,
    loaded: Option<(ActorId, Version)>,
    state: Option<StateWrite>,
    events: Vec<NewEvent>,
}

impl fmt::Debug for Tx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tx")
            .field("key", &self.key)
            .field("trace", &self.trace)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// The idempotency key of the event being handled: pass it on to any
    /// system outside the store.
    pub fn idempotency_key(&self) -> &IdempotencyKey {
        &self.key
    }

    /// Reads `actor`'s committed state (`S::default()` if it has none).
    /// One actor per transaction.
    pub async fn load<S: DeserializeOwned + Default>(&mut self, actor: &ActorId) -> Result<S, HandlerError> {
        if let Some((a, _)) = &self.loaded
            && a != actor
        {
            return Err(HandlerError::Store(Error::invalid_input(format!(
                "a consumer transaction changes one actor; {a} is loaded, not {actor}"
            ))));
        }
        let snap = self.store.load_state(actor).await?;
        let version = snap.as_ref().map_or(Version::NONE, |s| s.version);
        self.loaded = Some((actor.clone(), version));
        match snap {
            Some(s) => serde_json::from_slice(&s.bytes).map_err(|e| HandlerError::Store(e.into())),
            None => Ok(S::default()),
        }
    }

    /// Stages the new state of the loaded actor.
    pub fn save<S: Serialize>(&mut self, state: &S) -> Result<(), HandlerError> {
        let Some((actor, expected_version)) = self.loaded.clone() else {
            return Err(HandlerError::Store(Error::invalid_input("save before load")));
        };
        let snapshot = serde_json::to_vec(state).map_err(|e| HandlerError::Store(e.into()))?;
        self.state = Some(StateWrite { actor, expected_version, snapshot });
        Ok(())
    }

    /// Stages an event, committed (and so delivered) only with the mark.
    /// It continues the handled event's trace: unless it has a
    /// `traceparent` header of its own, it gets a child of
    /// [`Tx::trace`].
    pub fn emit(&mut self, mut event: NewEvent) {
        self.trace.stamp(&mut event);
        self.events.push(event);
    }

    /// The trace context of this handling: a child of the handled event's
    /// `traceparent` (or a new trace, if it has none or a malformed one).
    /// It is also [current](TraceParent::current) while the handler runs.
    pub fn trace(&self) -> TraceParent {
        self.trace
    }
}

/// A consumer's event handler.
///
/// Effects on the consumer's own state go through [`Tx`] and commit with
/// the inbox mark: exactly once. Effects outside the store (an HTTP call)
/// happen inside `handle`; if the process dies after them and before the
/// mark commits, the event is redelivered and they happen again: at least
/// once, with the same [`Tx::idempotency_key`] for the outside system to
/// deduplicate on.
///
/// Implement it with `#[async_trait]` natively and `#[async_trait(?Send)]`
/// on wasm32 (where nothing needs to be `Send`).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait Handler: MaybeSendSync {
    /// Handles `event`, staging state and events in `tx`.
    async fn handle(&self, event: &Envelope, tx: &mut Tx<'_>) -> Result<(), HandlerError>;
}

/// A handler wrapped so each event takes effect once per consumer: see
/// [`once_per_event`].
pub struct Consumer<H> {
    store: Arc<dyn DurableStore>,
    id: ConsumerId,
    handler: H,
    cfg: InboxConfig,
    clock: SharedClock,
    /// The pruning watermark, cached: events before it may have lost their
    /// mark. Read from the store on first use.
    watermark: Mutex<Option<Option<Timestamp>>>,
}

impl<H> fmt::Debug for Consumer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer").field("id", &self.id).field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Wraps `handler` so that an event whose (origin, id) consumer `consumer`
/// has already processed is dropped, counted ([`DUPLICATES`](crate::DUPLICATES))
/// and acknowledged, and every other event's effects commit atomically with
/// its inbox mark in `store`.
///
/// Describes the consumer's metrics and registers its counters at 0
/// (labelled `consumer`).
pub fn once_per_event<H: Handler>(
    store: Arc<dyn DurableStore>,
    consumer: ConsumerId,
    handler: H,
) -> Consumer<H> {
    crate::describe_metrics();
    for name in [APPLIED, DUPLICATES, EXPIRED] {
        metrics::counter!(name, "consumer" => consumer.to_string()).increment(0);
    }
    Consumer {
        store,
        id: consumer,
        handler,
        cfg: InboxConfig::default(),
        clock: SystemClock::shared(),
        watermark: Mutex::new(None),
    }
}

fn event_time(id: EventId) -> Option<Timestamp> {
    let (secs, nanos) = id.as_uuid().get_timestamp()?.to_unix();
    Some(Timestamp::from_millis(i64::try_from(secs).ok()? * 1000 + i64::from(nanos / 1_000_000)))
}

impl<H: Handler> Consumer<H> {
    /// Sets the inbox settings.
    pub fn with_config(mut self, cfg: InboxConfig) -> Self {
        self.cfg = cfg;
        self
    }

    /// Reads time from `clock` (share the store's).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// The consumer's id.
    pub fn id(&self) -> &ConsumerId {
        &self.id
    }

    fn watermark_actor(&self) -> Result<ActorId, Error> {
        ActorId::new(format!("outbox.inbox-watermark/{}", self.id))
    }

    async fn watermark(&self) -> Result<Option<Timestamp>, Error> {
        if let Some(w) = *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(w);
        }
        let w = match self.store.load_state(&self.watermark_actor()?).await? {
            Some(s) => Some(serde_json::from_slice::<i64>(&s.bytes).map(Timestamp::from_millis)?),
            None => None,
        };
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(w);
        Ok(w)
    }

    /// Handles one delivery of `event`, exactly once in effect.
    ///
    /// It runs in an `outbox.consume` span (debug level) that continues the
    /// event's trace: `trace_id` is the one in the event's `traceparent`
    /// header (a new trace if it has none or a malformed one), `span_id`
    /// this handling's own, `parent_id` the event's. That context is
    /// [current](TraceParent::current) while the handler runs, and the
    /// events it emits carry a child of it.
    pub async fn deliver(&self, event: &Envelope) -> Result<Delivery, HandlerError> {
        let parent = event.trace_parent();
        let trace = parent.map_or_else(TraceParent::new_trace, |p| p.child());
        let span = tracing::debug_span!(target: "outbox", "outbox.consume",
            consumer = %self.id,
            event_id = %event.id,
            event_type = %event.event_type,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            parent_id = tracing::field::Empty,
            delivery = tracing::field::Empty,
        );
        if !span.is_disabled() {
            span.record("trace_id", trace.trace_id_hex().as_str());
            span.record("span_id", trace.span_id_hex().as_str());
            if let Some(p) = parent {
                span.record("parent_id", p.span_id_hex().as_str());
            }
        }
        let result = trace.scope(self.deliver_in_trace(event, trace)).instrument(span.clone()).await;
        if !span.is_disabled() {
            span.record(
                "delivery",
                match &result {
                    Ok(Delivery::Applied) => "applied",
                    Ok(Delivery::Duplicate) => "duplicate",
                    Ok(Delivery::Expired) => "expired",
                    Err(HandlerError::Retriable(_)) => "retriable",
                    Err(HandlerError::NonRetriable(_)) => "non_retriable",
                    Err(HandlerError::Store(_)) => "store_error",
                },
            );
        }
        result
    }

    async fn deliver_in_trace(&self, event: &Envelope, trace: TraceParent) -> Result<Delivery, HandlerError> {
        if self.store.is_processed(&self.id, &event.origin, event.id).await? {
            return Ok(self.duplicate(event));
        }
        if self.cfg.expired == ExpiredPolicy::Report
            && let (Some(w), Some(t)) = (self.watermark().await?, event_time(event.id))
            && t.saturating_add(self.cfg.clock_skew) < w
        {
            tracing::warn!(target: "outbox", consumer = %self.id, event = %event.id,
                "event is older than the inbox retention; not applied (it may be a duplicate whose mark was pruned)");
            metrics::counter!(EXPIRED, "consumer" => self.id.to_string()).increment(1);
            return Ok(Delivery::Expired);
        }
        let key = IdempotencyKey { origin: event.origin.clone(), id: event.id };
        let mut attempt = 0;
        loop {
            let mut tx = Tx {
                store: &*self.store,
                key: key.clone(),
                trace,
                loaded: None,
                state: None,
                events: Vec::new(),
            };
            self.handler.handle(event, &mut tx).await?;
            let mark =
                InboxMark { consumer: self.id.clone(), origin: event.origin.clone(), event_id: event.id };
            let commit = Commit { state: tx.state, events: tx.events, inbox: vec![mark] };
            match self.store.put_state_and_events(commit).await {
                Ok(_) => {
                    metrics::counter!(APPLIED, "consumer" => self.id.to_string()).increment(1);
                    return Ok(Delivery::Applied);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyProcessed => return Ok(self.duplicate(event)),
                Err(e) if e.kind() == ErrorKind::Conflict && attempt < self.cfg.max_conflict_retries => {
                    attempt += 1
                }
                Err(e) => return Err(HandlerError::Store(e)),
            }
        }
    }

    fn duplicate(&self, event: &Envelope) -> Delivery {
        tracing::debug!(target: "outbox", consumer = %self.id, event = %event.id, "duplicate delivery dropped");
        metrics::counter!(DUPLICATES, "consumer" => self.id.to_string()).increment(1);
        Delivery::Duplicate
    }

    /// Deletes up to `prune_batch` inbox marks older than the retention,
    /// after moving the watermark up to the cut-off (so an event whose mark
    /// goes is reported as expired, never silently re-applied). Returns how
    /// many marks were deleted.
    pub async fn prune(&self) -> Result<u64, Error> {
        let cut = self.clock.now().saturating_sub(self.cfg.retention);
        let actor = self.watermark_actor()?;
        let current = self.store.load_state(&actor).await?;
        let old = match &current {
            Some(s) => Some(Timestamp::from_millis(serde_json::from_slice::<i64>(&s.bytes)?)),
            None => None,
        };
        if old.is_none_or(|w| w < cut) {
            let version = current.map_or(Version::NONE, |s| s.version);
            let bytes = serde_json::to_vec(&cut.as_millis())?;
            self.store.put_state_and_events(Commit::state(actor, version, bytes)).await?;
        }
        let w = old.map_or(cut, |w| w.max(cut));
        *self.watermark.lock().unwrap_or_else(|p| p.into_inner()) = Some(Some(w));
        self.store.prune_inbox(cut, self.cfg.prune_batch).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<H: Handler> Sink for Consumer<H> {
    /// Delivers the batch one event at a time (the consumer's state is one
    /// actor): applied and duplicate events are `Ok`, expired ones
    /// `NonRetriable` with the reason, handler errors as they say.
    async fn publish(&self, batch: &[Envelope]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        for e in batch {
            out.push(match self.deliver(e).await {
                Ok(Delivery::Applied | Delivery::Duplicate) => Outcome::Ok,
                Ok(Delivery::Expired) => Outcome::NonRetriable(format!(
                    "older than consumer {}'s inbox retention: may be a duplicate whose mark was pruned",
                    self.id
                )),
                Err(HandlerError::Retriable(m)) => Outcome::Retriable(m),
                Err(HandlerError::NonRetriable(m)) => Outcome::NonRetriable(m),
                Err(HandlerError::Store(e)) => Outcome::Retriable(e.to_string()),
            });
        }
        out
    }

    /// `"consumer"`: the `sink` label of a forwarder delivering to it (the
    /// consumer's own metrics carry its id in their `consumer` label).
    fn name(&self) -> &str {
        "consumer"
    }
}
