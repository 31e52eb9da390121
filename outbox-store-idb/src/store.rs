//! [`IdbStore`] and the store traits: each call checks its input and runs
//! one transaction (see the job modules: `commit`, `delivery`, `leader`,
//! `inspect`, `inbox`).

use std::cell::{Cell, RefCell};
use std::fmt;
use std::time::Duration;

use indexed_db_futures::database::Database;
use outbox_core::rules::{check_lease, check_ttl};
use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore, LeadershipMode,
    Limits, Result, SharedClock, StateSnapshot, StateStore, StoreStats, Timestamp, async_trait,
};

use crate::codec::Status;
use crate::error::{map, map_open};
use crate::options::{Durability, IdbOptions};
use crate::platform::{Channel, channel_name};
use crate::tx::Db;
use crate::{commit, delivery, inbox, inspect, leader};

/// The outbox in IndexedDB: state, events, inbox marks and leadership in
/// one database, each commit one `readwrite` transaction over the object
/// stores it touches.
///
/// Every request of a transaction is an IndexedDB request: values are
/// encoded before the transaction opens, so it never awaits anything else
/// (which would let the browser auto-commit it half done). On any request
/// error the transaction is dropped, which aborts it: nothing of a failed
/// commit is written.
///
/// After each commit with events the store posts on the
/// `BroadcastChannel` [`channel_name`]`(db)`, so the forwarder leading in
/// any tab or worker of the origin wakes at once.
pub struct IdbStore {
    db: Db,
    name: String,
    clock: SharedClock,
    limits: Limits,
    persisted: Option<bool>,
    /// Where commits are announced to the leader tab.
    commits: Option<Channel>,
    /// The epoch of the last grant this handle made (0: none).
    granted: Cell<u64>,
    /// Exclusive claims held in memory ([`delivery::Inflight`]).
    inflight: RefCell<delivery::Inflight>,
}

impl fmt::Debug for IdbStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdbStore")
            .field("name", &self.name)
            .field("durability", &self.db.durability)
            .field("persisted", &self.persisted)
            .finish_non_exhaustive()
    }
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        // Close now (not when the JS object is collected), so a reopen or
        // an upgrade elsewhere is not blocked by this handle.
        self.db.db.clone().close();
    }
}

impl IdbStore {
    /// The store on the opened database `db`.
    pub(crate) fn new(db: Database, opts: IdbOptions, persisted: Option<bool>) -> IdbStore {
        IdbStore {
            commits: Channel::open(&channel_name(&opts.name)),
            db: Db { db, durability: opts.durability },
            name: opts.name,
            clock: opts.clock,
            limits: opts.limits,
            persisted,
            granted: Cell::new(0),
            inflight: RefCell::new(delivery::Inflight::default()),
        }
    }

    /// Opens the database `name` with default options (strict durability,
    /// system clock).
    pub async fn open(name: &str) -> Result<IdbStore> {
        IdbOptions::new(name).open().await
    }

    /// Options for the database `name`.
    pub fn options(name: impl Into<String>) -> IdbOptions {
        IdbOptions::new(name)
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The durability hint of writing transactions.
    pub fn durability(&self) -> Durability {
        self.db.durability
    }

    /// Whether the browser granted persistent storage
    /// (`navigator.storage.persisted()`) when the store was opened: `true`
    /// means the data is not evicted under storage pressure; `None` where
    /// the Storage API is missing. Ask for it with
    /// `navigator.storage.persist()` (a user-visible permission in some
    /// browsers).
    pub fn persisted(&self) -> Option<bool> {
        self.persisted
    }

    /// Deletes the database `name` (every tab must have closed it).
    pub async fn delete(name: &str) -> Result<()> {
        Database::delete_by_name(name).map_err(map_open)?.await.map_err(|e| map("delete database", e))
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }
}

impl IdbStore {
    /// Posts on the commit channel when an operator's change (requeue,
    /// discard, skip) changed `n > 0` events: what it freed is due now,
    /// in whichever tab or worker forwards.
    fn announced(&self, n: Result<u64>) -> Result<u64> {
        if let (Ok(1..), Some(ch)) = (&n, &self.commits) {
            ch.post("changed");
        }
        n
    }
}

#[async_trait(?Send)]
impl StateStore for IdbStore {
    async fn put_state_and_events(&self, c: Commit) -> Result<CommitReceipt> {
        let has_events = !c.events.is_empty();
        let receipt = commit::commit(&self.db, self.now(), &self.limits, c).await?;
        if has_events && let Some(ch) = &self.commits {
            ch.post("commit");
        }
        Ok(receipt)
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        commit::load_state(&self.db, actor).await
    }
}

#[async_trait(?Send)]
impl LeaderStore for IdbStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        check_ttl(ttl)?;
        let grant = leader::acquire(&self.db, self.now(), holder, ttl, self.granted.get()).await?;
        if let Some(g) = &grant {
            self.granted.set(g.epoch.0);
        }
        Ok(grant)
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        check_ttl(ttl)?;
        leader::renew(&self.db, self.now(), grant, ttl).await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        leader::release(&self.db, grant).await
    }
}

