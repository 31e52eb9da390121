use std::fmt;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, Error, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore, OrderingKey,
    Result, StateSnapshot, StateStore, StoreStats, Timestamp, async_trait,
};

/// Where an injected fault strikes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FaultMode {
    /// The operation fails before it reaches the store: nothing happens.
    Before,
    /// The operation reaches the store and takes effect, then the caller is
    /// told it failed: the "network dropped the reply" case, where a retry
    /// must not duplicate anything.
    After,
}

#[derive(Debug, Default)]
struct Plan {
    ops: u64,
    /// Fail when `ops` reaches this (1-based); `None` is disarmed.
    fail_at: Option<u64>,
    /// Keep failing every operation after the first fault (a dead store).
    sticky: bool,
    mode: Option<FaultMode>,
    fired: u64,
    /// Commits fail with `QuotaExceeded` (a full disk or storage quota).
    full: bool,
    /// The operations seen, by name, in order.
    log: Vec<&'static str>,
}

/// A store wrapper that fails the Nth operation (or every operation from
/// the Nth on) with a retryable [`Error::Unavailable`]: crash and
/// lost-reply injection for any backend.
///
/// Every call of the store traits counts as one operation;
/// [`DurableStore::capabilities`] does not.
pub struct FaultyStore {
    inner: Arc<dyn DurableStore>,
    plan: Mutex<Plan>,
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultyStore").field("inner", &self.inner).field("plan", &self.plan).finish()
    }
}

impl FaultyStore {
    /// Wraps `inner`, disarmed.
    pub fn new(inner: Arc<dyn DurableStore>) -> Arc<Self> {
        Arc::new(FaultyStore { inner, plan: Mutex::new(Plan::default()) })
    }

    fn plan(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fails the `n`th operation from now (1 = the next one), once.
    pub fn fail_nth(&self, n: u64, mode: FaultMode) {
        let mut p = self.plan();
        p.fail_at = Some(p.ops + n.max(1));
        p.sticky = false;
        p.mode = Some(mode);
    }

    /// Fails the `n`th operation from now and every one after it, until
    /// [`FaultyStore::disarm`]: the store behaves as if its process died.
    pub fn fail_from(&self, n: u64, mode: FaultMode) {
        self.fail_nth(n, mode);
        self.plan().sticky = true;
    }

    /// From now on every commit fails with [`Error::QuotaExceeded`] before
    /// it reaches the store, as on a full disk or an exhausted browser
    /// quota; reads, claims and settlements still work. Until
    /// [`FaultyStore::disarm`].
    pub fn fill_up(&self) {
        self.plan().full = true;
    }

    /// Stops injecting faults.
    pub fn disarm(&self) {
        let mut p = self.plan();
        p.fail_at = None;
        p.sticky = false;
        p.full = false;
    }

    /// Operations seen so far.
    pub fn ops(&self) -> u64 {
        self.plan().ops
    }

    /// The names of the operations seen so far, in order (the store
    /// trait's method names, such as `"claim"` or `"claim_heads_of"`).
    pub fn calls(&self) -> Vec<&'static str> {
        self.plan().log.clone()
    }

    /// Faults injected so far.
    pub fn faults(&self) -> u64 {
        self.plan().fired
    }

    /// The wrapped store.
    pub fn inner(&self) -> &Arc<dyn DurableStore> {
        &self.inner
    }

    /// Counts one operation; says whether and where it must fail.
    fn gate(&self, op: &'static str) -> Option<(FaultMode, Error)> {
        let mut p = self.plan();
        p.ops += 1;
        p.log.push(op);
        let due = match p.fail_at {
            Some(at) if p.sticky => p.ops >= at,
            Some(at) => p.ops == at,
            None => false,
        };
        if !due {
            return None;
        }
        p.fired += 1;
        let mode = p.mode.unwrap_or(FaultMode::Before);
        Some((mode, Error::Unavailable { message: format!("injected fault in {op}"), source: None }))
    }
}

macro_rules! faulty {
    ($self:ident, $op:literal, $call:expr) => {{
        match $self.gate($op) {
            None => $call.await,
            Some((FaultMode::Before, e)) => Err(e),
            Some((FaultMode::After, e)) => {
                let _ = $call.await;
                Err(e)
            }
        }
    }};
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl StateStore for FaultyStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        if self.plan().full {
            self.plan().fired += 1;
            return Err(Error::QuotaExceeded { message: "injected: the store is full".into(), source: None });
        }
        faulty!(self, "put_state_and_events", self.inner.put_state_and_events(commit))
    }
    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        faulty!(self, "load_state", self.inner.load_state(actor))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl LeaderStore for FaultyStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        faulty!(self, "acquire_leadership", self.inner.acquire_leadership(holder, ttl))
    }
    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        faulty!(self, "renew_leadership", self.inner.renew_leadership(grant, ttl))
    }
    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        faulty!(self, "release_leadership", self.inner.release_leadership(grant))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl DeliveryStore for FaultyStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        faulty!(self, "claim", self.inner.claim(grant, request))
    }
    async fn claim_heads_of(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys: &[OrderingKey],
    ) -> Result<Vec<Envelope>> {
        faulty!(self, "claim_heads_of", self.inner.claim_heads_of(grant, request, keys))
    }
    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        faulty!(self, "ack", self.inner.ack(grant, ids))
    }
    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        faulty!(self, "release", self.inner.release(grant, ids))
    }
    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        faulty!(self, "retry_later", self.inner.retry_later(grant, id, at, error, attempt))
    }
    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        faulty!(self, "retry_now", self.inner.retry_now(grant))
    }
    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        faulty!(self, "dead_letter", self.inner.dead_letter(grant, id, error))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InspectStore for FaultyStore {
    async fn stats(&self) -> Result<StoreStats> {
        faulty!(self, "stats", self.inner.stats())
    }
    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        faulty!(self, "list_pending", self.inner.list_pending(limit))
    }
    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        faulty!(self, "list_dead", self.inner.list_dead(limit))
    }
    async fn list_by_status(&self, status: outbox_core::EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        faulty!(self, "list_by_status", self.inner.list_by_status(status, limit))
    }
    async fn delivery_info(&self, id: EventId) -> Result<Option<outbox_core::DeliveryInfo>> {
        faulty!(self, "delivery_info", self.inner.delivery_info(id))
    }
    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        faulty!(self, "requeue_dead", self.inner.requeue_dead(ids))
    }
    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        faulty!(self, "discard_dead", self.inner.discard_dead(ids))
    }
    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        faulty!(self, "skip_dead", self.inner.skip_dead(ids))
    }
    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        faulty!(self, "prune_delivered", self.inner.prune_delivered(before, limit))
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InboxStore for FaultyStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        faulty!(self, "is_processed", self.inner.is_processed(consumer, origin, id))
    }
    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        faulty!(self, "prune_inbox", self.inner.prune_inbox(before, limit))
    }
}

impl DurableStore for FaultyStore {
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
}
