//! [`SledStore`] and the store traits: each call is a job for the worker
//! thread ([`worker`](crate::worker)), where every read and write runs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::oneshot;
use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, Error, EventId, EventStatus, InboxStore, InspectStore, LeaderGrant, LeaderStore,
    Limits, Result, StateSnapshot, StateStore, StoreStats, Timestamp, async_trait, rules,
};

use crate::error::SledError;
use crate::options::{FlushPolicy, SledOptions};
use crate::schema::{DELIVERED, DISCARDED};
use crate::worker::{Counts, Finish, Job, Msg, Worker};

/// How much the shared flush coalesced, since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct FlushStats {
    /// Flushes done for writes.
    pub flushes: u64,
    /// Commits made durable by them.
    pub commits: u64,
}

/// The outbox store on a sled database.
///
/// One background thread owns the database. It applies each operation in
/// ONE multi-tree sled transaction (a commit writes the state, its events,
/// their index entries and its inbox marks together), then makes every
/// write of the batch durable with one flush and one fsync of sled's log
/// before any of them returns (group commit; sled's flush alone does not
/// survive a power loss: see the crate's Durability section). Operations
/// never share a transaction, so a failing commit (a version conflict, a
/// duplicate) fails alone.
///
/// # Leadership and fencing
///
/// sled takes an exclusive OS lock on its directory: one handle, in one
/// process, has the database open at a time, so the flusher role only has
/// to be arbitrated among the users of that handle. Grants live in the
/// handle; the last epoch is persisted (and flushed) before a grant is
/// returned, so epochs grow across restarts. A process that dies loses its
/// lock with it; the next opener starts with no leader, and if the dead
/// handle still held a grant, the leases it held are voided at open (its
/// batch is claimable at once); leases under a released grant stand.
/// Every delivery operation checks its grant's epoch on the worker thread,
/// where all writes run.
///
/// # Layout
///
/// Trees `outbox.state` (actor → version, time, snapshot), `outbox.events`
/// (commit sequence → event row), `outbox.ids` (event id → sequence),
/// `outbox.pending` (sequence → key, due time, lease: the claim index, so
/// a claim scans pending events only, in commit order), `outbox.dead`,
/// `outbox.delivered` ((time, sequence), for pruning by range),
/// `outbox.inbox` and `outbox.inbox_time`, `outbox.skipped` and
/// `outbox.discarded`, `outbox.quarantine` (rows that do not decode,
/// moved to the dead letters with their bytes kept), and `outbox.meta`
/// with the layout version ([`LAYOUT_VERSION`](crate::LAYOUT_VERSION)). A
/// newer layout is refused.
pub struct SledStore {
    tx: Mutex<Option<Sender<Msg>>>,
    worker: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
    path: PathBuf,
    limits: Limits,
    flush: FlushPolicy,
    /// Opened with [`SledOptions::read_only`]: the private copy it reads,
    /// removed on drop; every write is refused.
    scratch: Option<PathBuf>,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("flush", &self.flush)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SledStore {
    /// Opens the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SledOptions::new(path.as_ref()).open()
    }

    /// Options for the database directory at `path`.
    pub fn options(path: impl Into<PathBuf>) -> SledOptions {
        SledOptions::new(path)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many flushes the writes so far took.
    pub fn flush_stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.counts.flushes.load(Ordering::Relaxed),
            commits: self.counts.commits.load(Ordering::Relaxed),
        }
    }

    /// The store over a started worker.
    pub(crate) fn new(tx: Sender<Msg>, worker: JoinHandle<()>, counts: Arc<Counts>, o: SledOptions) -> Self {
        SledStore {
            tx: Mutex::new(Some(tx)),
            worker: Some(worker),
            counts,
            path: o.path,
            limits: o.limits,
            flush: o.flush,
            scratch: None,
        }
    }

    /// This store made read-only, over its private copy at `scratch`.
    pub(crate) fn read_only_over(mut self, scratch: PathBuf) -> Self {
        self.scratch = Some(scratch);
        self
    }

    /// Whether the store was opened with [`SledOptions::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.scratch.is_some()
    }

    /// `PermissionDenied` on a read-only store.
    fn writable(&self) -> Result<()> {
        match self.scratch {
            Some(_) => Err(Error::PermissionDenied {
                message: format!("the sled database at {} was opened read-only", self.path.display()),
                source: None,
            }),
            None => Ok(()),
        }
    }

    fn send(&self, msg: Msg) -> Result<()> {
        lock(&self.tx)
            .as_ref()
            .ok_or(())
            .and_then(|tx| tx.send(msg).map_err(|_| ()))
            .map_err(|()| SledError::WorkerStopped { message: "the sled worker has stopped" }.into())
    }

    /// Runs `f` on the worker; `writes` makes its `Ok` wait for the flush.
    async fn call<T: Send + 'static>(
        &self,
        writes: bool,
        f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        if writes {
            self.writable()?;
        }
        let (reply, rx) = oneshot::channel();
        let job: Job = Box::new(move |w: &mut Worker| {
            let r = match &w.failed {
                Some(e) => Err(e.shared_failure()),
                None => f(w),
            };
            Finish {
                needs_flush: writes && r.is_ok(),
                commit: false,
                deliver: Box::new(move |flush_error| {
                    let _ = reply.send(match flush_error {
                        Some(e) => Err(e),
                        None => r,
                    });
                }),
            }
        });
        self.send(Msg::Job(job))?;
        rx.await.map_err(|_| {
            Error::from(SledError::WorkerStopped { message: "the sled worker stopped mid-call" })
        })?
    }
}

