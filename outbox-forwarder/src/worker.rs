//! The forwarder: claims committed events and delivers them.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outbox_core::{
    Attempt, ClaimRequest, DurableStore, Envelope, ErrorKind, EventId, KeyScheduler, LeaderGrant,
    OrderingKey, Result, SplitMix64, Timestamp,
};
use tokio::sync::Notify;
#[cfg(not(target_arch = "wasm32"))]
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::breaker::{BreakerState, CircuitBreaker, Permit};
use crate::config::{DeadLetterPolicy, ForwarderConfig};
#[cfg(feature = "metrics")]
use crate::metrics as m;
use crate::mono;
use crate::obs;
use outbox_core::{Outcome, Sink};

#[derive(Debug, Default)]
struct WakeInner {
    notify: Notify,
    online: AtomicBool,
    offline: AtomicBool,
}

/// Wakes a forwarder: after a commit ([`Wake::wake`]) or when the sink is
/// reachable again ([`Wake::notify_online`]). Cheap to clone; a wake-up
/// sent while the forwarder is busy is kept for its next wait.
#[derive(Clone, Debug, Default)]
pub struct Wake {
    inner: Arc<WakeInner>,
}

impl Wake {
    /// Something was committed: look now instead of at the next tick.
    pub fn wake(&self) {
        self.inner.notify.notify_one();
    }

    /// The sink (or the network) is back: every event waiting out a
    /// backoff is due at once, the circuit breaker goes to a probe, and the
    /// forwarder looks now.
    pub fn notify_online(&self) {
        self.inner.offline.store(false, Ordering::SeqCst);
        self.inner.online.store(true, Ordering::SeqCst);
        self.inner.notify.notify_one();
    }

    /// The platform says it is offline (a browser's `offline` event): until
    /// [`Wake::notify_online`], failed attempts do not count toward an
    /// opt-in [`RetryLimits::max_attempts`](outbox_core::RetryLimits).
    pub fn notify_offline(&self) {
        self.inner.offline.store(true, Ordering::SeqCst);
    }

    /// Whether the platform last said it was offline.
    pub fn is_offline(&self) -> bool {
        self.inner.offline.load(Ordering::SeqCst)
    }
}

/// A batch claimed while the previous one was delivered, with the grant
/// that claimed it.
struct Prefetched {
    grant: LeaderGrant,
    batch: Vec<Envelope>,
}

/// What one [`Forwarder::run_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CycleReport {
    /// Whether this forwarder held leadership for the cycle.
    pub leader: bool,
    /// Its grant was found superseded during the cycle; it stepped down.
    pub fenced: bool,
    /// The claim limit used (0 when nothing was claimed for lack of
    /// leadership or an open circuit).
    pub limit: usize,
    /// Events claimed.
    pub claimed: usize,
    /// Events delivered and acked.
    pub delivered: usize,
    /// Events put back for a later retry.
    pub retried: usize,
    /// Events dead-lettered.
    pub dead_lettered: usize,
    /// Events handed back unattempted (behind a failed event of their key,
    /// or abandoned when the circuit opened).
    pub released: usize,
    /// The breaker after the cycle.
    pub circuit: BreakerState,
}

impl Default for CycleReport {
    fn default() -> Self {
        CycleReport {
            leader: false,
            fenced: false,
            limit: 0,
            claimed: 0,
            delivered: 0,
            retried: 0,
            dead_lettered: 0,
            released: 0,
            circuit: BreakerState::Closed,
        }
    }
}

