//! The quota fallback: a durable store that, while it reports
//! `QuotaExceeded`, holds new commits in memory, and moves them back to
//! the durable store, in order, as soon as it takes writes again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryInfo,
    DeliveryStore, DurableStore, Envelope, Error, ErrorKind, EventId, EventStatus, InboxStore, InspectStore,
    LeaderGrant, LeaderStore, Limits, Result, SharedClock, StateSnapshot, StateStore, StoreStats, Timestamp,
    async_trait,
};
use outbox_store_memory::MemoryStore;

/// How often a fallen-back store tries to move what memory holds back to
/// the durable store (it also tries before every commit).
pub(crate) const RECOMMIT_INTERVAL: Duration = Duration::from_secs(2);

#[cfg(not(target_arch = "wasm32"))]
type Report = Box<dyn Fn(&Error) + Send + Sync>;
#[cfg(target_arch = "wasm32")]
type Report = Box<dyn Fn(&Error)>;

/// Where an event of a memory-held commit stands in the memory store.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MemStatus {
    /// Not delivered (claimed or not): moved back with its commit.
    Pending,
    /// Dead-lettered in memory: moved back as pending (the store contract
    /// cannot write a dead letter), so it is tried again.
    Dead,
    /// Delivered, or discarded by an operator: not moved back.
    Settled,
}

/// A commit only memory holds, as it was made.
#[derive(Debug)]
struct HeldCommit {
    commit: Commit,
    /// Whether a failure to move it that retrying cannot fix was reported.
    reported: bool,
}

/// The commits only memory holds, oldest first.
#[derive(Debug, Default)]
struct Queue {
    commits: VecDeque<HeldCommit>,
}

/// What the memory side's events are doing, kept up to date by every
/// memory operation (read without awaiting, under one lock).
#[derive(Debug, Default)]
struct Track {
    /// Ids claimed from memory and not yet settled, with their lease's end.
    claimed: HashMap<EventId, Timestamp>,
    /// The status of each event of a held commit.
    status: HashMap<EventId, MemStatus>,
    /// Events moved back to the durable store whose memory copy is still
    /// pending: delivered from the durable store only, never from memory.
    moved: HashSet<EventId>,
    /// Ids claimed from a memory store that has since been replaced (their
    /// lease had lapsed and they were moved back): settling them does
    /// nothing, their durable copy is delivered.
    retired: HashSet<EventId>,
}

/// A durable store with an in-memory overflow.
///
/// While the durable store has room, everything goes to it. When a commit
/// fails with `QuotaExceeded`, the store falls back: that commit and every
/// new one go to memory (an actor's state is copied over first so its
/// versions carry on), their receipts say `durable: false`, the store
/// reports itself not durable, and the report hook is called (once per
/// fallback). What the durable store already holds stays there and is
/// delivered first; memory's events are delivered once the durable backlog
/// is empty, so per-key order holds.
///
/// Before every commit, and every [`RECOMMIT_INTERVAL`], the memory-held
/// commits are moved back, oldest first, each as one commit to the durable
/// store (its state, its inbox marks, and the events memory has not
/// delivered yet, with their ids); the first that does not fit stops the
/// move. A commit whose events are being delivered from memory at that
/// moment waits (so nothing is delivered from both stores); the memory
/// copies of moved events are never delivered. When memory holds no commit
/// any more, it is emptied and the store is durable again.
///
/// A crash loses exactly the commits not yet moved back: the durable store
/// holds every commit whose receipt said `durable: true` and every one
/// moved back, and an event is in it at most once.
///
/// `P` is the durable store: any (`dyn DurableStore`), or a concrete one
/// called directly (a page whose worker forwards links only the methods
/// the page calls).
pub(crate) struct FallbackStore<P: ?Sized = dyn DurableStore> {
    /// Whether a full store falls back at all ([`OnQuota::Fail`](crate::OnQuota::Fail):
    /// the `QuotaExceeded` error goes to the committer).
    enabled: bool,
    primary: Arc<P>,
    clock: SharedClock,
    limits: Limits,
    /// The memory side; replaced by an empty one when everything in it has
    /// been moved back.
    memory: Mutex<Arc<MemoryStore>>,
    fallen: AtomicBool,
    /// Whether the store is durable (not fallen back), for watchers.
    durable: tokio::sync::watch::Sender<bool>,
    report: Report,
    /// Grant on the current memory store, for events claimed from it.
    mem_grant: Mutex<Option<LeaderGrant>>,
    track: Mutex<Track>,
    /// What must not interleave while fallen back: commits to memory,
    /// moves back, claims from memory, operators' changes to memory's dead
    /// letters.
    order: tokio::sync::Mutex<Queue>,
}

