//! The quota fallback: a durable store that, once it reports
//! `QuotaExceeded`, takes new commits in memory.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, Error, ErrorKind, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore,
    Result, SharedClock, StateSnapshot, StateStore, StoreStats, Timestamp, async_trait,
};
use outbox_store_memory::MemoryStore;

#[cfg(not(target_arch = "wasm32"))]
type OnFallback = Box<dyn Fn(&Error) + Send + Sync>;
#[cfg(target_arch = "wasm32")]
type OnFallback = Box<dyn Fn(&Error)>;

/// A durable store with an in-memory overflow.
///
/// While the durable store has room, everything goes to it. When a commit
/// fails with `QuotaExceeded`, the store switches to memory for every new
/// commit (the failed one included; an actor's state is copied over first
/// so its versions carry on), calls the fallback hook once, and reports
/// itself not durable. What the durable store already holds stays there and
/// is delivered first; events committed in memory are delivered once the
/// durable backlog is empty, so per-key order holds across the switch.
///
/// The switch lasts until restart. Going back to the durable store while
/// running would mean moving actor states back without breaking their
/// versions and keeping per-key order across two stores, which the store
/// contract cannot do atomically; after a restart the durable store is used
/// again, and what only memory held is gone (it was never durable, and the
/// hook said so).
pub(crate) struct FallbackStore {
    primary: Arc<dyn DurableStore>,
    memory: MemoryStore,
    fallen: AtomicBool,
    on_fallback: OnFallback,
    /// Grant on the memory store, for events claimed from it.
    mem_grant: Mutex<Option<LeaderGrant>>,
    /// Ids claimed from memory and not yet settled.
    mem_ids: Mutex<HashSet<EventId>>,
}

impl std::fmt::Debug for FallbackStore {
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

impl FallbackStore {
    pub(crate) fn new(primary: Arc<dyn DurableStore>, clock: SharedClock, on_fallback: OnFallback) -> Self {
        FallbackStore {
            primary,
            memory: MemoryStore::unannounced(clock),
            fallen: AtomicBool::new(false),
            on_fallback,
            mem_grant: Mutex::new(None),
            mem_ids: Mutex::new(HashSet::new()),
        }
    }

    pub(crate) fn is_fallen(&self) -> bool {
        self.fallen.load(Ordering::SeqCst)
    }

