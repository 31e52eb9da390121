//! [`SqliteStore`] and the store traits: each call checks its input and
//! runs on the worker thread.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outbox_core::rules::{check_lease, check_ttl};
use outbox_core::{
    ActorId, Attempt, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore,
    DurableStore, Envelope, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore, Limits, Result,
    StateSnapshot, StateStore, StoreStats, Timestamp, async_trait,
};

use crate::leader::LockFile;
use crate::options::{SqliteOptions, Synchronous};
use crate::worker::{GroupCommitStats, WorkerHandle};

/// The outbox store on a SQLite file.
///
/// One background thread owns the write connection. Concurrent commits are
/// coalesced into one transaction and one fsync (group commit), each in its
/// own savepoint so a failing member (a version conflict, a duplicate)
/// rolls back alone. Each caller returns only after the transaction holding
/// its commit is durable.
///
/// Leadership: the flusher role is an OS lock that follows the database
/// file (on Linux a `flock` on the file itself, whatever path, symbolic or
/// hard link it was opened by) plus an epoch row in the file; another store
/// or process can commit to the same file but cannot lead while the lock is
/// held. Fencing is by epoch, checked inside every delivery transaction.
///
/// A row that does not decode is quarantined by the claim that meets it
/// (a dead letter whose `last_error` starts with `corrupted: `); the other
/// rows keep flowing.
///
/// Dropping the store closes the file: queued work finishes, the
/// connection closes (and checkpoints), then the leadership lock is
/// released.
pub struct SqliteStore {
    // Declared (so dropped) before `lock`: the connection closes before
    // the leadership lock goes.
    pub(crate) worker: WorkerHandle,
    lock: LockFile,
    pub(crate) path: PathBuf,
    pub(crate) limits: Limits,
    synchronous: Synchronous,
    /// Opened with [`SqliteOptions::read_only`]: every write is refused.
    read_only: bool,
    /// Called back after enlisted commits (`enlist.rs`).
    pub(crate) listeners: std::sync::Arc<crate::enlist::Listeners>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl SqliteStore {
    /// Opens the store at `path` with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteOptions::new(path.as_ref()).open()
    }

    /// Options for the file at `path`.
    pub fn options(path: impl Into<PathBuf>) -> SqliteOptions {
        SqliteOptions::new(path)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How many transactions the commits so far took.
    pub fn group_commit_stats(&self) -> GroupCommitStats {
        self.worker.group_commit_stats()
    }

    /// The store on `path`, served by `worker`.
    pub(crate) fn new(
        worker: WorkerHandle,
        lock: LockFile,
        path: PathBuf,
        limits: Limits,
        synchronous: Synchronous,
        read_only: bool,
    ) -> Self {
        SqliteStore { worker, lock, path, limits, synchronous, read_only, listeners: Default::default() }
    }

    /// Whether the store was opened with [`SqliteOptions::read_only`].
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Refuses `operation` with `PermissionDenied` on a read-only store,
    /// before anything (the leadership lock file included) is touched.
    pub(crate) fn writable(&self, operation: &str) -> Result<()> {
        if self.read_only {
            return Err(outbox_core::Error::PermissionDenied {
                message: format!("{operation}: {} was opened read-only", self.path.display()),
                source: None,
            });
        }
        Ok(())
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        self.writable("commit")?;
        commit.validate(&self.limits)?;
        let headers =
            commit.events.iter().map(|e| serde_json::to_string(&e.headers)).collect::<Result<Vec<_>, _>>()?;
        self.worker.commit(commit, headers).await
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let actor = actor.clone();
        self.worker.call(move |w| w.load_state(&actor)).await
    }
}

#[async_trait]
impl LeaderStore for SqliteStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        self.writable("acquire leadership")?;
        check_ttl(ttl)?;
        if !self.lock.take()? {
            return Ok(None);
        }
        let holder = holder.to_owned();
        self.worker.call(move |w| w.acquire(&holder, ttl)).await
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        check_ttl(ttl)?;
        let grant = grant.clone();
        self.worker.call(move |w| w.renew(&grant, ttl)).await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let grant = grant.clone();
        if self.worker.call(move |w| w.release_leadership(&grant)).await? {
            self.lock.release();
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        check_lease(&request)?;
        let grant = grant.clone();
        self.worker.call(move |w| w.claim(&grant, request)).await
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.worker.call(move |w| w.ack(&grant, &ids)).await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.worker.call(move |w| w.release_events(&grant, &ids)).await
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
        self.worker.call(move |w| w.retry_later(&grant, id, at, &error, attempt)).await
    }

    async fn retry_now(&self, grant: &LeaderGrant) -> Result<u64> {
        let grant = grant.clone();
        self.worker.call(move |w| w.retry_now(&grant)).await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.worker.call(move |w| w.dead_letter(&grant, id, &error)).await
    }
}

#[async_trait]
impl InspectStore for SqliteStore {
    async fn stats(&self) -> Result<StoreStats> {
        self.worker.call(|w| w.stats()).await
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.worker.call(move |w| w.list("pending", limit)).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.worker.call(move |w| w.list("dead", limit)).await
    }

    async fn delivery_info(&self, id: EventId) -> Result<Option<outbox_core::DeliveryInfo>> {
        self.worker.call(move |w| w.delivery_info(id)).await
    }

    async fn list_by_status(&self, status: outbox_core::EventStatus, limit: usize) -> Result<Vec<Envelope>> {
        // The statuses' names are the `status` column's values.
        self.worker.call(move |w| w.list(status.as_str(), limit)).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.writable("requeue")?;
        let ids = ids.to_vec();
        self.worker.call(move |w| w.requeue_dead(&ids)).await
    }

    async fn discard_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.writable("discard")?;
        let ids = ids.to_vec();
        self.worker.call(move |w| w.discard_dead(&ids)).await
    }

    async fn skip_dead(&self, ids: &[EventId]) -> Result<u64> {
        self.writable("skip")?;
        let ids = ids.to_vec();
        self.worker.call(move |w| w.skip_dead(&ids)).await
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.writable("prune")?;
        self.worker.call(move |w| w.prune_delivered(before, limit)).await
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        let (consumer, origin) = (consumer.clone(), origin.clone());
        self.worker.call(move |w| w.is_processed(&consumer, &origin, id)).await
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.writable("prune the inbox")?;
        self.worker.call(move |w| w.prune_inbox(before, limit)).await
    }
}

impl DurableStore for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("sqlite", true).multi_process(true).limits(self.limits).delivery_info(true)
    }
}