impl<P: DurableStore + ?Sized> std::fmt::Debug for FallbackStore<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackStore")
            .field("primary", &self.primary)
            .field("fallen", &self.fallen.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<P: DurableStore + ?Sized> FallbackStore<P> {
    /// Wraps `primary`; `report` hears of each fallback, and of a held
    /// commit that cannot be moved back as it was.
    pub(crate) fn new(primary: Arc<P>, clock: SharedClock, report: Report) -> Self {
        // Memory checks commits against the durable store's limits, so
        // what it takes can be moved back.
        let limits = primary.capabilities().limits;
        FallbackStore {
            enabled: true,
            primary,
            memory: Mutex::new(Arc::new(MemoryStore::unannounced(clock.clone()).with_limits(limits))),
            clock,
            limits,
            fallen: AtomicBool::new(false),
            durable: tokio::sync::watch::Sender::new(true),
            report,
            mem_grant: Mutex::new(None),
            track: Mutex::new(Track::default()),
            order: tokio::sync::Mutex::new(Queue::default()),
        }
    }

    /// `primary` as it is: a full store's `QuotaExceeded` goes to the
    /// committer ([`OnQuota::Fail`](crate::OnQuota::Fail)).
    #[cfg_attr(not(all(target_arch = "wasm32", store_idb)), allow(dead_code))]
    pub(crate) fn passthrough(primary: Arc<P>, clock: SharedClock) -> Self {
        FallbackStore { enabled: false, ..Self::new(primary, clock, Box::new(|_| {})) }
    }

    pub(crate) fn is_fallen(&self) -> bool {
        self.fallen.load(Ordering::SeqCst)
    }

    /// A receiver that sees the store fall back and become durable again.
    pub(crate) fn watch_durable(&self) -> tokio::sync::watch::Receiver<bool> {
        self.durable.subscribe()
    }

    fn memory(&self) -> Arc<MemoryStore> {
        lock(&self.memory).clone()
    }

    /// Falls back to memory (reported once per fallback).
    fn fall(&self, e: &Error) {
        if !self.fallen.swap(true, Ordering::SeqCst) {
            tracing::warn!(target: "outbox", error = %e,
                "outbox: durable store is full; new commits go to memory and are moved back once it takes writes again (outbox.durable = 0)");
            metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(0.0);
            self.durable.send_replace(false);
            (self.report)(e);
        }
    }

    /// Moves what memory holds back now, if fallen back; returns whether
    /// the store is durable (again).
    pub(crate) async fn try_recommit(&self) -> bool {
        if !self.is_fallen() {
            return true;
        }
        let mut queue = self.order.lock().await;
        !self.is_fallen() || self.recommit(&mut queue).await
    }

    async fn commit_in_memory(&self, queue: &mut Queue, commit: Commit) -> Result<CommitReceipt> {
        let memory = self.memory();
        if let Some(s) = &commit.state
            && memory.load_state(&s.actor).await?.is_none()
            && let Some(snap) = self.primary.load_state(&s.actor).await?
        {
            memory.seed_state(s.actor.clone(), snap);
        }
        for m in &commit.inbox {
            if self.primary.is_processed(&m.consumer, &m.origin, m.event_id).await? {
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
        }
        let held = commit.clone();
        let receipt = memory.put_state_and_events(commit).await?;
        {
            let mut t = lock(&self.track);
            for e in &held.events {
                t.status.insert(e.id, MemStatus::Pending);
            }
        }
        queue.commits.push_back(HeldCommit { commit: held, reported: false });
        Ok(CommitReceipt { durable: false, ..receipt })
    }

    /// Moves the held commits back, oldest first, each in a durable commit
    /// of its own, until none is left (then the store is durable again:
    /// returns true) or one cannot be moved yet (returns false).
    async fn recommit(&self, queue: &mut Queue) -> bool {
        let memory = self.memory();
        while let Some(front) = queue.commits.front_mut() {
            let now = self.clock.now();
            // What memory has not delivered of it; nothing of it may be
            // on its way to the sink from memory right now.
            let (commit, dead) = {
                let t = lock(&self.track);
                if front.commit.events.iter().any(|e| t.claimed.get(&e.id).is_some_and(|until| *until > now))
                {
                    return false;
                }
                let mut commit = front.commit.clone();
                commit
                    .events
                    .retain(|e| matches!(t.status.get(&e.id), Some(MemStatus::Pending | MemStatus::Dead)));
                let dead: Vec<EventId> = commit
                    .events
                    .iter()
                    .filter(|e| t.status.get(&e.id) == Some(&MemStatus::Dead))
                    .map(|e| e.id)
                    .collect();
                (commit, dead)
            };
            if let Err(e) = self.move_back(commit).await {
                if e.kind() != ErrorKind::QuotaExceeded && !e.is_retryable() && !front.reported {
                    front.reported = true;
                    tracing::warn!(target: "outbox", error = %e,
                        "outbox: a commit memory holds cannot be moved back to the durable store; it stays in memory");
                    (self.report)(&e);
                }
                return false;
            }
            let Some(done) = queue.commits.pop_front() else { break };
            // Memory's copies: dead ones are discarded (no longer listed,
            // no longer parking their key), pending ones are never
            // delivered from memory.
            if !dead.is_empty()
                && let Err(e) = memory.discard_dead(&dead).await
            {
                tracing::debug!(target: "outbox", error = %e, "discarding moved dead letters in memory failed");
            }
            let mut t = lock(&self.track);
            for e in &done.commit.events {
                if t.status.remove(&e.id) == Some(MemStatus::Pending) {
                    t.moved.insert(e.id);
                }
            }
        }
        self.recover();
        true
    }

    /// Writes one held commit to the durable store. A part already there
    /// (written by an earlier attempt whose reply was lost) is left out; a
    /// state another writer has moved on is dropped (reported), its events
    /// and marks kept.
    async fn move_back(&self, mut commit: Commit) -> Result<()> {
        loop {
            if commit.state.is_none() && commit.events.is_empty() && commit.inbox.is_empty() {
                return Ok(());
            }
            let err = match self.primary.put_state_and_events(commit.clone()).await {
                Ok(_) => return Ok(()),
                Err(e) => e,
            };
            match &err {
                Error::DuplicateEvent { id } => {
                    let before = commit.events.len();
                    commit.events.retain(|e| e.id != *id);
                    if commit.events.len() == before {
                        return Err(err);
                    }
                }
                Error::AlreadyProcessed { consumer, origin, id } => {
                    let before = commit.inbox.len();
                    commit
                        .inbox
                        .retain(|m| !(m.consumer == *consumer && m.origin == *origin && m.event_id == *id));
                    if commit.inbox.len() == before {
                        return Err(err);
                    }
                }
                Error::Conflict { .. } => {
                    let Some(s) = commit.state.take() else { return Err(err) };
                    let landed = self.primary.load_state(&s.actor).await?.is_some_and(|cur| {
                        cur.version == s.expected_version.next() && cur.bytes == s.snapshot
                    });
                    if !landed {
                        tracing::warn!(target: "outbox", actor = %s.actor, error = %err,
                            "outbox: another writer committed this actor while memory held its state; that state change is dropped, its events are kept");
                        (self.report)(&err);
                    }
                }
                _ => return Err(err),
            }
        }
    }

    /// Everything memory held is in the durable store: memory is emptied
    /// and the store is durable again.
    fn recover(&self) {
        *lock(&self.memory) = Arc::new(MemoryStore::unannounced(self.clock.clone()).with_limits(self.limits));
        *lock(&self.mem_grant) = None;
        {
            let mut t = lock(&self.track);
            let lapsed: Vec<EventId> = t.claimed.drain().map(|(id, _)| id).collect();
            t.retired.extend(lapsed);
            t.status.clear();
            t.moved.clear();
        }
        if self.fallen.swap(false, Ordering::SeqCst) {
            tracing::info!(target: "outbox",
                "outbox: every commit memory held is in the durable store again (outbox.durable = 1)");
            metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(1.0);
            self.durable.send_replace(true);
        }
    }

    async fn memory_grant(&self, memory: &MemoryStore) -> Result<Option<LeaderGrant>> {
        if let Some(g) = lock(&self.mem_grant).clone() {
            return Ok(Some(g));
        }
        let g = memory.acquire_leadership("outbox-fallback", Duration::from_secs(365 * 24 * 3600)).await?;
        *lock(&self.mem_grant) = g.clone();
        Ok(g)
    }

    fn current_mem_grant(&self) -> Option<LeaderGrant> {
        lock(&self.mem_grant).clone()
    }

    /// Splits `ids` into (claimed from memory, durable); ids claimed from
    /// a memory store since replaced are dropped.
    fn split(&self, ids: &[EventId]) -> (Vec<EventId>, Vec<EventId>) {
        let mut t = lock(&self.track);
        let mut mem = Vec::new();
        let mut durable = Vec::new();
        for id in ids {
            if t.claimed.contains_key(id) {
                mem.push(*id);
            } else if !t.retired.remove(id) {
                durable.push(*id);
            }
        }
        (mem, durable)
    }

    /// Records that memory settled `ids` to `status`.
    fn settled(&self, ids: &[EventId], status: MemStatus) {
        let mut t = lock(&self.track);
        for id in ids {
            t.claimed.remove(id);
            if let Some(s) = t.status.get_mut(id) {
                *s = status;
            }
            if status == MemStatus::Settled {
                t.moved.remove(id);
            }
        }
    }

    /// An operator's change to dead letters, on the memory side: while
    /// fallen back, `change` runs on those of `ids` dead in memory, which
    /// then move to `to` (if given); returns how many it changed.
    async fn change_memory_dead<F, Fut>(
        &self,
        ids: &[EventId],
        to: Option<MemStatus>,
        change: F,
    ) -> Result<u64>
    where
        F: FnOnce(Arc<MemoryStore>, Vec<EventId>) -> Fut,
        Fut: std::future::Future<Output = Result<u64>>,
    {
        if !self.is_fallen() {
            return Ok(0);
        }
        let _order = self.order.lock().await;
        let dead = self.dead_in_memory(ids);
        if dead.is_empty() {
            return Ok(0);
        }
        let m = change(self.memory(), dead.clone()).await?;
        if let Some(to) = to {
            self.settled(&dead, to);
        }
        Ok(m)
    }

    /// Of `ids`, those dead in memory.
    fn dead_in_memory(&self, ids: &[EventId]) -> Vec<EventId> {
        let t = lock(&self.track);
        ids.iter().filter(|id| t.status.get(id) == Some(&MemStatus::Dead)).copied().collect()
    }
}

/// Tries every [`RECOMMIT_INTERVAL`], as long as the store lives, to move
/// what memory holds back to the durable store.
pub(crate) fn spawn_recommitter<P: DurableStore + ?Sized + 'static>(store: Weak<FallbackStore<P>>) {
    let task = async move {
        loop {
            sleep(RECOMMIT_INTERVAL).await;
            let Some(store) = store.upgrade() else { break };
            store.try_recommit().await;
        }
    };
    #[cfg(not(target_arch = "wasm32"))]
    tokio::spawn(task);
    #[cfg(target_arch = "wasm32")]
    wasm_bindgen_futures::spawn_local(task);
}

#[cfg(not(target_arch = "wasm32"))]
async fn sleep(d: Duration) {
    tokio::time::sleep(d).await;
}

/// A `setTimeout` (Tokio has no timer in a browser); never resolves where
/// there is none.
#[cfg(target_arch = "wasm32")]
async fn sleep(d: Duration) {
    use wasm_bindgen_futures::js_sys::{Function, Promise, Reflect, global};
    use wasm_bindgen_futures::wasm_bindgen::{JsCast, JsValue};
    let ms = JsValue::from_f64(d.as_millis() as f64);
    let promise = Promise::new(&mut |resolve, _reject| {
        let g = global();
        if let Ok(f) = Reflect::get(&g, &JsValue::from_str("setTimeout"))
            && let Ok(f) = f.dyn_into::<Function>()
        {
            let _ = f.call2(&g, &resolve, &ms);
        }
    });
    let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<P: DurableStore + ?Sized> StateStore for FallbackStore<P> {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        if self.is_fallen() {
            let mut queue = self.order.lock().await;
            // Memory's commits go first: a new one follows them there
            // unless they are all moved back now.
            if self.is_fallen() && !self.recommit(&mut queue).await {
                return self.commit_in_memory(&mut queue, commit).await;
            }
        }
        // Kept in case the durable store is full: then it goes to memory.
        let copy = self.enabled.then(|| commit.clone());
        match (self.primary.put_state_and_events(commit).await, copy) {
            (Err(e), Some(copy)) if e.kind() == ErrorKind::QuotaExceeded => {
                let mut queue = self.order.lock().await;
                self.fall(&e);
                self.commit_in_memory(&mut queue, copy).await
            }
            (other, _) => other,
        }
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        if self.is_fallen()
            && let Some(s) = self.memory().load_state(actor).await?
        {
            return Ok(Some(s));
        }
        self.primary.load_state(actor).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<P: DurableStore + ?Sized> LeaderStore for FallbackStore<P> {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        self.primary.acquire_leadership(holder, ttl).await
    }
    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        self.primary.renew_leadership(grant, ttl).await
    }
    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        self.primary.release_leadership(grant).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<P: DurableStore + ?Sized> DeliveryStore for FallbackStore<P> {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        let got = self.primary.claim(grant, request).await?;
        if !got.is_empty() || !self.is_fallen() {
            return Ok(got);
        }
        // No move back may slip in between the look at the durable
        // backlog and the claim from memory.
        let _order = self.order.lock().await;
        if !self.is_fallen() || self.primary.stats().await?.pending > 0 {
            return Ok(got);
        }
        // The durable backlog (what was moved back included) is drained:
        // memory's turn.
        let memory = self.memory();
        let Some(mg) = self.memory_grant(&memory).await? else { return Ok(got) };
        loop {
            let batch = memory.claim(&mg, request).await?;
            let stale: Vec<EventId> = {
                let t = lock(&self.track);
                batch.iter().filter(|e| t.moved.contains(&e.id)).map(|e| e.id).collect()
            };
            if !stale.is_empty() {
                // Copies of events moved back: the durable store delivered
                // them; settle them here without delivering.
                memory.ack(&mg, &stale).await?;
                self.settled(&stale, MemStatus::Settled);
            }
            let fresh: Vec<Envelope> = batch.into_iter().filter(|e| !stale.contains(&e.id)).collect();
            if !fresh.is_empty() || stale.is_empty() {
                let until = self.clock.now().saturating_add(request.lease);
                lock(&self.track).claimed.extend(fresh.iter().map(|e| (e.id, until)));
                return Ok(fresh);
            }
        }
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (mem, durable) = self.split(ids);
        if !mem.is_empty()
            && let Some(mg) = self.current_mem_grant()
        {
            self.memory().ack(&mg, &mem).await?;
            self.settled(&mem, MemStatus::Settled);
        }
        self.primary.ack(grant, &durable).await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (mem, durable) = self.split(ids);
        if !mem.is_empty()
            && let Some(mg) = self.current_mem_grant()
        {
            self.memory().release(&mg, &mem).await?;
            self.settled(&mem, MemStatus::Pending);
        }
        self.primary.release(grant, &durable).await
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let (mem, durable) = self.split(&[id]);
        if !mem.is_empty() {
            if let Some(mg) = self.current_mem_grant() {
                self.memory().retry_later(&mg, id, at, error, attempt).await?;
                self.settled(&mem, MemStatus::Pending);
            }
            return Ok(());
        }
        if durable.is_empty() {
            return Ok(());
        }
        self.primary.retry_later(grant, id, at, error, attempt).await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let mut n = self.primary.retry_now(grant).await?;
        if self.is_fallen() {
            let memory = self.memory();
            if let Some(mg) = self.memory_grant(&memory).await? {
                n += memory.retry_now(&mg).await?;
            }
        }
        Ok(n)
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let (mem, durable) = self.split(&[id]);
        if !mem.is_empty() {
            if let Some(mg) = self.current_mem_grant() {
                let memory = self.memory();
                memory.dead_letter(&mg, id, error).await?;
                let moved = lock(&self.track).moved.contains(&id);
                if moved {
                    // A copy of an event moved back (its lease had lapsed):
                    // the durable copy stands for it.
                    memory.discard_dead(&[id]).await?;
                    self.settled(&mem, MemStatus::Settled);
                } else {
                    self.settled(&mem, MemStatus::Dead);
                }
            }
            return Ok(());
        }
        if durable.is_empty() {
            return Ok(());
        }
        self.primary.dead_letter(grant, id, error).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<P: DurableStore + ?Sized> InspectStore for FallbackStore<P> {
    async fn list_by_status(&self, status: EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        match status {
            EventStatus::Pending => self.list_pending(limit).await,
            EventStatus::Dead => self.list_dead(limit).await,
            _ => {
                let mut v = self.primary.list_by_status(status, limit).await?;
                if self.is_fallen() && v.len() < limit {
                    v.extend(self.memory().list_by_status(status, limit - v.len()).await?);
                }
                Ok(v)
            }
        }
    }

    async fn delivery_info(&self, id: EventId) -> Result<Option<DeliveryInfo>> {
        match self.primary.delivery_info(id).await? {
            Some(i) => Ok(Some(i)),
            None if self.is_fallen() => self.memory().delivery_info(id).await,
            None => Ok(None),
        }
    }

    async fn stats(&self) -> Result<StoreStats> {
        let a = self.primary.stats().await?;
        if !self.is_fallen() {
            return Ok(a);
        }
        let mut b = self.memory().stats().await?;
        // Moved copies are counted once, in the durable store.
        b.pending = b.pending.saturating_sub(lock(&self.track).moved.len() as u64);
        let oldest = match (a.oldest_pending_at, b.oldest_pending_at) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        Ok(StoreStats {
            pending: a.pending + b.pending,
            in_flight: a.in_flight + b.in_flight,
            dead: a.dead + b.dead,
            delivered: a.delivered + b.delivered,
            discarded: a.discarded + b.discarded,
            oldest_pending_at: oldest,
            parked_keys: a.parked_keys + b.parked_keys,
        })
    }
    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut v = self.primary.list_pending(limit).await?;
        if self.is_fallen() && v.len() < limit {
            let moved = lock(&self.track).moved.clone();
            let more = self.memory().list_pending((limit - v.len()).saturating_add(moved.len())).await?;
            let room = limit - v.len();
            v.extend(more.into_iter().filter(|e| !moved.contains(&e.id)).take(room));
        }
        Ok(v)
    }
    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut v = self.primary.list_dead(limit).await?;
        if self.is_fallen() && v.len() < limit {
            v.extend(self.memory().list_dead(limit - v.len()).await?);
        }
        Ok(v)
    }
    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let n = self.primary.requeue_dead(ids).await?;
        let m = self
            .change_memory_dead(ids, Some(MemStatus::Pending), |mem, dead| async move {
                mem.requeue_dead(&dead).await
            })
            .await?;
        Ok(n + m)
    }
    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let n = self.primary.discard_dead(ids).await?;
        let m = self
            .change_memory_dead(ids, Some(MemStatus::Settled), |mem, dead| async move {
                mem.discard_dead(&dead).await
            })
            .await?;
        Ok(n + m)
    }
    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let n = self.primary.skip_dead(ids).await?;
        let m =
            self.change_memory_dead(ids, None, |mem, dead| async move { mem.skip_dead(&dead).await }).await?;
        Ok(n + m)
    }
    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let n = self.primary.prune_delivered(before, limit).await?;
        if !self.is_fallen() {
            return Ok(n);
        }
        Ok(n + self.memory().prune_delivered(before, limit.saturating_sub(n as usize)).await?)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl<P: DurableStore + ?Sized> InboxStore for FallbackStore<P> {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        Ok(self.primary.is_processed(consumer, origin, id).await?
            || (self.is_fallen() && self.memory().is_processed(consumer, origin, id).await?))
    }
    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let n = self.primary.prune_inbox(before, limit).await?;
        if !self.is_fallen() {
            return Ok(n);
        }
        Ok(n + self.memory().prune_inbox(before, limit.saturating_sub(n as usize)).await?)
    }
}