impl Drop for SledStore {
    /// Closes the database: queued work finishes, the worker flushes and
    /// exits, sled's directory lock is released.
    fn drop(&mut self) {
        drop(lock(&self.tx).take());
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
        if let Some(scratch) = self.scratch.take() {
            let _ = std::fs::remove_dir_all(scratch);
        }
    }
}

#[async_trait]
impl StateStore for SledStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        self.writable()?;
        commit.validate(&self.limits)?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Commit(commit, reply))?;
        rx.await.map_err(|_| {
            Error::from(SledError::WorkerStopped { message: "the sled worker stopped mid-commit" })
        })?
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let actor = actor.clone();
        self.call(false, move |w| w.load_state(&actor)).await
    }
}

#[async_trait]
impl LeaderStore for SledStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        rules::check_ttl(ttl)?;
        let holder = holder.to_owned();
        self.call(true, move |w| w.acquire(&holder, ttl)).await
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        rules::check_ttl(ttl)?;
        let grant = grant.clone();
        self.call(false, move |w| w.renew(grant, ttl)).await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let epoch = grant.epoch;
        self.call(false, move |w| w.release_leadership(epoch)).await
    }
}

#[async_trait]
impl DeliveryStore for SledStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        rules::check_lease(&request)?;
        let grant = grant.clone();
        self.call(true, move |w| w.claim(&grant, request)).await
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.call(true, move |w| w.ack(&grant, &ids)).await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.call(true, move |w| w.release(&grant, &ids)).await
    }

    async fn retry_later(
        &self,
        grant: &LeaderGrant,
        id: EventId,
        at: Timestamp,
        error: &str,
        attempt: Attempt,
    ) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.call(true, move |w| w.retry_later(&grant, id, at, &error, attempt)).await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let grant = grant.clone();
        self.call(true, move |w| w.retry_now(&grant)).await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.call(true, move |w| w.dead_letter(&grant, id, &error)).await
    }
}

#[async_trait]
impl InspectStore for SledStore {
    async fn stats(&self) -> Result<StoreStats> {
        self.call(false, |w| w.stats()).await
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call(false, move |w| w.list_pending(limit)).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call(false, move |w| w.list_dead(limit)).await
    }

    async fn delivery_info(&self, id: EventId) -> Result<Option<outbox_core::DeliveryInfo>> {
        self.call(false, move |w| w.delivery_info(id)).await
    }

    async fn list_by_status(&self, status: EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        match status {
            EventStatus::Pending => self.list_pending(limit).await,
            EventStatus::Dead => self.list_dead(limit).await,
            EventStatus::Delivered => self.call(false, move |w| w.list_settled(DELIVERED, limit)).await,
            _ => self.call(false, move |w| w.list_settled(DISCARDED, limit)).await,
        }
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.call(true, move |w| w.requeue_dead(&ids)).await
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.call(true, move |w| w.discard_dead(&ids)).await
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.call(true, move |w| w.skip_dead(&ids)).await
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.call(true, move |w| w.prune_delivered(before, limit)).await
    }
}

#[async_trait]
impl InboxStore for SledStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        let (consumer, origin) = (consumer.clone(), origin.clone());
        self.call(false, move |w| w.is_processed(&consumer, &origin, id)).await
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.call(true, move |w| w.prune_inbox(before, limit)).await
    }
}

impl DurableStore for SledStore {
    fn capabilities(&self) -> Capabilities {
        let durable = self.flush == FlushPolicy::EveryWrite;
        Capabilities::new("sled", durable).survives_reopen(true).limits(self.limits).delivery_info(true)
    }
}