/// Delivers committed events from a store to a sink: at least once, in
/// commit order per key, different keys concurrently.
///
/// Drive it with `Forwarder::spawn` (native) or [`Forwarder::run`], or step it
/// with [`Forwarder::run_once`] in tests.
///
/// `S` is the store type: `dyn DurableStore` (the default) for a store
/// chosen at run time, or a concrete store, which lets the compiler drop
/// the store methods the forwarder never calls (it matters in a browser
/// bundle).
pub struct Forwarder<S: DurableStore + ?Sized = dyn DurableStore> {
    store: Arc<S>,
    sink: Arc<dyn Sink>,
    cfg: ForwarderConfig,
    wake: Wake,
    rng: SplitMix64,
    breaker: CircuitBreaker,
    grant: Option<LeaderGrant>,
    /// `notify_online` was called: backed-off events are to be made due
    /// (done once leadership is held).
    expedite: bool,
    /// The next claim's limit while ramping up after an idle cycle
    /// ([`ForwarderConfig::first_batch`]).
    ramp: Option<usize>,
    next_due: Option<Timestamp>,
    /// The keys of the events the last batch delivered, each once: the
    /// next claim may go on with them
    /// ([`ForwarderConfig::fairness`]).
    delivered_keys: Vec<OrderingKey>,
    /// When the last claim in commit order over all keys was made.
    last_fair_claim: Option<mono::Instant>,
    /// When going on with the delivered keys last gave less than half a
    /// batch: it is not tried again for `fairness`.
    go_on_paused_at: Option<mono::Instant>,
    last_prune: Option<Timestamp>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    last_stats: Option<Timestamp>,
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    stats_cost: Duration,
    /// When housekeeping first ran (the gauges' first read waits
    /// `stats_every` from it while the forwarder is busy).
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    first_housekeeping: Option<Timestamp>,
}

impl<S: DurableStore + ?Sized> fmt::Debug for Forwarder<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("store", &self.store)
            .field("sink", &self.sink)
            .field("grant", &self.grant)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// A running forwarder task (native; in a browser, run
/// [`Forwarder::run`] with `wasm_bindgen_futures::spawn_local`).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Debug)]
pub struct ForwarderHandle {
    wake: Wake,
    cancel: CancellationToken,
    join: JoinHandle<()>,
}

#[cfg(not(target_arch = "wasm32"))]
impl ForwarderHandle {
    /// The forwarder's wake-up handle.
    pub fn waker(&self) -> &Wake {
        &self.wake
    }

    /// Stops it: the batch in flight finishes (or, if the process dies
    /// first, its lease lapses), leadership is released.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.join.await;
    }
}

