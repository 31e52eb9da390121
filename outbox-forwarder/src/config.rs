//! Forwarder settings.

use std::fmt;
use std::time::Duration;

use std::sync::Arc;

use outbox_core::{Envelope, Error, RetryPolicy, SharedClock, SystemClock};

use crate::breaker::BreakerConfig;

/// Called when the outbox hits an error it handles itself (a dead letter,
/// a fallback to memory): the event concerned, if any, and the error.
#[cfg(not(target_arch = "wasm32"))]
pub type ErrorCallback = Arc<dyn Fn(Option<&Envelope>, &Error) + Send + Sync>;

/// Called when the outbox hits an error it handles itself (a dead letter,
/// a fallback to memory): the event concerned, if any, and the error.
#[cfg(target_arch = "wasm32")]
pub type ErrorCallback = Arc<dyn Fn(Option<&Envelope>, &Error)>;

/// What happens to the later events of a key whose event was dead-lettered.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum DeadLetterPolicy {
    /// They wait until the dead letter is requeued: order is never broken.
    #[default]
    Park,
    /// They flow on: the dead letter is skipped.
    Skip,
}

/// Forwarder settings; [`ForwarderConfig::default`] suits most uses, and
/// each setting has a builder method of its name:
///
/// ```
/// use std::time::Duration;
/// use outbox_forwarder::ForwarderConfig;
///
/// let cfg = ForwarderConfig::default().batch_size(64).lease(Duration::from_secs(10));
/// assert_eq!(cfg.batch_size, 64);
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ForwarderConfig {
    /// This forwarder's leadership holder name (unique per instance).
    pub holder: String,
    /// Most events claimed per cycle.
    pub batch_size: usize,
    /// The claim limit of the first cycle after the forwarder found
    /// nothing (or started, or came back online), doubling with each full
    /// batch up to `batch_size`: the first events after an outage go out
    /// without waiting for a whole batch to be claimed. `None`: every
    /// claim takes `batch_size`. Default: `None` natively; 16 on wasm32,
    /// where a claim of 256 IndexedDB rows takes over 100 ms.
    pub first_batch: Option<usize>,
    /// Most events in flight at once (each of a different key).
    pub max_concurrency: usize,
    /// This forwarder holds an exclusive lock over the store's delivery
    /// (set by the browser's `TabForwarder` and `drain` while they hold
    /// the origin's Web Lock): its claims are marked
    /// [`ClaimRequest::exclusive`](outbox_core::ClaimRequest::exclusive),
    /// so a store may skip writing leases. Default `false`.
    pub exclusive: bool,
    /// How long claimed events stay leased.
    pub lease: Duration,
    /// Leadership grant lifetime; renewed when half gone.
    pub leader_ttl: Duration,
    /// The timer between cycles when something may be due.
    pub flush_interval: Duration,
    /// The longest wait when idle (the wait doubles from `flush_interval`
    /// while nothing is found).
    pub max_idle_interval: Duration,
    /// Backoff and attempt limit.
    pub retry: RetryPolicy,
    /// Park or skip after a dead letter.
    pub dead_letters: DeadLetterPolicy,
    /// Circuit breaker.
    pub breaker: BreakerConfig,
    /// How long a busy forwarder may go on claiming the next events of the
    /// keys it just delivered ([`DeliveryStore::claim_heads_of`]) before
    /// it claims in commit order over all keys again. Meanwhile older
    /// events of other keys are passed over; every forwarder claims in
    /// commit order at least this often, so they wait about this long at
    /// most. Going on is cheaper for a store whose claims in commit order
    /// walk past other forwarders' leased events (PostgreSQL). It is done
    /// only while the keys fill at least half a batch, so a forwarder that
    /// is not busy claims in commit order every time. Per-key order holds
    /// either way. `None`: always in commit order. Default: 500 ms.
    ///
    /// [`DeliveryStore::claim_heads_of`]: outbox_core::DeliveryStore::claim_heads_of
    pub fairness: Option<Duration>,
    /// Delivered events are pruned after this long (`None`: never).
    pub retention: Option<Duration>,
    /// Events pruned per pruning step.
    pub prune_batch: usize,
    /// Time between pruning steps.
    pub prune_every: Duration,
    /// Time between store statistics reads (for the gauges).
    pub stats_every: Duration,
    /// Where "now" comes from (share the store's).
    pub clock: SharedClock,
    /// Seed of the jitter generator.
    pub seed: u64,
    /// While a batch is being delivered, claim the next one (run loop
    /// only; [`Forwarder::run_once`](crate::Forwarder::run_once) never
    /// prefetches). The store keeps per-key order: a key with an event in
    /// flight is not claimed again until that event is settled.
    ///
    /// `None` (the default) decides by the store: on where leadership is
    /// exclusive (one forwarder claims; prefetching hides the claim's
    /// round trips behind the sink's), off where it is shared (concurrent
    /// forwarders already overlap their claims, and the extra batches in
    /// flight make every claim scan past more leased events: measured on
    /// PostgreSQL, +22-40% with one forwarder, -15-35% with four).
    pub prefetch: Option<bool>,
    /// Called with the event and an [`Error::DeadLettered`]
    /// when an event is dead-lettered.
    pub on_error: Option<ErrorCallback>,
}

