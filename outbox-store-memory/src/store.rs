use std::collections::HashSet;
use std::time::Duration;

use crate::error::Refused;
use crate::options::MemoryStore;
use crate::schema::{Row, Status};
use outbox_core::rules::{self, ClaimPlan};

use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryInfo,
    DeliveryStore, DurableStore, Envelope, Epoch, EventId, EventStatus, InboxStore, InspectStore,
    LeaderGrant, LeaderStore, OrderingKey, Result, StateSnapshot, StateStore, StoreStats, Timestamp, Version,
    async_trait,
};

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl StateStore for MemoryStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.limits)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        // Check everything first, then apply: nothing can fail after the
        // first write.
        if let Some(s) = &commit.state {
            let actual = inner.states.get(&s.actor).map_or(Version::NONE, |st| st.version);
            if actual != s.expected_version {
                return Err(Refused::Conflict {
                    actor: s.actor.clone(),
                    expected: s.expected_version,
                    actual,
                }
                .into());
            }
        }
        if let Some(e) = commit.events.iter().find(|e| inner.by_id.contains_key(&e.id)) {
            return Err(Refused::Duplicate(e.id).into());
        }
        for m in &commit.inbox {
            if inner.inbox.contains_key(&(m.consumer.clone(), m.origin.clone(), m.event_id)) {
                return Err(Refused::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                }
                .into());
            }
        }
        let version = commit.state.map(|s| {
            let version = s.expected_version.next();
            inner.states.insert(s.actor, StateSnapshot { version, bytes: s.snapshot, updated_at: now });
            version
        });
        for e in commit.events {
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.by_id.insert(e.id, seq);
            let env = Envelope::committed(e, now);
            inner
                .events
                .insert(seq, Row { env, status: Status::Pending, claimed_by: None, lease_until: None });
        }
        for m in commit.inbox {
            inner.inbox.insert((m.consumer, m.origin, m.event_id), now);
        }
        Ok(CommitReceipt { version, committed_at: now, durable: false })
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        Ok(self.lock().states.get(actor).cloned())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl LeaderStore for MemoryStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        rules::check_ttl(ttl)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        if let Some(cur) = &inner.leader
            && cur.holder != holder
            && cur.expires_at > now
        {
            return Ok(None);
        }
        inner.last_epoch += 1;
        let grant = LeaderGrant {
            holder: holder.to_owned(),
            epoch: Epoch(inner.last_epoch),
            expires_at: now.saturating_add(ttl),
        };
        inner.leader = Some(grant.clone());
        Ok(Some(grant))
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        rules::check_ttl(ttl)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.check_fence(grant)?;
        let renewed = LeaderGrant { expires_at: now.saturating_add(ttl), ..grant.clone() };
        inner.leader = Some(renewed.clone());
        Ok(renewed)
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let mut inner = self.lock();
        if inner.leader.as_ref().is_some_and(|g| g.epoch == grant.epoch) {
            inner.leader = None;
        }
        Ok(())
    }
}

impl MemoryStore {
    /// [`DeliveryStore::claim`], or with `heads_of` only the heads of
    /// those keys ([`DeliveryStore::claim_heads_of`]).
    fn claim_where(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        heads_of: Option<&[OrderingKey]>,
    ) -> Result<Vec<Envelope>> {
        rules::check_lease(&request)?;
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.check_fence(grant)?;
        let lease_until = now.saturating_add(request.lease);
        let mut plan = ClaimPlan::new(&request, now);
        // The keys still to find a head for, when only heads are claimed.
        let mut wanted: Option<HashSet<&OrderingKey>> = heads_of.map(|keys| keys.iter().collect());
        let mut out = Vec::new();
        for (&seq, row) in inner.events.iter_mut() {
            if plan.is_full() || wanted.as_ref().is_some_and(|w| w.is_empty()) {
                break;
            }
            if wanted.as_ref().is_some_and(|w| !w.contains(&row.env.key)) {
                continue;
            }
            if !plan.offer(&row.env.key, seq, row.entry()) {
                continue;
            }
            if let Some(w) = wanted.as_mut() {
                // Its key's head: nothing more of this key.
                w.remove(&row.env.key);
            }
            row.env.attempts = row.env.attempts.saturating_add(1);
            row.claimed_by = Some(grant.epoch);
            row.lease_until = Some(lease_until);
            out.push(row.env.clone());
        }
        Ok(out)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl DeliveryStore for MemoryStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        self.claim_where(grant, request, None)
    }