impl<S: DurableStore + ?Sized + 'static> Forwarder<S> {
    /// A forwarder from `store` to `sink`. Describes the
    /// [metrics](crate::metrics) and registers its counters at 0 (labelled
    /// with the sink's [`Sink::name`]).
    pub fn new(store: Arc<S>, sink: Arc<dyn Sink>, cfg: ForwarderConfig) -> Self {
        obs::start(sink.name());
        Forwarder {
            store,
            sink,
            rng: SplitMix64::new(cfg.seed),
            breaker: CircuitBreaker::new(cfg.breaker),
            cfg,
            wake: Wake::default(),
            grant: None,
            expedite: false,
            ramp: None,
            next_due: None,
            delivered_keys: Vec::new(),
            last_fair_claim: None,
            go_on_paused_at: None,
            last_prune: None,
            last_stats: None,
            stats_cost: Duration::ZERO,
            first_housekeeping: None,
        }
    }

    /// The handle that wakes this forwarder.
    pub fn waker(&self) -> Wake {
        self.wake.clone()
    }

    /// The circuit breaker's state.
    pub fn circuit(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The leadership grant held, if any.
    pub fn grant(&self) -> Option<&LeaderGrant> {
        self.grant.as_ref()
    }

    /// Runs on the current Tokio runtime until [`ForwarderHandle::shutdown`].
    #[cfg(not(target_arch = "wasm32"))]
    pub fn spawn(self) -> ForwarderHandle {
        let cancel = CancellationToken::new();
        let wake = self.wake.clone();
        let join = tokio::spawn(self.run(cancel.clone()));
        ForwarderHandle { wake, cancel, join }
    }

    /// Runs until `cancel`: a cycle at start, then one after every wake-up,
    /// tick, due retry or probe time. An idle forwarder's tick backs off
    /// from `flush_interval` to `max_idle_interval`; a cycle that claimed
    /// anything is followed at once by the next.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut idle = self.cfg.flush_interval;
        let mut prefetched: Option<Prefetched> = None;
        let prefetch = self.cfg.prefetch.unwrap_or_else(|| {
            self.store.capabilities().leadership == outbox_core::LeadershipMode::Exclusive
        });
        loop {
            if cancel.is_cancelled() {
                break;
            }
            let wait = match self.cycle(prefetched.take(), prefetch).await {
                // Found work: look again at once (other keys may be free,
                // or more was committed); wait only when a claim finds
                // nothing.
                Ok((r, next)) if r.claimed > 0 || next.is_some() => {
                    prefetched = next;
                    idle = self.cfg.flush_interval;
                    Duration::ZERO
                }
                Ok(_) => {
                    let w = idle;
                    idle = (idle * 2).min(self.cfg.max_idle_interval);
                    w
                }
                Err(e) => {
                    tracing::warn!(target: "outbox", error = %e, "forwarder cycle failed");
                    let w = idle;
                    idle = (idle * 2).min(self.cfg.max_idle_interval);
                    w
                }
            };
            let wait = match self.next_due {
                Some(at) => wait.min(at.duration_since(self.cfg.clock.now())),
                None => wait,
            };
            if wait.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.wake.inner.notify.notified() => idle = self.cfg.flush_interval,
                _ = mono::sleep(wait) => {}
            }
        }
        if let Some(p) = prefetched.take() {
            self.give_back(p).await;
        }
        // A run too short to read the gauges reads them once on the way out.
        #[cfg(feature = "metrics")]
        if self.last_stats.is_none() && self.grant.is_some() {
            let now = self.cfg.clock.now();
            if let Err(e) = self.gauges(now, false).await {
                tracing::debug!(target: "outbox", error = %e, "reading the gauges failed");
            }
        }
        self.step_down().await;
    }

    /// Hands a prefetched batch back unattempted (best effort: if it
    /// fails, the leases lapse).
    async fn give_back(&self, p: Prefetched) {
        let ids: Vec<EventId> = p.batch.iter().map(|e| e.id).collect();
        if let Err(e) = self.store.release(&p.grant, &ids).await {
            tracing::debug!(target: "outbox", error = %e, "releasing a prefetched batch failed; its leases will lapse");
        }
    }

    /// Releases leadership, if held.
    pub async fn step_down(&mut self) {
        if let Some(g) = self.grant.take()
            && let Err(e) = self.store.release_leadership(&g).await
        {
            tracing::warn!(target: "outbox", error = %e, "releasing leadership failed; it will expire");
        }
    }

    /// One cycle: make sure of leadership, claim a batch (one probe event
    /// when the circuit is half-open, none when open), deliver it, settle
    /// every event, then the leader's housekeeping (gauges, pruning).
    pub async fn run_once(&mut self) -> Result<CycleReport> {
        Ok(self.cycle(None, false).await?.0)
    }

    /// [`Forwarder::cycle_inner`] in an `outbox.cycle` span that records
    /// what the cycle did.
    async fn cycle(
        &mut self,
        prefetched: Option<Prefetched>,
        prefetch: bool,
    ) -> Result<(CycleReport, Option<Prefetched>)> {
        let span = obs::cycle_span(self.sink.name());
        let result = self.cycle_inner(prefetched, prefetch).instrument(span.clone()).await;
        if let Ok((r, _)) = &result
            && !span.is_disabled()
        {
            span.record("leader", r.leader);
            span.record("claimed", r.claimed);
            span.record("delivered", r.delivered);
            span.record("retried", r.retried);
            span.record("dead_lettered", r.dead_lettered);
            span.record("released", r.released);
        }
        result
    }

    /// [`Forwarder::run_once`], starting from a batch claimed during the
    /// previous cycle, and (with `prefetch`) claiming the next batch while
    /// this one is delivered. A prefetched batch that cannot be used (the
    /// grant changed, the circuit is not closed, delivery failed) is
    /// handed back.
    async fn cycle_inner(
        &mut self,
        prefetched: Option<Prefetched>,
        prefetch: bool,
    ) -> Result<(CycleReport, Option<Prefetched>)> {
        let started = mono::Instant::now();
        let now = self.cfg.clock.now();
        let mut report = CycleReport::default();
        if self.wake.inner.online.swap(false, Ordering::SeqCst) {
            self.breaker.online();
            self.expedite = true;
        }
        if self.next_due.is_some_and(|t| t <= now) {
            self.next_due = None;
        }
        let leader = match self.ensure_leader(now).await {
            Ok(l) => l,
            Err(e) => {
                if let Some(p) = prefetched {
                    self.give_back(p).await;
                }
                return Err(e);
            }
        };
        if leader
            && self.expedite
            && let Some(g) = &self.grant
        {
            match self.store.retry_now(g).await {
                Ok(n) => {
                    self.expedite = false;
                    if n > 0 {
                        tracing::info!(target: "outbox", events = n, "back online: backed-off events are due now");
                    }
                }
                Err(e) => {
                    tracing::debug!(target: "outbox", error = %e, "making backed-off events due failed; will try again")
                }
            }
        }
        // A prefetched batch is used only under the grant that claimed it
        // and while the circuit is closed.
        let permit = if leader { Some(self.breaker.permit(now)) } else { None };
        let usable = match (prefetched, &self.grant, &permit) {
            (Some(p), Some(g), Some(Permit::All)) if g.epoch == p.grant.epoch => Some(p.batch),
            (Some(p), _, _) => {
                self.give_back(p).await;
                None
            }
            (None, _, _) => None,
        };
        let Some(permit) = permit else {
            report.circuit = self.breaker.state();
            return Ok((report, None));
        };
        report.leader = true;
        let limit = match permit {
            Permit::All => match (self.cfg.first_batch, self.ramp) {
                (Some(first), None) => first.clamp(1, self.cfg.batch_size.max(1)),
                (Some(_), Some(r)) => r,
                (None, _) => self.cfg.batch_size,
            },
            Permit::Probe => 1,
            Permit::Wait(until) => {
                self.next_due = Some(self.next_due.map_or(until, |t| t.min(until)));
                report.circuit = self.breaker.state();
                self.housekeeping(now, false).await?;
                return Ok((report, None));
            }
        };
        report.limit = limit;
        let request = ClaimRequest::new(limit, self.cfg.lease)
            .park_dead_keys(self.cfg.dead_letters == DeadLetterPolicy::Park)
            .exclusive(self.cfg.exclusive);
        let Some(grant) = self.grant.clone() else { return Ok((report, None)) };
        let keys = std::mem::take(&mut self.delivered_keys);
        let batch = match usable {
            Some(b) => b,
            None => {
                // Go on with the keys the last batch delivered while they
                // fill at least half a batch and a claim in commit order
                // was made within `fairness`; otherwise claim in commit
                // order. Going on that finds less than half of its keys
                // claimable pauses for `fairness`.
                let half = limit.div_ceil(2);
                let go_on = permit == Permit::All
                    && !prefetch
                    && keys.len() >= half
                    && self.cfg.fairness.is_some_and(|f| {
                        self.last_fair_claim.is_some_and(|t| t.elapsed() < f)
                            && self.go_on_paused_at.is_none_or(|t| t.elapsed() >= f)
                    });
                let claimed = if go_on {
                    self.go_on(&grant, request, &keys).await
                } else {
                    self.last_fair_claim = Some(mono::Instant::now());
                    self.store.claim(&grant, request).await
                };
                match claimed {
                    Ok(b) => b,
                    Err(e) if e.kind() == ErrorKind::Fenced => return Ok((self.fenced(report), None)),
                    Err(e) => return Err(e),
                }
            }
        };
        report.claimed = batch.len();
        if permit == Permit::All && self.cfg.first_batch.is_some() {
            // Ramp up while batches come back full; start small again
            // once the backlog is drained.
            self.ramp = (batch.len() >= limit).then(|| (limit * 2).min(self.cfg.batch_size.max(1)));
        }
        let mut next = None;
        if !batch.is_empty() {
            let delivered = if prefetch && permit == Permit::All {
                // The next claim runs beside this delivery; it skips the
                // keys this batch holds (their heads are leased).
                let store = self.store.clone();
                let g = grant.clone();
                let claim_next = async move { store.claim(&g, request).await };
                let (delivered, claimed) = tokio::join!(self.deliver(&grant, batch, &mut report), claim_next);
                match claimed {
                    Ok(b) if !b.is_empty() => next = Some(Prefetched { grant: grant.clone(), batch: b }),
                    Ok(_) => {}
                    Err(e) => tracing::debug!(target: "outbox", error = %e, "prefetching claim failed"),
                }
                delivered
            } else {
                self.deliver(&grant, batch, &mut report).await
            };
            if (delivered.is_err() || self.breaker.is_open())
                && let Some(p) = next.take()
            {
                self.give_back(p).await;
            }
            match delivered {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Fenced => return Ok((self.fenced(report), None)),
                Err(e) => return Err(e),
            }
            obs::flush(self.sink.name(), started.elapsed().as_secs_f64());
        }
        report.circuit = self.breaker.state();
        if let Err(e) = self.housekeeping(now, report.claimed > 0).await {
            if let Some(p) = next.take() {
                self.give_back(p).await;
            }
            return Err(e);
        }
        Ok((report, next))
    }

    /// The claim of a busy forwarder going on with `keys`, the keys its
    /// last batch delivered ([`ForwarderConfig::fairness`]).
    async fn go_on(
        &mut self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys: &[OrderingKey],
    ) -> Result<Vec<Envelope>> {
        let mut batch = self.store.claim_heads_of(grant, request, keys).await?;
        if batch.len() < keys.len().div_ceil(2) {
            // Most of the keys had nothing to claim (no events left, or
            // others took them).
            self.go_on_paused_at = Some(mono::Instant::now());
        }
        if batch.len() < request.limit.div_ceil(2) {
            // Less than half a batch: the rest in commit order (other keys:
            // the keys taken above have their heads leased).
            self.last_fair_claim = Some(mono::Instant::now());
            let rest = ClaimRequest { limit: request.limit - batch.len(), ..request };
            match self.store.claim(grant, rest).await {
                Ok(more) => batch.extend(more),
                // Fenced: what `batch` leased cannot be settled under this
                // grant any more; its leases lapse and it is claimed again,
                // as on every fenced path.
                Err(e) if e.kind() == ErrorKind::Fenced => return Err(e),
                // What was claimed is delivered; the next cycle tries again.
                Err(e) => tracing::debug!(target: "outbox", error = %e, "claim failed"),
            }
        }
        Ok(batch)
    }

    fn fenced(&mut self, mut report: CycleReport) -> CycleReport {
        tracing::warn!(target: "outbox", "forwarder lost leadership (fenced); stepping down");
        self.grant = None;
        report.leader = false;
        report.fenced = true;
        report.circuit = self.breaker.state();
        report
    }

    async fn ensure_leader(&mut self, now: Timestamp) -> Result<bool> {
        let ttl = self.cfg.leader_ttl;
        if let Some(g) = &self.grant {
            if g.expires_at.duration_since(now) > ttl / 2 {
                return Ok(true);
            }
            match self.store.renew_leadership(g, ttl).await {
                Ok(renewed) => {
                    self.grant = Some(renewed);
                    return Ok(true);
                }
                Err(e) if e.kind() == ErrorKind::Fenced => self.grant = None,
                Err(e) => return Err(e),
            }
        }
        self.grant = self.store.acquire_leadership(&self.cfg.holder, ttl).await?;
        Ok(self.grant.is_some())
    }

    /// Delivers `batch` in rounds, then writes the acks of what the sink
    /// took, also when settling a failure failed part-way (a store
    /// error writing a retry or a dead letter): the events delivered
    /// before it are not left to be redelivered when their leases lapse.
    async fn deliver(
        &mut self,
        grant: &LeaderGrant,
        batch: Vec<Envelope>,
        report: &mut CycleReport,
    ) -> Result<()> {
        // Acks are written once per batch, not per round: an event stays
        // leased to us until then, and a crash before the write only means
        // a redelivery (which the idempotency key absorbs).
        let mut acks: Vec<EventId> = Vec::new();
        let mut acked_types = obs::TypeCounts::default();
        let mut keys: Vec<OrderingKey> = Vec::new();
        let rounds = self.rounds(grant, batch, &mut acks, &mut keys, &mut acked_types, report).await;
        if !acks.is_empty() {
            match self.store.ack(grant, &acks).await {
                Ok(()) => {
                    // Each key once (a batch may hold a run of one key).
                    keys.sort_unstable();
                    keys.dedup();
                    self.delivered_keys = keys;
                    report.delivered += acks.len();
                    obs::delivered(self.sink.name(), &acked_types);
                }
                // The rounds' own error, if any, is the one to report.
                Err(e) => return rounds.and(Err(e)),
            }
        }
        rounds
    }

    /// The rounds of [`Forwarder::deliver`]: what the sink took goes to
    /// `acks` (and its type to `acked_types`); failures are settled as they
    /// come. Each event's publish has an `outbox.publish` span; when a
    /// round holds one event, the sink runs inside it.
    async fn rounds(
        &mut self,
        grant: &LeaderGrant,
        batch: Vec<Envelope>,
        acks: &mut Vec<EventId>,
        keys: &mut Vec<OrderingKey>,
        acked_types: &mut obs::TypeCounts,
        report: &mut CycleReport,
    ) -> Result<()> {
        let mut sched: KeyScheduler<OrderingKey, Envelope> = KeyScheduler::new(self.cfg.max_concurrency);
        // Fast path: a batch of distinct keys that fits the concurrency
        // bound is one round; the scheduler only sees what a failure hands
        // back to it (nothing, as every key has one event).
        let mut first_round = None;
        let distinct = batch.len() <= self.cfg.max_concurrency && {
            let mut keys = HashSet::with_capacity(batch.len());
            batch.iter().all(|e| keys.insert(&e.key))
        };
        if distinct {
            first_round = Some(batch);
        } else {
            for e in batch {
                // A fresh scheduler has no parked keys: every push succeeds.
                let _ = sched.push(e.key.clone(), e);
            }
        }
        loop {
            let round = match first_round.take() {
                Some(round) => round,
                None => {
                    let mut round = Vec::new();
                    while let Some((_, e)) = sched.take_next() {
                        round.push(e);
                    }
                    round
                }
            };
            if round.is_empty() {
                break;
            }
            let spans: Vec<tracing::Span> = if tracing::level_enabled!(tracing::Level::DEBUG) {
                round.iter().map(|e| obs::publish_span(self.sink.name(), e)).collect()
            } else {
                Vec::new()
            };
            let t0 = mono::Instant::now();
            let publish = self.sink.publish(&round);
            let mut outcomes = match spans.as_slice() {
                [one] => publish.instrument(one.clone()).await,
                _ => publish.await,
            };
            let slow = t0.elapsed() > self.cfg.breaker.slow_call;
            outcomes.truncate(round.len());
            while outcomes.len() < round.len() {
                outcomes.push(Outcome::Retriable("the sink returned no outcome for this event".into()));
            }
            let now = self.cfg.clock.now();
            let mut release: Vec<Envelope> = Vec::new();
            for (i, (e, outcome)) in round.iter().zip(outcomes).enumerate() {
                if let Some(span) = spans.get(i) {
                    span.record("outcome", outcome_name(&outcome));
                }
                match outcome {
                    Outcome::Ok => {
                        acks.push(e.id);
                        keys.push(e.key.clone());
                        acked_types.add(&e.event_type);
                        sched.complete(&e.key);
                        if !slow {
                            self.breaker.on_success();
                        }
                    }
                    Outcome::Retriable(msg) => {
                        self.failed(grant, e, None, &msg, now, &mut sched, &mut release, report).await?
                    }
                    Outcome::RetryAfter(d, msg) => {
                        self.failed(grant, e, Some(d), &msg, now, &mut sched, &mut release, report).await?
                    }
                    Outcome::NonRetriable(msg) => {
                        self.dead(grant, e, &msg, &mut sched, &mut release, report).await?;
                    }
                }
            }
            if slow {
                self.breaker.on_failure(now);
            }
            let open = self.breaker.is_open();
            if open {
                release.extend(sched.drain_queued());
            }
            if !release.is_empty() {
                let ids: Vec<EventId> = release.iter().map(|e| e.id).collect();
                self.store.release(grant, &ids).await?;
                report.released += ids.len();
            }
            if open {
                break;
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn failed(
        &mut self,
        grant: &LeaderGrant,
        e: &Envelope,
        after: Option<Duration>,
        msg: &str,
        now: Timestamp,
        sched: &mut KeyScheduler<OrderingKey, Envelope>,
        release: &mut Vec<Envelope>,
        report: &mut CycleReport,
    ) -> Result<()> {
        obs::failed(self.sink.name(), &e.event_type);
        self.breaker.on_failure(now);
        // While the circuit is open, or the platform says it is offline,
        // the sink is down, not this event: the attempt does not count.
        let down = self.breaker.is_open() || self.wake.is_offline();
        let (attempt, attempts) = if down {
            (Attempt::Uncounted, e.attempts.saturating_sub(1))
        } else {
            (Attempt::Counted, e.attempts)
        };
        if let Some(why) = self.cfg.retry.gives_up(&e.event_type, attempts, now.duration_since(e.created_at))
        {
            let msg = format!("{why}: {msg}");
            return self.dead(grant, e, &msg, sched, release, report).await;
        }
        // The breaker paces the probes while the circuit is open, and the
        // event is due again as soon as it closes (a RetryAfter is still
        // honoured).
        let delay = match after {
            Some(d) => d,
            None if self.breaker.is_open() => Duration::ZERO,
            None => self.cfg.retry.backoff.delay(attempts, self.rng.next_unit()),
        };
        let at = now.saturating_add(delay);
        self.store.retry_later(grant, e.id, at, msg, attempt).await?;
        report.retried += 1;
        self.next_due = Some(self.next_due.map_or(at, |t| t.min(at)));
        // The key's later events in this batch wait for this one.
        release.extend(sched.park(&e.key));
        Ok(())
    }

    async fn dead(
        &mut self,
        grant: &LeaderGrant,
        e: &Envelope,
        msg: &str,
        sched: &mut KeyScheduler<OrderingKey, Envelope>,
        release: &mut Vec<Envelope>,
        report: &mut CycleReport,
    ) -> Result<()> {
        let parks = self.cfg.dead_letters == DeadLetterPolicy::Park;
        tracing::warn!(target: "outbox", event = %e.id, event_type = %e.event_type, key = %e.key, error = msg,
            parks_key = parks,
            "event dead-lettered{}",
            if parks { "; its key is parked until it is requeued, discarded or skipped" } else { "" });
        self.store.dead_letter(grant, e.id, msg).await?;
        report.dead_lettered += 1;
        if let Some(cb) = &self.cfg.on_error {
            cb(Some(e), &outbox_core::Error::DeadLettered { id: e.id, reason: msg.to_owned() });
        }
        obs::dead_lettered(self.sink.name(), &e.event_type);
        match self.cfg.dead_letters {
            DeadLetterPolicy::Park => release.extend(sched.park(&e.key)),
            DeadLetterPolicy::Skip => sched.complete(&e.key),
        }
        Ok(())
    }

    /// Gauges (at most every `stats_every`) and pruning (every
    /// `prune_every`), by the leader only, after a cycle that delivered
    /// (`busy`) or not.
    async fn housekeeping(&mut self, now: Timestamp, busy: bool) -> Result<()> {
        #[cfg(feature = "metrics")]
        self.gauges(now, busy).await?;
        #[cfg(not(feature = "metrics"))]
        let _ = busy;
        if let Some(retention) = self.cfg.retention
            && self.last_prune.is_none_or(|t| now.duration_since(t) >= self.cfg.prune_every)
        {
            self.last_prune = Some(now);
            let pruned =
                self.store.prune_delivered(now.saturating_sub(retention), self.cfg.prune_batch).await?;
            if pruned > 0 {
                tracing::debug!(target: "outbox", pruned, "pruned delivered events");
            }
        }
        Ok(())
    }

    /// The gauges. Counting a big backlog is not free: reads are spaced by
    /// at least 50 times what the last one cost, so they take at most ~2%
    /// of the forwarder's time. The first read is at the first idle
    /// cycle, or `stats_every` after the first cycle, or when the forwarder
    /// stops: forwarders starting together on a backlog do not all count
    /// it before delivering it.
    #[cfg(feature = "metrics")]
    async fn gauges(&mut self, now: Timestamp, busy: bool) -> Result<()> {
        obs::circuit(self.sink.name(), self.breaker.is_open());
        obs::gauge(m::DURABLE, if self.store.capabilities().durable { 1.0 } else { 0.0 });
        let every = self.cfg.stats_every.max(self.stats_cost * 50);
        let started = *self.first_housekeeping.get_or_insert(now);
        let due = match self.last_stats {
            Some(t) => now.duration_since(t) >= every,
            None => !busy || now.duration_since(started) >= self.cfg.stats_every,
        };
        if due {
            self.last_stats = Some(now);
            let t0 = mono::Instant::now();
            let s = self.store.stats().await?;
            self.stats_cost = t0.elapsed();
            obs::gauge(m::PENDING, s.pending as f64);
            let lag = s.oldest_pending_at.map_or(0.0, |t| now.duration_since(t).as_secs_f64());
            obs::gauge(m::LAG_SECONDS, lag);
            let blocked = if self.cfg.dead_letters == DeadLetterPolicy::Park { s.parked_keys } else { 0 };
            obs::gauge(m::BLOCKED_KEYS, blocked as f64);
        }
        Ok(())
    }
}

/// The `outcome` field of a publish span.
fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Retriable(_) => "retriable",
        Outcome::NonRetriable(_) => "non_retriable",
        Outcome::RetryAfter(..) => "retry_after",
    }
}