#[async_trait(?Send)]
impl DeliveryStore for IdbStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        check_lease(&request)?;
        delivery::claim(&self.db, self.now(), grant, &request, &self.inflight).await
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        if delivery::ack_batch(&self.db, now, grant, ids, &self.inflight).await? {
            return Ok(());
        }
        delivery::settle(
            &self.db,
            self.now(),
            "ack",
            grant,
            ids,
            |row| {
                row.set_status(Status::Delivered(now));
                row.end_lease();
            },
            &self.inflight,
        )
        .await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        delivery::settle(
            &self.db,
            self.now(),
            "release",
            grant,
            ids,
            |row| {
                if row.lease_until().is_some() {
                    let env = row.env_mut();
                    env.attempts = env.attempts.saturating_sub(1);
                    row.end_lease();
                }
            },
            &self.inflight,
        )
        .await
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        delivery::settle(
            &self.db,
            self.now(),
            "retry later",
            grant,
            &[id],
            |row| {
                // Uncounted: take back the attempt the claim counted (as
                // `release` does), if the event is claimed.
                let take_back = attempt == Attempt::Uncounted && row.lease_until().is_some();
                let env = row.env_mut();
                if take_back {
                    env.attempts = env.attempts.saturating_sub(1);
                }
                env.next_attempt_at = at;
                env.last_error = Some(error.to_owned());
                row.end_lease();
            },
            &self.inflight,
        )
        .await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        delivery::retry_now(&self.db, self.now(), grant).await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        delivery::settle(
            &self.db,
            self.now(),
            "dead letter",
            grant,
            &[id],
            |row| {
                row.set_status(Status::Dead { skipped: false });
                row.env_mut().last_error = Some(error.to_owned());
                row.end_lease();
            },
            &self.inflight,
        )
        .await
    }
}

#[async_trait(?Send)]
impl InspectStore for IdbStore {
    async fn stats(&self) -> Result<StoreStats> {
        inspect::stats(&self.db, self.now()).await
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        inspect::list(&self.db, self.now(), false, limit).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        inspect::list(&self.db, self.now(), true, limit).await
    }

    async fn list_by_status(&self, status: outbox_core::EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        use crate::schema::{DELIVERED, DISCARDED};
        match status {
            outbox_core::EventStatus::Pending => self.list_pending(limit).await,
            outbox_core::EventStatus::Dead => self.list_dead(limit).await,
            outbox_core::EventStatus::Delivered => {
                inspect::list_settled(&self.db, self.now(), DELIVERED, limit).await
            }
            _ => inspect::list_settled(&self.db, self.now(), DISCARDED, limit).await,
        }
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.announced(inspect::requeue_dead(&self.db, self.now(), ids).await)
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.announced(inspect::discard_dead(&self.db, self.now(), ids).await)
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.announced(inspect::skip_dead(&self.db, self.now(), ids).await)
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        inspect::prune_delivered(&self.db, before, limit).await
    }
}

#[async_trait(?Send)]
impl InboxStore for IdbStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        inbox::is_processed(&self.db, consumer, origin, id).await
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        inbox::prune_inbox(&self.db, before, limit).await
    }
}

impl DurableStore for IdbStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("indexeddb", true)
            .leadership(LeadershipMode::Exclusive)
            .limits(self.limits)
            .persistent(self.persisted)
    }
}
