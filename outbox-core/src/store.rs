//! The store contract: what every backend (memory, SQLite, sled, IndexedDB,
//! PostgreSQL, or your own) promises.
//!
//! The contract is split by concern into [`StateStore`], [`DeliveryStore`],
//! [`InspectStore`], [`InboxStore`] and [`LeaderStore`]; [`DurableStore`]
//! is all of them plus [`DurableStore::capabilities`], and is what the rest
//! of the library takes (`Arc<dyn DurableStore>`).
//!
//! The conformance suite in `outbox-testkit` is the executable form of the
//! `# Contract` sections below: a behaviour it does not test is not promised.
//!
//! # Time
//!
//! A store reads "now" from the [`Clock`](crate::Clock) it was built with,
//! never from the system directly, so tests can move time.
//!
//! # Implementing
//!
//! Implement the five traits with [`async_trait`](macro@async_trait) (re-exported here; use
//! `#[async_trait(?Send)]` on `wasm32`), call [`Commit::validate`] first in
//! [`StateStore::put_state_and_events`], and run the conformance suite.

use std::fmt;
use std::time::Duration;

pub use async_trait::async_trait;

use crate::OrderingKey;
use crate::commit::{Commit, Limits};
use crate::error::Result;
use crate::event::Envelope;
use crate::id::{ActorId, ConsumerId, Epoch, EventId};
use crate::state::{StateSnapshot, Version};
use crate::time::Timestamp;

/// `Send + Sync` on native targets; nothing on `wasm32`, where futures and
/// stores hold JavaScript values that are neither.
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync + ?Sized> MaybeSendSync for T {}

/// `Send + Sync` on native targets; nothing on `wasm32`, where futures and
/// stores hold JavaScript values that are neither.
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T: ?Sized> MaybeSendSync for T {}

/// What a successful commit reports.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CommitReceipt {
    /// The new state version, if the commit changed state.
    pub version: Option<Version>,
    /// When it was committed, by the store's clock.
    pub committed_at: Timestamp,
    /// Whether the commit reached the store's own storage: `false` when
    /// only memory holds it (the in-memory store, or a quota fallback that
    /// took it while the durable store was full), so that a restart before
    /// it is written to storage loses it. When `true`, the commit is as
    /// durable as the store's [`Capabilities::durable`] says.
    pub durable: bool,
}

/// Actor state and the atomic commit.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait StateStore: MaybeSendSync {
    /// Writes the state change, the events and the inbox marks of `commit`
    /// as one atomic unit.
    ///
    /// # Contract
    ///
    /// - All or nothing: on any error, the store holds exactly what it held
    ///   before (no state without its events, no events without their state,
    ///   no inbox mark without either).
    /// - Input is checked with [`Commit::validate`] against the store's
    ///   [`Limits`] before anything is written ([`Error::InvalidInput`](crate::Error::InvalidInput)).
    /// - The state write succeeds only if the actor's stored version equals
    ///   `expected_version` ([`Version::NONE`] when it has none); otherwise
    ///   [`Error::Conflict`](crate::Error::Conflict). On success the version is
    ///   `expected_version.next()`.
    /// - An event id already in the store (pending, dead or delivered and
    ///   not yet pruned) fails the commit with
    ///   [`Error::DuplicateEvent`](crate::Error::DuplicateEvent).
    /// - An inbox mark already stored fails the commit with
    ///   [`Error::AlreadyProcessed`](crate::Error::AlreadyProcessed).
    /// - Events become claimable in the order of `commit.events`, after all
    ///   events of earlier commits that share their ordering key.
    /// - When it returns `Ok`, the commit is as durable as
    ///   [`Capabilities::durable`] says.
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt>;

    /// The last committed state of `actor`, or `None` if it has none.
    ///
    /// # Contract
    ///
    /// Reflects every commit that returned `Ok` before the call started
    /// (read-your-writes), and survives reopen on a store whose
    /// [`Capabilities::survives_reopen`] is true.
    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>>;
}