    async fn claim_heads_of(
        &self,
        grant: &LeaderGrant,
        request: ClaimRequest,
        keys: &[OrderingKey],
    ) -> Result<Vec<Envelope>> {
        self.claim_where(grant, request, Some(keys))
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.clock.now();
        let mut inner = self.lock();
        for seq in inner.settleable(grant, ids)? {
            if let Some(row) = inner.events.get_mut(&seq) {
                row.status = Status::Delivered(now);
                row.lease_until = None;
            }
        }
        Ok(())
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let mut inner = self.lock();
        for seq in inner.settleable(grant, ids)? {
            if let Some(row) = inner.events.get_mut(&seq)
                && row.lease_until.is_some()
            {
                row.env.attempts = row.env.attempts.saturating_sub(1);
                row.lease_until = None;
            }
        }
        Ok(())
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let mut inner = self.lock();
        for seq in inner.settleable(grant, &[id])? {
            if let Some(row) = inner.events.get_mut(&seq) {
                if attempt == Attempt::Uncounted && row.lease_until.is_some() {
                    row.env.attempts = row.env.attempts.saturating_sub(1);
                }
                row.env.next_attempt_at = at;
                row.env.last_error = Some(error.to_owned());
                row.lease_until = None;
            }
        }
        Ok(())
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.check_fence(grant)?;
        let mut n = 0;
        for row in inner.events.values_mut() {
            if row.status == Status::Pending && row.env.last_error.is_some() && row.env.next_attempt_at > now
            {
                row.env.next_attempt_at = now;
                n += 1;
            }
        }
        Ok(n)
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let mut inner = self.lock();
        for seq in inner.settleable(grant, &[id])? {
            if let Some(row) = inner.events.get_mut(&seq) {
                row.status = Status::Dead { skipped: false };
                row.env.last_error = Some(error.to_owned());
                row.lease_until = None;
            }
        }
        Ok(())
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InspectStore for MemoryStore {
    async fn stats(&self) -> Result<StoreStats> {
        let now = self.clock.now();
        let inner = self.lock();
        let mut s = StoreStats::default();
        let mut parked = HashSet::new();
        for row in inner.events.values() {
            match row.status {
                Status::Pending => {
                    s.pending += 1;
                    if row.leased_at(now) {
                        s.in_flight += 1;
                    }
                    let at = row.env.created_at;
                    s.oldest_pending_at = Some(s.oldest_pending_at.map_or(at, |o| o.min(at)));
                }
                Status::Dead { skipped } => {
                    s.dead += 1;
                    if !skipped {
                        parked.insert(&row.env.key);
                    }
                }
                Status::Delivered(_) => s.delivered += 1,
                Status::Discarded(_) => s.discarded += 1,
            }
        }
        s.parked_keys = parked.len() as u64;
        Ok(s)
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        let inner = self.lock();
        Ok(inner
            .events
            .values()
            .filter(|r| r.status == Status::Pending)
            .take(limit)
            .map(|r| r.env.clone())
            .collect())
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        let inner = self.lock();
        Ok(inner
            .events
            .values()
            .filter(|r| matches!(r.status, Status::Dead { .. }))
            .take(limit)
            .map(|r| r.env.clone())
            .collect())
    }

    async fn delivery_info(&self, id: EventId) -> Result<Option<DeliveryInfo>> {
        let inner = self.lock();
        Ok(inner.events.values().find(|r| r.env.id == id).map(|r| {
            DeliveryInfo::new(r.lease_until, r.claimed_by, matches!(r.status, Status::Dead { skipped: true }))
        }))
    }

    async fn list_by_status(&self, status: EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        let inner = self.lock();
        Ok(inner
            .events
            .values()
            .filter(|r| match r.status {
                Status::Pending => status == EventStatus::Pending,
                Status::Dead { .. } => status == EventStatus::Dead,
                Status::Delivered(_) => status == EventStatus::Delivered,
                Status::Discarded(_) => status == EventStatus::Discarded,
            })
            .take(limit)
            .map(|r| r.env.clone())
            .collect())
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut moved = 0;
        for id in ids {
            if let Some(row) = inner.dead_mut(id) {
                row.status = Status::Pending;
                row.env.attempts = 0;
                row.env.next_attempt_at = now;
                row.claimed_by = None;
                row.lease_until = None;
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.clock.now();
        let mut inner = self.lock();
        let mut moved = 0;
        for id in ids {
            if let Some(row) = inner.dead_mut(id) {
                row.status = Status::Discarded(now);
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let mut inner = self.lock();
        let mut moved = 0;
        for id in ids {
            if let Some(row) = inner.dead_mut(id)
                && row.status == (Status::Dead { skipped: false })
            {
                row.status = Status::Dead { skipped: true };
                moved += 1;
            }
        }
        Ok(moved)
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut inner = self.lock();
        let doomed: Vec<(u64, EventId)> = inner
            .events
            .iter()
            .filter(|(_, r)| matches!(r.status, Status::Delivered(at) | Status::Discarded(at) if at < before))
            .take(limit)
            .map(|(seq, r)| (*seq, r.env.id))
            .collect();
        for (seq, id) in &doomed {
            inner.events.remove(seq);
            inner.by_id.remove(id);
        }
        Ok(doomed.len() as u64)
    }
}

#[cfg_attr(not(target_arch = "wasm32"), async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait(?Send))]
impl InboxStore for MemoryStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        Ok(self.lock().inbox.contains_key(&(consumer.clone(), origin.clone(), id)))
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut inner = self.lock();
        let doomed: Vec<_> =
            inner.inbox.iter().filter(|(_, at)| **at < before).take(limit).map(|(k, _)| k.clone()).collect();
        for k in &doomed {
            inner.inbox.remove(k);
        }
        Ok(doomed.len() as u64)
    }
}

impl DurableStore for MemoryStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("memory", false)
            .survives_reopen(self.reopenable)
            .limits(self.limits)
            .delivery_info(true)
    }
}