impl<P: DurableStore + ?Sized> DurableStore for FallbackStore<P> {
    fn capabilities(&self) -> Capabilities {
        let mut c = self.primary.capabilities();
        if self.is_fallen() {
            c.durable = false;
        }
        c
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
#[allow(clippy::unwrap_used)] // test code: an unwrap that fails is the test failing
mod tests {
    use super::*;
    use outbox_core::{ManualClock, NewEvent, OrderingKey, Version};
    use outbox_testkit::{FaultMode, FaultyStore};

    struct Setup {
        _dir: tempfile::TempDir,
        clock: Arc<ManualClock>,
        inner: Arc<dyn DurableStore>,
        faulty: Arc<FaultyStore>,
        fb: Arc<FallbackStore>,
        reports: Arc<Mutex<Vec<ErrorKind>>>,
    }

    /// A fallback over SQLite (a real durable store).
    fn setup() -> Setup {
        setup_over(|clock, dir| {
            Arc::new(outbox_store_sqlite::SqliteStore::options(dir.join("o.db")).clock(clock).open().unwrap())
        })
    }

    fn setup_over(open: impl FnOnce(SharedClock, &std::path::Path) -> Arc<dyn DurableStore>) -> Setup {
        let clock = ManualClock::new(Timestamp::from_millis(1_000_000));
        let dir = tempfile::tempdir().unwrap();
        let inner = open(clock.clone(), dir.path());
        let faulty = FaultyStore::new(inner.clone());
        let reports: Arc<Mutex<Vec<ErrorKind>>> = Arc::default();
        let r = reports.clone();
        let primary: Arc<dyn DurableStore> = faulty.clone();
        let fb = Arc::new(FallbackStore::new(
            primary,
            clock.clone(),
            Box::new(move |e: &Error| lock(&r).push(e.kind())),
        ));
        Setup { _dir: dir, clock, inner, faulty, fb, reports }
    }

    fn actor(name: &str) -> ActorId {
        ActorId::new(name).unwrap()
    }

    fn event(origin: &str, n: u32) -> NewEvent {
        NewEvent::json(actor(origin), "E", &n).unwrap()
    }

    fn state(name: &str, from: u64, snapshot: &str, e: &NewEvent) -> Commit {
        Commit::state(actor(name), Version(from), snapshot.as_bytes().to_vec()).event(e.clone())
    }

    fn ids(batch: &[Envelope]) -> Vec<EventId> {
        batch.iter().map(|e| e.id).collect()
    }

    const LEASE: Duration = Duration::from_secs(30);

    /// `OnQuota::Fail` on a page: the store's `QuotaExceeded` reaches the
    /// committer, nothing goes to memory, the store stays durable.
    #[tokio::test]
    async fn a_passthrough_store_returns_quota_errors_and_never_falls_back() {
        let s = setup();
        let primary: Arc<dyn DurableStore> = s.faulty.clone();
        let fb = FallbackStore::passthrough(primary, s.clock.clone());
        let e1 = event("a", 1);
        assert!(fb.put_state_and_events(state("a", 0, "1", &e1)).await.unwrap().durable);
        s.faulty.fill_up();
        let err = fb.put_state_and_events(state("a", 1, "2", &event("a", 2))).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::QuotaExceeded);
        assert!(!fb.is_fallen() && fb.capabilities().durable, "not held in memory");
        assert_eq!(fb.load_state(&actor("a")).await.unwrap().unwrap().version, Version(1));
    }

    #[tokio::test]
    async fn held_commits_move_back_in_order_and_nothing_is_delivered_twice() {
        let s = setup();
        let (e1, e2, e3) = (event("a", 1), event("a", 2), event("a", 3));
        let e4 = event("b", 4).with_key(OrderingKey::new("b").unwrap());
        assert!(s.fb.put_state_and_events(state("a", 0, "1", &e1)).await.unwrap().durable);
        s.faulty.fill_up();
        let r2 = s.fb.put_state_and_events(state("a", 1, "2", &e2)).await.unwrap();
        assert!(!r2.durable && s.fb.is_fallen(), "held in memory, and the receipt says so");
        assert_eq!(r2.version, Some(Version(2)), "versions carry on in memory");
        assert!(!s.fb.put_state_and_events(state("a", 2, "3", &e3)).await.unwrap().durable);
        assert!(!s.fb.put_state_and_events(Commit::events_only().event(e4.clone())).await.unwrap().durable);
        assert_eq!(*lock(&s.reports), vec![ErrorKind::QuotaExceeded]);
        assert!(!s.fb.capabilities().durable);

        let g = s.fb.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
        let one = ClaimRequest::new(1, LEASE);
        assert_eq!(ids(&s.fb.claim(&g, one).await.unwrap()), vec![e1.id], "the durable backlog first");
        s.fb.ack(&g, &[e1.id]).await.unwrap();
        assert_eq!(ids(&s.fb.claim(&g, one).await.unwrap()), vec![e2.id], "then memory's");

        // Space is back, but e2 is on its way to the sink from memory: its
        // commit (and every later one) waits.
        s.faulty.disarm();
        assert!(!s.fb.try_recommit().await);
        assert_eq!(s.inner.load_state(&actor("a")).await.unwrap().unwrap().version, Version(1));
        s.fb.ack(&g, &[e2.id]).await.unwrap();
        assert!(s.fb.try_recommit().await, "everything moved back");
        assert!(!s.fb.is_fallen() && s.fb.capabilities().limits == s.inner.capabilities().limits);
        let st = s.inner.load_state(&actor("a")).await.unwrap().unwrap();
        assert_eq!((st.version, st.bytes), (Version(3), b"3".to_vec()), "the states, in order");
        let pending = ids(&s.inner.list_pending(10).await.unwrap());
        assert_eq!(pending, vec![e3.id, e4.id], "the undelivered events, with their ids; e2 was delivered");

        let all = ClaimRequest::new(10, LEASE);
        let batch = s.fb.claim(&g, all).await.unwrap();
        assert_eq!(ids(&batch), vec![e3.id, e4.id]);
        s.fb.ack(&g, &ids(&batch)).await.unwrap();
        assert!(s.fb.claim(&g, all).await.unwrap().is_empty(), "nothing twice");
        let r = s.fb.put_state_and_events(state("a", 3, "4", &event("a", 5))).await.unwrap();
        assert!(r.durable, "durable again");
        assert_eq!(s.inner.stats().await.unwrap().pending, 1);
        assert_eq!(*lock(&s.reports), vec![ErrorKind::QuotaExceeded], "nothing more to report");
    }

    #[tokio::test]
    async fn a_partly_moved_memory_delivers_each_event_once_in_key_order() {
        let s = setup();
        s.faulty.fill_up();
        let (e1, e2, e3) = (event("a", 1), event("a", 2), event("b", 3));
        s.fb.put_state_and_events(state("a", 0, "1", &e1)).await.unwrap();
        s.fb.put_state_and_events(state("a", 1, "2", &e2)).await.unwrap();
        s.fb.put_state_and_events(state("b", 0, "1", &e3)).await.unwrap();
        s.faulty.disarm();
        // The first commit moves back, the second fails (retryably).
        s.faulty.fail_nth(2, FaultMode::Before);
        assert!(!s.fb.try_recommit().await);
        assert!(s.fb.is_fallen());
        assert!(lock(&s.reports).len() == 1, "a retryable failure is not reported");
        assert_eq!(s.inner.load_state(&actor("a")).await.unwrap().unwrap().version, Version(1));
        assert_eq!(s.fb.stats().await.unwrap().pending, 3, "e1 counted once");
        assert_eq!(ids(&s.fb.list_pending(10).await.unwrap()), vec![e1.id, e2.id, e3.id]);
        assert_eq!(
            s.fb.load_state(&actor("a")).await.unwrap().unwrap().version,
            Version(2),
            "memory's state is the latest"
        );

        let g = s.fb.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
        let all = ClaimRequest::new(10, LEASE);
        assert_eq!(
            ids(&s.fb.claim(&g, all).await.unwrap()),
            vec![e1.id],
            "the moved event, from SQLite's side"
        );
        assert!(s.fb.claim(&g, all).await.unwrap().is_empty(), "e1 is leased: memory waits");
        s.fb.ack(&g, &[e1.id]).await.unwrap();
        let batch = s.fb.claim(&g, all).await.unwrap();
        assert_eq!(ids(&batch), vec![e2.id, e3.id], "memory's copy of e1 is never delivered");
        s.fb.ack(&g, &ids(&batch)).await.unwrap();
        assert!(s.fb.try_recommit().await);
        assert_eq!(s.inner.load_state(&actor("a")).await.unwrap().unwrap().version, Version(2));
        assert_eq!(s.inner.load_state(&actor("b")).await.unwrap().unwrap().version, Version(1));
        let st = s.inner.stats().await.unwrap();
        assert_eq!((st.pending, st.delivered), (0, 1), "only e1 went through the durable store");
        assert_eq!(s.fb.stats().await.unwrap().pending, 0);
    }

    #[tokio::test]
    async fn a_lapsed_lease_does_not_hold_the_move_back() {
        let s = setup();
        s.faulty.fill_up();
        let e1 = event("a", 1);
        s.fb.put_state_and_events(state("a", 0, "1", &e1)).await.unwrap();
        let g = s.fb.acquire_leadership("f", Duration::from_secs(600)).await.unwrap().unwrap();
        assert_eq!(ids(&s.fb.claim(&g, ClaimRequest::new(1, LEASE)).await.unwrap()), vec![e1.id]);
        s.faulty.disarm();
        assert!(!s.fb.try_recommit().await, "leased");
        // The claimer is gone: once its lease lapses the event moves back
        // (and may be delivered twice: it was in flight).
        s.clock.advance(LEASE + Duration::from_millis(1));
        assert!(s.fb.try_recommit().await);
        assert_eq!(ids(&s.inner.list_pending(10).await.unwrap()), vec![e1.id]);
        // A late settlement of memory's copy changes nothing durable.
        s.fb.ack(&g, &[e1.id]).await.unwrap();
        assert_eq!(ids(&s.inner.list_pending(10).await.unwrap()), vec![e1.id]);
    }

    #[tokio::test]
    async fn a_dead_letter_in_memory_moves_back_as_pending() {
        let s = setup();
        s.faulty.fill_up();
        let e1 = event("a", 1);
        s.fb.put_state_and_events(state("a", 0, "1", &e1)).await.unwrap();
        let g = s.fb.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
        s.fb.claim(&g, ClaimRequest::new(1, LEASE)).await.unwrap();
        s.fb.dead_letter(&g, e1.id, "refused").await.unwrap();
        assert_eq!(ids(&s.fb.list_dead(10).await.unwrap()), vec![e1.id]);
        s.faulty.disarm();
        assert!(s.fb.try_recommit().await);
        assert!(s.fb.list_dead(10).await.unwrap().is_empty());
        assert_eq!(ids(&s.fb.list_pending(10).await.unwrap()), vec![e1.id], "kept, to be tried again");
    }

    /// An operator's requeue, skip and discard reach dead letters memory
    /// holds: each counted once, a requeued one claimable again, a
    /// discarded one neither listed nor moved back.
    #[tokio::test]
    async fn operators_change_dead_letters_memory_holds() {
        let s = setup();
        s.faulty.fill_up();
        let (a, b, c) = (event("a", 1), event("b", 2), event("c", 3));
        let commit = Commit::events_only().event(a.clone()).event(b.clone()).event(c.clone());
        assert!(!s.fb.put_state_and_events(commit).await.unwrap().durable);
        let g = s.fb.acquire_leadership("f", Duration::from_secs(60)).await.unwrap().unwrap();
        assert_eq!(s.fb.claim(&g, ClaimRequest::new(3, LEASE)).await.unwrap().len(), 3);
        for e in [&a, &b, &c] {
            s.fb.dead_letter(&g, e.id, "refused").await.unwrap();
        }
        assert_eq!(s.fb.requeue_dead(&[a.id]).await.unwrap(), 1);
        assert_eq!(s.fb.skip_dead(&[b.id]).await.unwrap(), 1);
        assert_eq!(s.fb.discard_dead(&[c.id]).await.unwrap(), 1);
        assert_eq!(s.fb.discard_dead(&[c.id]).await.unwrap(), 0, "discarded already");
        assert_eq!(s.fb.requeue_dead(&[a.id]).await.unwrap(), 0, "not dead any more");
        assert_eq!(ids(&s.fb.list_dead(10).await.unwrap()), vec![b.id], "skipped stays listed");
        assert_eq!(ids(&s.fb.claim(&g, ClaimRequest::new(3, LEASE)).await.unwrap()), vec![a.id]);
        s.fb.ack(&g, &[a.id]).await.unwrap();
        s.faulty.disarm();
        assert!(s.fb.try_recommit().await);
        assert_eq!(ids(&s.fb.list_pending(10).await.unwrap()), vec![b.id], "only b moves back, as pending");
    }

    #[tokio::test]
    async fn another_writers_state_wins_and_the_held_events_are_kept() {
        let s = setup();
        s.faulty.fill_up();
        let e1 = event("a", 1);
        s.fb.put_state_and_events(state("a", 0, "mine", &e1)).await.unwrap();
        s.faulty.disarm();
        // Another process commits the same actor to the durable store.
        s.inner
            .put_state_and_events(Commit::state(actor("a"), Version(0), b"theirs".to_vec()))
            .await
            .unwrap();
        assert!(s.fb.try_recommit().await);
        assert_eq!(*lock(&s.reports), vec![ErrorKind::QuotaExceeded, ErrorKind::Conflict], "reported");
        assert_eq!(s.inner.load_state(&actor("a")).await.unwrap().unwrap().bytes, b"theirs".to_vec());
        assert_eq!(ids(&s.inner.list_pending(10).await.unwrap()), vec![e1.id], "the event is kept");
    }

    #[tokio::test(start_paused = true)]
    async fn the_background_step_moves_commits_back_without_a_new_commit() {
        // Over the memory store: its calls finish at once, so paused time
        // only moves when the test and the background step both wait.
        let s = setup_over(|clock, _| Arc::new(MemoryStore::unannounced(clock)));
        spawn_recommitter(Arc::downgrade(&s.fb));
        s.faulty.fill_up();
        s.fb.put_state_and_events(state("a", 0, "1", &event("a", 1))).await.unwrap();
        tokio::time::sleep(RECOMMIT_INTERVAL * 3).await;
        assert!(s.fb.is_fallen(), "still full");
        s.faulty.disarm();
        tokio::time::sleep(RECOMMIT_INTERVAL + Duration::from_secs(1)).await;
        assert!(!s.fb.is_fallen(), "moved back by the background step");
        assert_eq!(s.inner.load_state(&actor("a")).await.unwrap().unwrap().version, Version(1));
    }
}