/// A grant of the flusher role, presented with every delivery operation.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LeaderGrant {
    /// Who holds it.
    pub holder: String,
    /// Its epoch; larger than every earlier grant's.
    pub epoch: Epoch,
    /// When it lapses unless renewed (by the store's clock).
    pub expires_at: Timestamp,
}

/// How many leadership grants a store allows at once.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum LeadershipMode {
    /// One flusher at a time (embedded stores, browser tabs): a new grant
    /// fences every earlier one.
    Exclusive,
    /// Many concurrent flushers (PostgreSQL): each grant has its own epoch,
    /// and fencing is per claimed event.
    Shared,
}

/// The single-flusher role.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait LeaderStore: MaybeSendSync {
    /// Tries to become a flusher for `ttl`.
    ///
    /// # Contract
    ///
    /// - Returns `Some` with an epoch larger than any earlier grant's, or
    ///   `None` when (in [`LeadershipMode::Exclusive`]) another holder's
    ///   grant has not expired and has not been released.
    /// - A holder that already holds the role gets a new grant (the old one
    ///   is fenced). Use a holder name unique to the process instance.
    /// - A zero `ttl` is [`Error::InvalidInput`](crate::Error::InvalidInput).
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>>;

    /// Extends `grant` by `ttl` from now, keeping its epoch.
    ///
    /// # Contract
    ///
    /// [`Error::Fenced`](crate::Error::Fenced) if the grant was superseded
    /// or released. An expired grant that nobody else took is renewed.
    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant>;

    /// Gives the role up so another holder can take it at once.
    ///
    /// # Contract
    ///
    /// Releasing a superseded grant does nothing and is not an error.
    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()>;
}

/// What to claim.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ClaimRequest {
    /// Most events to return (0 returns none).
    pub limit: usize,
    /// How long the claimed events stay leased to the claimer.
    pub lease: Duration,
    /// Whether a dead-lettered event blocks the later events of its key
    /// until it is requeued (park) or not (skip).
    pub park_dead_keys: bool,
    /// The claimer is the only one that can claim from this store now (it
    /// holds an exclusive lock over the store's delivery, such as the
    /// origin's Web Lock in a browser), and settles its claims through
    /// this same store handle. A store may then keep the claim in this
    /// handle's memory instead of writing a lease per event: the events
    /// stay claimed for `lease` or until settled, as with a written
    /// lease, but only this handle sees it, and the attempt is counted
    /// when it is settled (a crash between claim and settle does not
    /// count it). Settling under a superseded grant is still `Fenced`.
    /// Stores that do not use it write leases as usual.
    pub exclusive: bool,
}

impl ClaimRequest {
    /// Claims up to `limit` events for `lease`, skipping past dead letters.
    pub fn new(limit: usize, lease: Duration) -> Self {
        ClaimRequest { limit, lease, park_dead_keys: false, exclusive: false }
    }

    /// Sets whether the claimer holds an exclusive lock over the store's
    /// delivery (see [`ClaimRequest::exclusive`]).
    pub fn exclusive(mut self, exclusive: bool) -> Self {
        self.exclusive = exclusive;
        self
    }

    /// Sets whether dead letters park their key.
    pub fn park_dead_keys(mut self, park: bool) -> Self {
        self.park_dead_keys = park;
        self
    }
}