    async fn commit_in_memory(&self, commit: Commit) -> Result<CommitReceipt> {
        if let Some(s) = &commit.state
            && self.memory.load_state(&s.actor).await?.is_none()
            && let Some(snap) = self.primary.load_state(&s.actor).await?
        {
            self.memory.seed_state(s.actor.clone(), snap);
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
        self.memory.put_state_and_events(commit).await
    }

    async fn memory_grant(&self) -> Result<Option<LeaderGrant>> {
        if let Some(g) = lock(&self.mem_grant).clone() {
            return Ok(Some(g));
        }
        let g =
            self.memory.acquire_leadership("outbox-fallback", Duration::from_secs(365 * 24 * 3600)).await?;
        *lock(&self.mem_grant) = g.clone();
        Ok(g)
    }

    /// Splits `ids` into (memory, durable).
    fn split(&self, ids: &[EventId]) -> (Vec<EventId>, Vec<EventId>) {
        let mem = lock(&self.mem_ids);
        ids.iter().partition(|id| mem.contains(id))
    }

    fn current_mem_grant(&self) -> Option<LeaderGrant> {
        lock(&self.mem_grant).clone()
    }

    fn grant_if_claimed_here(&self, id: EventId) -> Option<LeaderGrant> {
        let held = lock(&self.mem_ids).contains(&id);
        if held { self.current_mem_grant() } else { None }
    }

    fn settled(&self, ids: &[EventId]) {
        let mut mem = lock(&self.mem_ids);
        for id in ids {
            mem.remove(id);
        }
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl StateStore for FallbackStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        if !self.is_fallen() {
            // Kept in case the durable store is full: then it goes to memory.
            let copy = commit.clone();
            match self.primary.put_state_and_events(commit).await {
                Err(e) if e.kind() == ErrorKind::QuotaExceeded => {
                    if !self.fallen.swap(true, Ordering::SeqCst) {
                        tracing::warn!(target: "outbox", error = %e,
                            "outbox: durable store is full; new commits go to memory until restart (outbox.durable = 0)");
                        metrics::gauge!(outbox_forwarder::metrics::DURABLE).set(0.0);
                        (self.on_fallback)(&e);
                    }
                    return self.commit_in_memory(copy).await;
                }
                other => return other,
            }
        }
        self.commit_in_memory(commit).await
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        if self.is_fallen()
            && let Some(s) = self.memory.load_state(actor).await?
        {
            return Ok(Some(s));
        }
        self.primary.load_state(actor).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl LeaderStore for FallbackStore {
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
impl DeliveryStore for FallbackStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        let got = self.primary.claim(grant, request).await?;
        if !got.is_empty() || !self.is_fallen() || self.primary.stats().await?.pending > 0 {
            return Ok(got);
        }
        // The durable backlog is drained: memory's turn.
        let Some(mg) = self.memory_grant().await? else { return Ok(got) };
        let got = self.memory.claim(&mg, request).await?;
        lock(&self.mem_ids).extend(got.iter().map(|e| e.id));
        Ok(got)
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (mem, durable) = self.split(ids);
        if !mem.is_empty()
            && let Some(mg) = self.current_mem_grant()
        {
            self.memory.ack(&mg, &mem).await?;
            self.settled(&mem);
        }
        self.primary.ack(grant, &durable).await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (mem, durable) = self.split(ids);
        if !mem.is_empty()
            && let Some(mg) = self.current_mem_grant()
        {
            self.memory.release(&mg, &mem).await?;
            self.settled(&mem);
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
        if let Some(mg) = self.grant_if_claimed_here(id) {
            self.memory.retry_later(&mg, id, at, error, attempt).await?;
            self.settled(&[id]);
            return Ok(());
        }
        self.primary.retry_later(grant, id, at, error, attempt).await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let mut n = self.primary.retry_now(grant).await?;
        if self.is_fallen()
            && let Some(mg) = self.memory_grant().await?
        {
            n += self.memory.retry_now(&mg).await?;
        }
        Ok(n)
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        if let Some(mg) = self.grant_if_claimed_here(id) {
            self.memory.dead_letter(&mg, id, error).await?;
            self.settled(&[id]);
            return Ok(());
        }
        self.primary.dead_letter(grant, id, error).await
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InspectStore for FallbackStore {
    async fn stats(&self) -> Result<StoreStats> {
        let a = self.primary.stats().await?;
        if !self.is_fallen() {
            return Ok(a);
        }
        let b = self.memory.stats().await?;
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
            v.extend(self.memory.list_pending(limit - v.len()).await?);
        }
        Ok(v)
    }
    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        let mut v = self.primary.list_dead(limit).await?;
        if self.is_fallen() && v.len() < limit {
            v.extend(self.memory.list_dead(limit - v.len()).await?);
        }
        Ok(v)
    }
    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        Ok(self.primary.requeue_dead(ids).await? + self.memory.requeue_dead(ids).await?)
    }
    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        Ok(self.primary.discard_dead(ids).await? + self.memory.discard_dead(ids).await?)
    }
    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        Ok(self.primary.skip_dead(ids).await? + self.memory.skip_dead(ids).await?)
    }
    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let n = self.primary.prune_delivered(before, limit).await?;
        Ok(n + self.memory.prune_delivered(before, limit.saturating_sub(n as usize)).await?)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InboxStore for FallbackStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        Ok(self.primary.is_processed(consumer, origin, id).await?
            || (self.is_fallen() && self.memory.is_processed(consumer, origin, id).await?))
    }
    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let n = self.primary.prune_inbox(before, limit).await?;
        Ok(n + self.memory.prune_inbox(before, limit.saturating_sub(n as usize)).await?)
    }
}

impl DurableStore for FallbackStore {
    fn capabilities(&self) -> Capabilities {
        let mut c = self.primary.capabilities();
        if self.is_fallen() {
            c.durable = false;
        }
        c
    }
}