impl Default for ForwarderConfig {
    /// Batches of 256, 64 in flight, 30 s lease, 15 s leadership, 100 ms
    /// flush interval backing off to 5 s when idle, default retry policy,
    /// parking dead letters, default breaker, going on with the delivered
    /// keys for up to 500 ms (`fairness`), 7-day retention pruned 500 at
    /// a time every minute, stats every second, system clock, prefetching
    /// decided by the store.
    fn default() -> Self {
        ForwarderConfig {
            holder: format!("forwarder-{}", uuid::Uuid::now_v7()),
            batch_size: 256,
            first_batch: if cfg!(target_arch = "wasm32") { Some(16) } else { None },
            max_concurrency: 64,
            exclusive: false,
            lease: outbox_core::retry::DEFAULT_LEASE,
            leader_ttl: Duration::from_secs(15),
            flush_interval: Duration::from_millis(100),
            max_idle_interval: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            dead_letters: DeadLetterPolicy::Park,
            breaker: BreakerConfig::default(),
            fairness: Some(Duration::from_millis(500)),
            retention: Some(outbox_core::retry::DEFAULT_RETENTION),
            prune_batch: 500,
            prune_every: Duration::from_secs(60),
            stats_every: Duration::from_secs(1),
            clock: SystemClock::shared(),
            seed: 0x5EED,
            prefetch: None,
            on_error: None,
        }
    }
}

impl ForwarderConfig {
    /// Sets: This forwarder's leadership holder name (unique per instance).
    pub fn holder(mut self, holder: impl Into<String>) -> Self {
        self.holder = holder.into();
        self
    }

    /// Sets: Most events claimed per cycle.
    pub fn batch_size(mut self, v: usize) -> Self {
        self.batch_size = v;
        self
    }

    /// Sets: the claim limit after an idle cycle, doubling up to
    /// `batch_size` (see [`ForwarderConfig::first_batch`]).
    pub fn first_batch(mut self, v: Option<usize>) -> Self {
        self.first_batch = v;
        self
    }

    /// Sets: whether this forwarder holds an exclusive lock over the
    /// store's delivery (see [`ForwarderConfig::exclusive`]).
    pub fn exclusive(mut self, v: bool) -> Self {
        self.exclusive = v;
        self
    }

    /// Sets: Most events in flight at once (each of a different key).
    pub fn max_concurrency(mut self, v: usize) -> Self {
        self.max_concurrency = v;
        self
    }