/// Claiming and settling events for delivery.
///
/// Every operation runs under a [`LeaderGrant`]; one whose grant has been
/// superseded fails with [`Error::Fenced`](crate::Error::Fenced) and changes
/// nothing.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait DeliveryStore: MaybeSendSync {
    /// Leases up to `request.limit` due events to `grant`.
    ///
    /// # Contract
    ///
    /// - Returns only events that are undelivered, not dead, due
    ///   (`next_attempt_at <= now`), and not under an unexpired lease.
    /// - Per-key order: an event is returned only if every earlier event of
    ///   its key is delivered (or dead, unless `park_dead_keys`), or is
    ///   returned before it in the same batch. So an event whose
    ///   predecessor is leased or waiting for a retry is not returned.
    /// - The result is in commit order.
    /// - Each returned event's lease runs to `now + lease`, belongs to
    ///   `grant.epoch`, and its `attempts` went up by one (the returned
    ///   envelope shows the new count).
    /// - A lease that expires makes the event claimable again: a crashed
    ///   claimer loses nothing.
    /// - A zero `lease` is [`Error::InvalidInput`](crate::Error::InvalidInput).
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>>;

    /// Leases the claimable heads of `keys`: for each key, its first
    /// undelivered event (passing over dead letters unless
    /// `request.park_dead_keys`), when that event is due, not leased and
    /// its key not held by a commit in flight; at most `request.limit`, in
    /// commit order. It does not look at other keys, so older events of
    /// other keys are passed over: a busy forwarder uses it to go on with
    /// the keys it just delivered, and claims in commit order
    /// ([`DeliveryStore::claim`]) often enough that no other key waits
    /// long (`ForwarderConfig::fairness` in `outbox-forwarder`).
    ///
    /// # Contract
    ///
    /// - As [`DeliveryStore::claim`] for what may be returned (undelivered,
    ///   not dead, due, not leased), per-key order, commit order, the lease,
    ///   its epoch and the attempt count.
    /// - A store that overrides the provided method returns only events of
    ///   `keys`, each its key's first undelivered event.
    /// - The provided method is [`DeliveryStore::claim`]: stores where a
    ///   claim in commit order costs no more (one that holds its backlog in
    ///   order, with one forwarder) need nothing else. PostgreSQL, where
    ///   several forwarders' claims walk past each other's leased events,
    ///   overrides it.
    async fn claim_heads_of(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys: &[OrderingKey],
    ) -> Result<Vec<Envelope>> {
        let _ = keys;
        self.claim(grant, request).await
    }

    /// Marks events delivered.
    ///
    /// # Contract
    ///
    /// - Idempotent: acking a delivered or unknown (pruned) id is `Ok`.
    /// - An id currently leased under another epoch, or pending and never
    ///   claimed under `grant`, fails the whole call with
    ///   [`Error::Fenced`](crate::Error::Fenced) and acks none of `ids`.
    /// - A delivered event is never claimed again.
    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()>;

    /// Hands claimed events back unattempted: their leases end now and the
    /// attempt their claim counted is taken back.
    ///
    /// # Contract
    ///
    /// For the forwarder's "not delivered after all" case (an earlier event
    /// of the same key failed): the events are claimable again at once and
    /// their `attempts` are as before the claim. Fenced as
    /// [`DeliveryStore::ack`]; delivered, dead or unknown ids are skipped.
    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()>;

    /// Puts a claimed event back, due at `at`, recording `error`; with
    /// [`Attempt::Uncounted`] the attempt its claim counted is taken back.
    ///
    /// # Contract
    ///
    /// The event is not claimable before `at`; its lease ends now; its
    /// `last_error` is `error`. [`Attempt::Counted`] leaves `attempts` as
    /// the claim made it, [`Attempt::Uncounted`] sets it back to what it
    /// was before the claim. Fenced as [`DeliveryStore::ack`]; a delivered
    /// or unknown id is a no-op.
    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()>;

    /// Makes every event waiting for a retry due now (the network is back:
    /// no need to sit out the backoff). Returns how many were due later.
    ///
    /// # Contract
    ///
    /// Affects exactly the pending events that have a `last_error` (a
    /// failed attempt) and a `next_attempt_at` after now: their
    /// `next_attempt_at` becomes now. Events scheduled for later by
    /// [`NewEvent::not_before`](crate::NewEvent::not_before) that never
    /// failed keep their time; leases are untouched. Fenced as
    /// [`DeliveryStore::ack`] (the grant must be current, for an exclusive
    /// store).
    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64>;

    /// Moves a claimed event to the dead letters, recording `error`.
    ///
    /// # Contract
    ///
    /// A dead event is never claimed, is listed by
    /// [`InspectStore::list_dead`], and stays until requeued, discarded
    /// or (as a skipped dead letter, still listed) pruned never. Fenced as
    /// [`DeliveryStore::ack`]; a delivered or unknown id is a no-op.
    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()>;
}

/// Whether a failed attempt counts toward a
/// [`RetryLimits::max_attempts`](crate::RetryLimits::max_attempts).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Attempt {
    /// The sink was reachable and failed this event: it counts.
    Counted,
    /// The sink (or the network) was down, not this event: it does not
    /// count (attempts made while the circuit breaker is open or the
    /// platform is offline).
    Uncounted,
}

/// Counts over the outbox.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct StoreStats {
    /// Events not yet delivered and not dead (leased ones included).
    pub pending: u64,
    /// Pending events under an unexpired lease.
    pub in_flight: u64,
    /// Dead-lettered events.
    pub dead: u64,
    /// Delivered events not yet pruned.
    pub delivered: u64,
    /// Discarded dead letters not yet pruned.
    pub discarded: u64,
    /// Ordering keys held back by a dead letter that is not skipped: each
    /// such key's later events wait (when the forwarder parks dead keys,
    /// the default) until the dead letter is requeued, discarded or
    /// skipped. Counted whatever the claim's park policy.
    pub parked_keys: u64,
    /// Commit time of the oldest pending event.
    pub oldest_pending_at: Option<Timestamp>,
}

/// Where an event stands, for [`InspectStore::list_by_status`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[non_exhaustive]
pub enum EventStatus {
    /// Committed, not yet delivered (leased ones included).
    Pending,
    /// Dead-lettered (skipped ones included).
    Dead,
    /// Delivered, until pruned.
    Delivered,
    /// A dead letter given up on, until pruned.
    Discarded,
}

impl EventStatus {
    /// Every status, in the order an event can pass through them.
    pub const ALL: [EventStatus; 4] =
        [EventStatus::Pending, EventStatus::Dead, EventStatus::Delivered, EventStatus::Discarded];

    /// The lower-case name: `"pending"`, `"dead"`, `"delivered"`,
    /// `"discarded"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Dead => "dead",
            EventStatus::Delivered => "delivered",
            EventStatus::Discarded => "discarded",
        }
    }
}

impl fmt::Display for EventStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventStatus {
    type Err = crate::error::Error;

    /// Parses [`EventStatus::as_str`]; anything else is `InvalidInput`.
    fn from_str(s: &str) -> Result<Self> {
        EventStatus::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            crate::error::Error::invalid_input(format!(
                "unknown event status {s:?} (pending, dead, delivered or discarded)"
            ))
        })
    }
}

/// What a store records of one event's delivery beyond its envelope, for
/// inspection ([`InspectStore::delivery_info`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct DeliveryInfo {
    /// Until when the event's last claim leases it (the time may have
    /// passed: an expired lease no longer holds the event).
    pub lease_until: Option<Timestamp>,
    /// The epoch of the leadership grant that last claimed it.
    pub claimed_epoch: Option<Epoch>,
    /// A dead event that no longer parks its key
    /// ([`InspectStore::skip_dead`]).
    pub skipped: bool,
}

impl DeliveryInfo {
    /// The record of an event last claimed under `claimed_epoch` until
    /// `lease_until`, `skipped` if a skipped dead letter.
    pub fn new(lease_until: Option<Timestamp>, claimed_epoch: Option<Epoch>, skipped: bool) -> Self {
        DeliveryInfo { lease_until, claimed_epoch, skipped }
    }
}