    /// Sets: How long claimed events stay leased.
    pub fn lease(mut self, v: Duration) -> Self {
        self.lease = v;
        self
    }

    /// Sets: Leadership grant lifetime; renewed when half gone.
    pub fn leader_ttl(mut self, v: Duration) -> Self {
        self.leader_ttl = v;
        self
    }

    /// Sets: The timer between cycles when something may be due.
    pub fn flush_interval(mut self, v: Duration) -> Self {
        self.flush_interval = v;
        self
    }

    /// Sets: The longest wait when idle.
    pub fn max_idle_interval(mut self, v: Duration) -> Self {
        self.max_idle_interval = v;
        self
    }

    /// Sets: Backoff and attempt limit.
    pub fn retry(mut self, v: RetryPolicy) -> Self {
        self.retry = v;
        self
    }

    /// Sets: Park or skip after a dead letter.
    pub fn dead_letters(mut self, v: DeadLetterPolicy) -> Self {
        self.dead_letters = v;
        self
    }

    /// Sets: Circuit breaker settings.
    pub fn breaker(mut self, v: BreakerConfig) -> Self {
        self.breaker = v;
        self
    }

    /// Sets: How long a forwarder may go on with the keys it just
    /// delivered before it claims in commit order again (`None`: always in
    /// commit order).
    pub fn fairness(mut self, v: Option<Duration>) -> Self {
        self.fairness = v;
        self
    }

    /// Sets: How long delivered events are kept (`None`: forever).
    pub fn retention(mut self, v: Option<Duration>) -> Self {
        self.retention = v;
        self
    }

    /// Sets: Events pruned per pruning step.
    pub fn prune_batch(mut self, v: usize) -> Self {
        self.prune_batch = v;
        self
    }

    /// Sets: Time between pruning steps.
    pub fn prune_every(mut self, v: Duration) -> Self {
        self.prune_every = v;
        self
    }

    /// Sets: Time between store statistics reads.
    pub fn stats_every(mut self, v: Duration) -> Self {
        self.stats_every = v;
        self
    }

    /// Sets: Where "now" comes from (share the store's).
    pub fn clock(mut self, v: SharedClock) -> Self {
        self.clock = v;
        self
    }

    /// Sets: Seed of the jitter generator.
    pub fn seed(mut self, v: u64) -> Self {
        self.seed = v;
        self
    }

    /// Sets: Claim the next batch while one is delivered (`None`: decided by the store).
    pub fn prefetch(mut self, v: Option<bool>) -> Self {
        self.prefetch = v;
        self
    }

    /// Sets the error callback (called with the event and an
    /// [`Error::DeadLettered`] when an event is dead-lettered).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + Send + Sync + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Sets the error callback (called with the event and an
    /// [`Error::DeadLettered`] when an event is dead-lettered).
    #[cfg(target_arch = "wasm32")]
    pub fn on_error(mut self, f: impl Fn(Option<&Envelope>, &Error) + 'static) -> Self {
        self.on_error = Some(Arc::new(f));
        self
    }

    /// Sets (or clears) the error callback as a shared value.
    pub fn on_error_callback(mut self, f: Option<ErrorCallback>) -> Self {
        self.on_error = f;
        self
    }
}

impl fmt::Debug for ForwarderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwarderConfig")
            .field("holder", &self.holder)
            .field("batch_size", &self.batch_size)
            .field("max_concurrency", &self.max_concurrency)
            .field("lease", &self.lease)
            .field("leader_ttl", &self.leader_ttl)
            .field("flush_interval", &self.flush_interval)
            .field("max_idle_interval", &self.max_idle_interval)
            .field("retry", &self.retry)
            .field("dead_letters", &self.dead_letters)
            .field("breaker", &self.breaker)
            .field("fairness", &self.fairness)
            .field("retention", &self.retention)
            .field("prefetch", &self.prefetch)
            .finish_non_exhaustive()
    }
}