/// Looking into the outbox and tidying it up.
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait InspectStore: MaybeSendSync {
    /// Counts by status.
    async fn stats(&self) -> Result<StoreStats>;

    /// Up to `limit` pending events, in commit order.
    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>>;

    /// Up to `limit` dead-lettered events, in commit order, with their
    /// `last_error`.
    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>>;

    /// Up to `limit` events with `status`, in commit order.
    ///
    /// # Contract
    ///
    /// Pending and dead events are those [`InspectStore::list_pending`]
    /// and [`InspectStore::list_dead`] list; delivered and discarded ones
    /// are listed until [`InspectStore::prune_delivered`] removes them,
    /// as many as [`StoreStats`] counts. An event is listed under one
    /// status only. Reads only: works on a store opened read-only.
    ///
    /// Provided for pending and dead events; delivered and discarded are
    /// [`Error::Unsupported`](crate::Error::Unsupported) unless the store
    /// implements this (every store of this workspace does, and the
    /// conformance suite checks it), so a wrapper must forward it.
    async fn list_by_status(&self, status: EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        match status {
            EventStatus::Pending => self.list_pending(limit).await,
            EventStatus::Dead => self.list_dead(limit).await,
            EventStatus::Delivered | EventStatus::Discarded => {
                Err(crate::error::Error::Unsupported { operation: "listing delivered and discarded events" })
            }
        }
    }

    /// The lease, claiming epoch and skip flag of the event `id`; `None`
    /// when the store holds no such event. Reads only.
    ///
    /// # Contract
    ///
    /// A pending event never claimed has no lease and no epoch; a claimed
    /// one has the lease and the epoch of its last claim (kept while it is
    /// pending, whether or not the lease has expired); a dead event is
    /// `skipped` once [`InspectStore::skip_dead`] let its key flow, until
    /// requeued.
    ///
    /// Provided as [`Error::Unsupported`](crate::Error::Unsupported): a
    /// store that keeps these overrides it and says so in
    /// [`Capabilities::delivery_info`] (the conformance suite checks one
    /// against the other), and a wrapper must forward it.
    async fn delivery_info(&self, id: EventId) -> Result<Option<DeliveryInfo>> {
        let _ = id;
        Err(crate::error::Error::Unsupported { operation: "delivery_info (per-event lease and epoch)" })
    }

    /// Moves the named dead events (skipped ones included) back to
    /// pending, due now, attempts reset to zero. Returns how many moved;
    /// ids that are not dead are passed over.
    ///
    /// # Contract
    ///
    /// A requeued event keeps its place in its key's commit order: it is
    /// claimed before its key's later pending events.
    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64>;

    /// Gives up on the named dead events: they become `discarded`, are
    /// never claimed or requeued again, no longer park their key, are no
    /// longer listed by [`InspectStore::list_dead`], are counted in
    /// [`StoreStats::discarded`], and are kept (for audit) until
    /// [`InspectStore::prune_delivered`] removes them like delivered
    /// events (by discard time). Returns how many were discarded; ids that
    /// are not dead are passed over.
    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64>;

    /// Lets the keys parked behind the named dead events flow: the events
    /// stay dead (listed by [`InspectStore::list_dead`], counted in
    /// [`StoreStats::dead`], requeueable) but no longer hold back the later
    /// events of their key when a claim parks dead keys. Returns how many
    /// were not skipped before; ids that are not dead are passed over.
    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64>;

    /// Deletes up to `limit` delivered events acked, and discarded events
    /// discarded, before `before`.
    ///
    /// # Contract
    ///
    /// Never deletes a pending or dead event, nor one acked or discarded
    /// at or after `before`. Returns how many were deleted.
    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64>;
}

/// The consumer inbox: which events a consumer has processed. Marks are
/// written by [`StateStore::put_state_and_events`] ([`Commit::inbox`]).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait InboxStore: MaybeSendSync {
    /// Whether `consumer` has a mark for (`origin`, `id`).
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool>;

    /// Deletes up to `limit` inbox marks written before `before`; returns
    /// how many.
    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64>;
}

/// What a store can do, reported at run time.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Capabilities {
    /// The backend's name, e.g. `"sqlite"`.
    pub backend: &'static str,
    /// A commit that returned `Ok` survives a crash of the process.
    pub durable: bool,
    /// Reopening the same location finds everything committed.
    pub survives_reopen: bool,
    /// Several processes can share the store.
    pub multi_process: bool,
    /// How leadership grants work.
    pub leadership: LeadershipMode,
    /// The limits commits are checked against.
    pub limits: Limits,
    /// Whether the platform promised not to evict the data under storage
    /// pressure (a browser's `navigator.storage.persisted()`); `None`
    /// where that does not apply (files, servers) or is unknown.
    pub persistent: Option<bool>,
    /// Whether [`InspectStore::delivery_info`] is implemented (otherwise it
    /// is `Unsupported`).
    pub delivery_info: bool,
}

impl Capabilities {
    /// A single-process, exclusive-leadership store with default limits.
    pub fn new(backend: &'static str, durable: bool) -> Self {
        Capabilities {
            backend,
            durable,
            survives_reopen: durable,
            multi_process: false,
            leadership: LeadershipMode::Exclusive,
            limits: Limits::default(),
            persistent: None,
            delivery_info: false,
        }
    }

    /// Sets [`Capabilities::survives_reopen`].
    pub fn survives_reopen(mut self, yes: bool) -> Self {
        self.survives_reopen = yes;
        self
    }

    /// Sets [`Capabilities::multi_process`].
    pub fn multi_process(mut self, yes: bool) -> Self {
        self.multi_process = yes;
        self
    }

    /// Sets [`Capabilities::leadership`].
    pub fn leadership(mut self, mode: LeadershipMode) -> Self {
        self.leadership = mode;
        self
    }

    /// Sets [`Capabilities::limits`].
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets [`Capabilities::persistent`].
    pub fn persistent(mut self, persistent: Option<bool>) -> Self {
        self.persistent = persistent;
        self
    }

    /// Sets [`Capabilities::delivery_info`].
    pub fn delivery_info(mut self, yes: bool) -> Self {
        self.delivery_info = yes;
        self
    }
}

/// A complete outbox store: what the forwarder, the consumer and the actor
/// runtime take, usually as `Arc<dyn DurableStore>`.
pub trait DurableStore:
    StateStore + DeliveryStore + InspectStore + InboxStore + LeaderStore + fmt::Debug
{
    /// What this store can do.
    fn capabilities(&self) -> Capabilities;
}

/// Conveniences over any [`DurableStore`], provided for all of them (so
/// wrappers need not forward them).
#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
pub trait DurableStoreExt: DurableStore {
    /// Number of pending events.
    async fn pending_count(&self) -> Result<u64> {
        Ok(self.stats().await?.pending)
    }

    /// Age of the oldest pending event at `now`, or `None` when nothing is
    /// pending.
    async fn oldest_pending_age(&self, now: Timestamp) -> Result<Option<Duration>> {
        Ok(self.stats().await?.oldest_pending_at.map(|t| now.duration_since(t)))
    }

    /// The actor's version, [`Version::NONE`] when it has no state.
    async fn current_version(&self, actor: &ActorId) -> Result<Version> {
        Ok(self.load_state(actor).await?.map_or(Version::NONE, |s| s.version))
    }

    /// The event `id` with its status, or `None` when the store holds no
    /// such event (never committed, or pruned). Looks through
    /// [`InspectStore::list_by_status`] status by status, reading every
    /// listed event: for inspection, not for a hot path. A status the
    /// store cannot list (`Unsupported`) is passed over.
    async fn find_event(&self, id: EventId) -> Result<Option<(EventStatus, Envelope)>> {
        for status in EventStatus::ALL {
            match self.list_by_status(status, usize::MAX).await {
                Ok(events) => {
                    if let Some(e) = events.into_iter().find(|e| e.id == id) {
                        return Ok(Some((status, e)));
                    }
                }
                Err(e) if e.kind() == crate::error::ErrorKind::Unsupported => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

impl<T: DurableStore + ?Sized> DurableStoreExt for T {}
