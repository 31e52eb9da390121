use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::oneshot;
use outbox_core::{
    ActorId, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore, DurableStore,
    Envelope, Epoch, Error, EventId, Headers, InboxStore, InspectStore, LeaderGrant, LeaderStore, Limits,
    OrderingKey, Payload, PayloadKind, Result, SharedClock, StateSnapshot, StateStore, StoreStats,
    SystemClock, Timestamp, Version, async_trait,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior, params};

use crate::error::{is_unique_violation, map};
use crate::schema;

/// SQLite's `synchronous` setting for the outbox file.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Synchronous {
    /// Every commit is fsynced before it returns: a commit that returned
    /// survives power loss. The default.
    #[default]
    Full,
    /// WAL is fsynced at checkpoints only: a commit that returned survives
    /// a crash of the process, but the last commits before a power loss or
    /// OS crash may be lost (never half-applied). Several times faster per
    /// single commit; group commit narrows the gap.
    Normal,
}

/// How to open a [`SqliteStore`].
#[derive(Clone)]
pub struct SqliteOptions {
    path: PathBuf,
    synchronous: Synchronous,
    clock: SharedClock,
    limits: Limits,
    busy_timeout: Duration,
    max_batch: usize,
    max_size_bytes: Option<u64>,
}

impl fmt::Debug for SqliteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteOptions")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .field("limits", &self.limits)
            .field("busy_timeout", &self.busy_timeout)
            .field("max_batch", &self.max_batch)
            .field("max_size_bytes", &self.max_size_bytes)
            .finish()
    }
}

impl SqliteOptions {
    /// Options for the file at `path`, with the defaults: `synchronous =
    /// FULL`, the system clock, default limits, 5 s busy timeout, up to 256
    /// commits per group commit, no size cap.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous: Synchronous::Full,
            clock: SystemClock::shared(),
            limits: Limits::default(),
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            max_size_bytes: None,
        }
    }

    /// Sets `synchronous` (see [`Synchronous`]).
    pub fn synchronous(mut self, s: Synchronous) -> Self {
        self.synchronous = s;
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the commit limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long a write waits for another process's write lock before
    /// failing with a retryable `Unavailable`.
    pub fn busy_timeout(mut self, d: Duration) -> Self {
        self.busy_timeout = d;
        self
    }

    /// Most commits coalesced into one transaction (at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Caps the file's size; a commit that would grow it past the cap fails
    /// with `QuotaExceeded` and writes nothing (as a full disk does).
    pub fn max_size_bytes(mut self, bytes: u64) -> Self {
        self.max_size_bytes = Some(bytes);
        self
    }

    /// Opens (creating if needed, migrating if older) the store.
    pub fn open(self) -> Result<SqliteStore> {
        SqliteStore::open_with(self)
    }
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

#[derive(Debug, Default)]
struct Counts {
    transactions: AtomicU64,
    commits: AtomicU64,
}

/// How much group commit coalesced, since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GroupCommitStats {
    /// Commit transactions (fsyncs) run.
    pub transactions: u64,
    /// `put_state_and_events` calls they carried, failed members included.
    pub commits: u64,
}

enum Msg {
    Commit(Member),
    Job(Job),
}

struct Member {
    commit: Commit,
    headers: Vec<String>,
    reply: oneshot::Sender<Result<CommitReceipt>>,
}

/// The outbox store on a SQLite file.
///
/// One background thread owns the write connection. Concurrent commits are
/// coalesced into one transaction and one fsync (group commit), each in its
/// own savepoint so a failing member (a version conflict, a duplicate)
/// rolls back alone. Each caller returns only after the transaction holding
/// its commit is durable.
///
/// Leadership: the flusher role is an OS file lock on `<path>.lock` plus an
/// epoch row in the file; a second process can commit to the same file but
/// cannot lead while the lock is held. Fencing is by epoch, checked inside
/// every delivery transaction.
pub struct SqliteStore {
    tx: Mutex<Option<Sender<Msg>>>,
    worker: Option<std::thread::JoinHandle<()>>,
    counts: Arc<Counts>,
    path: PathBuf,
    lock_path: PathBuf,
    lock: Mutex<Option<File>>,
    limits: Limits,
    synchronous: Synchronous,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("synchronous", &self.synchronous)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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
        GroupCommitStats {
            transactions: self.counts.transactions.load(Ordering::Relaxed),
            commits: self.counts.commits.load(Ordering::Relaxed),
        }
    }

    fn open_with(o: SqliteOptions) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(&o.path, flags).map_err(|e| map("open", e))?;
        conn.busy_timeout(o.busy_timeout).map_err(|e| map("set busy timeout", e))?;
        // Refuse a newer or foreign file before any pragma changes it.
        let found = schema::read_version(&conn)?;
        if found > schema::SCHEMA_VERSION {
            return Err(Error::SchemaTooNew { found, supported: schema::SCHEMA_VERSION });
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| map("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::Unavailable {
                message: format!("sqlite refused WAL mode (got {mode})"),
                source: None,
            });
        }
        let sync = match o.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(|e| map("set synchronous", e))?;
        schema::migrate(&mut conn)?;
        let cap_pages = match o.max_size_bytes {
            Some(bytes) => {
                let page: i64 = conn
                    .pragma_query_value(None, "page_size", |r| r.get(0))
                    .map_err(|e| map("page size", e))?;
                Some((i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(512)).max(1))
            }
            None => None,
        };
        let (tx, rx) = channel();
        let counts = Arc::new(Counts::default());
        let worker = Worker {
            conn,
            clock: o.clock.clone(),
            granted: None,
            counts: counts.clone(),
            cap_pages,
            capped: None,
        };
        let max_batch = o.max_batch;
        let handle = std::thread::Builder::new()
            .name("outbox-sqlite".into())
            .spawn(move || run(worker, rx, max_batch))
            .map_err(|e| Error::Internal {
                message: "cannot start the sqlite worker".into(),
                source: Some(Box::new(e)),
            })?;
        let mut lock_path = o.path.clone().into_os_string();
        lock_path.push(".lock");
        Ok(SqliteStore {
            tx: Mutex::new(Some(tx)),
            worker: Some(handle),
            counts,
            path: o.path,
            lock_path: lock_path.into(),
            lock: Mutex::new(None),
            limits: o.limits,
            synchronous: o.synchronous,
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        lock(&self.tx).as_ref().ok_or(()).and_then(|tx| tx.send(msg).map_err(|_| ())).map_err(|()| {
            Error::Unavailable { message: "the sqlite worker has stopped".into(), source: None }
        })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Job(Box::new(move |w| {
            let _ = reply.send(f(w));
        })))?;
        rx.await.map_err(|_| Error::Unavailable {
            message: "the sqlite worker stopped mid-call".into(),
            source: None,
        })?
    }

    /// Takes the OS file lock if this handle does not hold it: `false` if
    /// another handle or process does.
    fn take_file_lock(&self) -> Result<bool> {
        let mut held = lock(&self.lock);
        if held.is_some() {
            return Ok(true);
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| io_error("open the leadership lock file", e))?;
        match file.try_lock() {
            Ok(()) => {
                *held = Some(file);
                Ok(true)
            }
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(io_error("lock the leadership lock file", e)),
        }
    }
}

impl Drop for SqliteStore {
    /// Closes the file: queued work finishes, the connection closes (and
    /// checkpoints), the leadership lock is released.
    fn drop(&mut self) {
        drop(lock(&self.tx).take());
        if let Some(h) = self.worker.take() {
            let _ = h.join();
        }
    }
}

fn io_error(what: &str, e: std::io::Error) -> Error {
    let message = format!("{what}: {e}");
    match e.kind() {
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
            Error::PermissionDenied { message, source: Some(Box::new(e)) }
        }
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded => {
            Error::QuotaExceeded { message, source: Some(Box::new(e)) }
        }
        _ => Error::Unavailable { message, source: Some(Box::new(e)) },
    }
}

/// How long the worker polls for the next request before it sleeps: a
/// caller committing in a loop sends its next commit within microseconds,
/// and catching it without a sleep/wake-up pair saves more than the poll
/// costs.
const SPIN: Duration = Duration::from_micros(250);

/// The next request, polling for [`SPIN`] before blocking; `None` once
/// every sender is gone.
fn recv_spinning(rx: &Receiver<Msg>) -> Option<Msg> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}

/// The worker thread: runs jobs in order, coalescing runs of commits.
fn run(mut w: Worker, rx: Receiver<Msg>, max_batch: usize) {
    let mut next: Option<Msg> = None;
    loop {
        let msg = match next.take() {
            Some(m) => m,
            None => match recv_spinning(&rx) {
                Some(m) => m,
                None => return,
            },
        };
        match msg {
            Msg::Job(job) => job(&mut w),
            Msg::Commit(first) => {
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(Msg::Commit(m)) => batch.push(m),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                }
                w.commit_batch(batch);
            }
        }
    }
}

pub(crate) struct Worker {
    conn: Connection,
    clock: SharedClock,
    /// The epoch this handle granted last and has not released.
    granted: Option<u64>,
    counts: Arc<Counts>,
    /// The size cap in pages, for commits only: delivery and pruning get
    /// headroom above it, so a full outbox can still drain.
    cap_pages: Option<i64>,
    /// Whether the cap (rather than the headroom) is in force now; `None`
    /// before the first write.
    capped: Option<bool>,
}

const ENVELOPE_COLS: &str = "id, origin, key, event_type, payload_kind, payload, headers, schema_version, \
                             created_at, attempts, next_attempt_at, last_error";

fn envelope(r: &Row<'_>) -> rusqlite::Result<Result<Envelope>> {
    envelope_at(r, 0)
}

/// Decodes [`ENVELOPE_COLS`] starting at column `at`.
fn envelope_at(r: &Row<'_>, at: usize) -> rusqlite::Result<Result<Envelope>> {
    let id: Vec<u8> = r.get(at)?;
    let origin: String = r.get(at + 1)?;
    let key: String = r.get(at + 2)?;
    let event_type: String = r.get(at + 3)?;
    let kind: String = r.get(at + 4)?;
    let payload: Vec<u8> = r.get(at + 5)?;
    let headers: String = r.get(at + 6)?;
    let schema_version: i64 = r.get(at + 7)?;
    let created_at: i64 = r.get(at + 8)?;
    let attempts: i64 = r.get(at + 9)?;
    let next_attempt_at: i64 = r.get(at + 10)?;
    let last_error: Option<String> = r.get(at + 11)?;
    Ok((|| {
        let bytes: [u8; 16] = id.as_slice().try_into().map_err(|_| corrupt("event id is not 16 bytes"))?;
        let headers: Headers =
            serde_json::from_str(&headers).map_err(|e| Error::corrupted("event headers", e))?;
        Ok(Envelope {
            id: EventId::from_bytes(bytes),
            origin: ActorId::new(origin).map_err(|e| Error::corrupted("event origin", e))?,
            key: OrderingKey::new(key).map_err(|e| Error::corrupted("event key", e))?,
            event_type,
            payload: Payload::from_stored(PayloadKind::parse(&kind)?, payload)?,
            headers,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| corrupt("schema version out of range"))?,
            created_at: Timestamp::from_millis(created_at),
            attempts: u32::try_from(attempts).map_err(|_| corrupt("attempts out of range"))?,
            next_attempt_at: Timestamp::from_millis(next_attempt_at),
            last_error,
        })
    })())
}

/// `[a,b,c]`: a JSON array of already-encoded items, for `json_each`.
fn json_list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let mut s = String::from("[");
    for (i, item) in items.enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&item.to_string());
    }
    s.push(']');
    s
}

fn corrupt(message: &str) -> Error {
    Error::Corrupted { message: message.into(), source: None }
}

fn to_i64(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::invalid_input(format!("{what} {v} is out of range")))
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// Writes one commit; on `Err` the caller rolls back.
fn apply(c: &Connection, m: &Member, now: i64) -> Result<Option<Version>> {
    let commit = &m.commit;
    let mut version = None;
    if let Some(s) = &commit.state {
        let new = s.expected_version.next();
        let (new_v, expected_v) = (to_i64(new.0, "version")?, to_i64(s.expected_version.0, "version")?);
        let changed = if s.expected_version == Version::NONE {
            c.prepare_cached(
                "INSERT INTO outbox_state (actor, version, snapshot, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (actor) DO NOTHING",
            )
            .and_then(|mut st| st.execute(params![s.actor.as_str(), new_v, s.snapshot, now]))
        } else {
            c.prepare_cached(
                "UPDATE outbox_state SET version = ?2, snapshot = ?3, updated_at = ?4 WHERE actor = ?1 AND version = ?5",
            )
            .and_then(|mut st| {
                st.execute(params![s.actor.as_str(), new_v, s.snapshot, now, expected_v])
            })
        }
        .map_err(|e| map("write state", e))?;
        if changed == 0 {
            let actual: Option<i64> = c
                .prepare_cached("SELECT version FROM outbox_state WHERE actor = ?1")
                .and_then(|mut st| st.query_row([s.actor.as_str()], |r| r.get(0)).optional())
                .map_err(|e| map("read version", e))?;
            return Err(Error::Conflict {
                actor: s.actor.clone(),
                expected: s.expected_version,
                actual: Version(actual.unwrap_or(0) as u64),
            });
        }
        version = Some(new);
    }
    if !commit.events.is_empty() {
        let mut st = c
            .prepare_cached(
                "INSERT INTO outbox_events (id, origin, key, event_type, payload_kind, payload, headers,
                                            schema_version, created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .map_err(|e| map("prepare event insert", e))?;
        for (e, headers) in commit.events.iter().zip(&m.headers) {
            let due = e.not_before.map_or(now, |t| t.as_millis().max(now));
            st.execute(params![
                &e.id.to_bytes()[..],
                e.origin.as_str(),
                e.key.as_str(),
                e.event_type,
                e.payload.kind().as_str(),
                e.payload.as_bytes(),
                headers,
                e.schema_version,
                now,
                due
            ])
            .map_err(|err| {
                if is_unique_violation(&err) {
                    Error::DuplicateEvent { id: e.id }
                } else {
                    map("insert event", err)
                }
            })?;
        }
    }
    if !commit.inbox.is_empty() {
        let mut st = c
            .prepare_cached(
                "INSERT INTO outbox_inbox (consumer, origin, event_id, processed_at) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(|e| map("prepare inbox insert", e))?;
        for mark in &commit.inbox {
            st.execute(params![
                mark.consumer.as_str(),
                mark.origin.as_str(),
                &mark.event_id.to_bytes()[..],
                now
            ])
            .map_err(|err| {
                if is_unique_violation(&err) {
                    Error::AlreadyProcessed {
                        consumer: mark.consumer.clone(),
                        origin: mark.origin.clone(),
                        id: mark.event_id,
                    }
                } else {
                    map("insert inbox mark", err)
                }
            })?;
        }
    }
    Ok(version)
}

fn check_fence(c: &Connection, grant: &LeaderGrant) -> Result<()> {
    let (holder, epoch): (Option<String>, i64) = c
        .prepare_cached("SELECT holder, epoch FROM outbox_leader WHERE id = 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(|e| map("read leader", e))?;
    let current = holder.map(|_| Epoch(epoch as u64));
    if current != Some(grant.epoch) {
        return Err(Error::Fenced { epoch: grant.epoch, current });
    }
    Ok(())
}

/// The seq of a pending event `grant` may settle; `None` if the id is
/// unknown, delivered or dead; `Fenced` if it is held by another claim.
fn settleable(c: &Connection, grant: &LeaderGrant, id: EventId) -> Result<Option<i64>> {
    let row: Option<(i64, String, Option<i64>)> = c
        .prepare_cached("SELECT seq, status, claimed_epoch FROM outbox_events WHERE id = ?1")
        .and_then(|mut st| {
            st.query_row([&id.to_bytes()[..]], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
        })
        .map_err(|e| map("read event", e))?;
    match row {
        Some((seq, status, claimed)) if status == "pending" => {
            if claimed != Some(grant.epoch.0 as i64) {
                return Err(Error::Fenced { epoch: grant.epoch, current: claimed.map(|e| Epoch(e as u64)) });
            }
            Ok(Some(seq))
        }
        _ => Ok(None),
    }
}

impl Worker {
    fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// Puts the commit cap (`for_commit`) or the headroom above it in
    /// force; does nothing without a cap.
    fn cap(&mut self, for_commit: bool) -> Result<()> {
        let Some(cap) = self.cap_pages else { return Ok(()) };
        if self.capped != Some(for_commit) {
            let pages = if for_commit { cap } else { cap + (cap / 10).max(64) };
            self.conn
                .pragma_update(None, "max_page_count", pages)
                .map_err(|e| map("set max page count", e))?;
            self.capped = Some(for_commit);
        }
        Ok(())
    }

    fn write_tx(&mut self) -> Result<rusqlite::Transaction<'_>> {
        self.cap(false)?;
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| map("begin", e))
    }

    fn commit_batch(&mut self, batch: Vec<Member>) {
        let now = self.now();
        let single = batch.len() == 1;
        self.counts.transactions.fetch_add(1, Ordering::Relaxed);
        self.counts.commits.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let outcome = (|| -> Result<Vec<Result<Option<Version>>>> {
            self.cap(true)?;
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(|e| map("begin", e))?;
            let mut results = Vec::with_capacity(batch.len());
            if single {
                let r = apply(&tx, &batch[0], now);
                if r.is_err() {
                    // Dropping the transaction rolls it back.
                    return Ok(vec![r]);
                }
                results.push(r);
            } else {
                for m in &batch {
                    let mut sp = tx.savepoint().map_err(|e| map("savepoint", e))?;
                    let r = apply(&sp, m, now);
                    if r.is_ok() {
                        sp.commit().map_err(|e| map("release savepoint", e))?;
                    } else {
                        sp.rollback().map_err(|e| map("rollback savepoint", e))?;
                    }
                    results.push(r);
                }
            }
            tx.commit().map_err(|e| map("commit", e))?;
            Ok(results)
        })();
        let at = Timestamp::from_millis(now);
        match outcome {
            Ok(results) => {
                for (m, r) in batch.into_iter().zip(results) {
                    let _ = m.reply.send(r.map(|version| CommitReceipt { version, committed_at: at }));
                }
            }
            Err(e) => {
                for m in batch {
                    let _ = m.reply.send(Err(e.shared_failure()));
                }
            }
        }
    }

    fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        let now = self.now();
        let granted = self.granted;
        let tx = self.write_tx()?;
        let (cur_holder, epoch, expires): (Option<String>, i64, Option<i64>) = tx
            .query_row("SELECT holder, epoch, expires_at FROM outbox_leader WHERE id = 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| map("read leader", e))?;
        // A live grant of another holder made by this handle blocks; one
        // left by a handle that no longer holds the file lock (a crashed
        // process) does not.
        let live = cur_holder.as_deref().is_some_and(|h| h != holder)
            && expires.is_some_and(|t| t > now)
            && granted == Some(epoch as u64);
        if live {
            return Ok(None);
        }
        // The last grant is unreleased and was made by another handle, which
        // no longer holds the file lock: its process died (or dropped the
        // store) while leading, so nothing claimed under it is in flight
        // any more. Its leases are void: the events are claimable now, not
        // when the leases lapse (the lost attempt stays counted). A
        // released grant's leases stand, as the store contract says.
        if cur_holder.is_some() && granted != Some(epoch as u64) {
            tx.execute(
                "UPDATE outbox_events SET lease_until = NULL
                 WHERE status <> 'delivered' AND lease_until IS NOT NULL",
                [],
            )
            .map_err(|e| map("void orphaned leases", e))?;
        }
        let epoch = epoch + 1;
        let expires_at = Timestamp::from_millis(now).saturating_add(ttl);
        tx.execute(
            "UPDATE outbox_leader SET holder = ?1, epoch = ?2, expires_at = ?3 WHERE id = 1",
            params![holder, epoch, expires_at.as_millis()],
        )
        .map_err(|e| map("write leader", e))?;
        tx.commit().map_err(|e| map("commit leader", e))?;
        self.granted = Some(epoch as u64);
        Ok(Some(LeaderGrant { holder: holder.to_owned(), epoch: Epoch(epoch as u64), expires_at }))
    }

    fn renew(&mut self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(&tx, grant)?;
        let expires_at = Timestamp::from_millis(now).saturating_add(ttl);
        tx.execute("UPDATE outbox_leader SET expires_at = ?1 WHERE id = 1", [expires_at.as_millis()])
            .map_err(|e| map("renew leader", e))?;
        tx.commit().map_err(|e| map("commit renew", e))?;
        Ok(LeaderGrant { expires_at, ..grant.clone() })
    }

    /// Releases `grant` if current; says whether this handle now holds no
    /// grant (so the file lock can go).
    fn release(&mut self, grant: &LeaderGrant) -> Result<bool> {
        let tx = self.write_tx()?;
        tx.execute(
            "UPDATE outbox_leader SET holder = NULL, expires_at = NULL WHERE id = 1 AND holder IS NOT NULL AND epoch = ?1",
            [grant.epoch.0 as i64],
        )
        .map_err(|e| map("release leader", e))?;
        tx.commit().map_err(|e| map("commit release", e))?;
        if self.granted == Some(grant.epoch.0) {
            self.granted = None;
        }
        Ok(self.granted.is_none())
    }

    fn claim(&mut self, grant: &LeaderGrant, req: ClaimRequest) -> Result<Vec<Envelope>> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(&tx, grant)?;
        let mut seqs = Vec::new();
        if req.limit > 0 {
            let mut st = tx
                .prepare_cached(
                    "SELECT seq, key, status, lease_until, next_attempt_at FROM outbox_events
                     WHERE status <> 'delivered' ORDER BY seq",
                )
                .map_err(|e| map("prepare claim scan", e))?;
            let mut rows = st.query([]).map_err(|e| map("claim scan", e))?;
            let mut blocked = std::collections::HashSet::<String>::new();
            while let Some(r) = rows.next().map_err(|e| map("claim scan", e))? {
                let key: String = r.get(1).map_err(|e| map("claim scan", e))?;
                if blocked.contains(&key) {
                    continue;
                }
                let status: String = r.get(2).map_err(|e| map("claim scan", e))?;
                if status == "dead" {
                    if req.park_dead_keys {
                        blocked.insert(key);
                    }
                    continue;
                }
                let lease: Option<i64> = r.get(3).map_err(|e| map("claim scan", e))?;
                let due: i64 = r.get(4).map_err(|e| map("claim scan", e))?;
                if lease.is_some_and(|t| t > now) || due > now {
                    blocked.insert(key);
                    continue;
                }
                seqs.push(r.get::<_, i64>(0).map_err(|e| map("claim scan", e))?);
                if seqs.len() >= req.limit {
                    break;
                }
            }
        }
        let lease_until = Timestamp::from_millis(now).saturating_add(req.lease).as_millis();
        let mut out: Vec<(i64, Envelope)> = Vec::with_capacity(seqs.len());
        if !seqs.is_empty() {
            // One statement for the whole batch: the seqs go in as a JSON array.
            let mut st = tx
                .prepare_cached(&format!(
                    "UPDATE outbox_events SET attempts = attempts + 1, lease_until = ?2, claimed_epoch = ?3
                     WHERE seq IN (SELECT value FROM json_each(?1)) RETURNING seq, {ENVELOPE_COLS}"
                ))
                .map_err(|e| map("prepare claim", e))?;
            let rows = st
                .query_map(params![json_list(seqs.iter()), lease_until, grant.epoch.0 as i64], |r| {
                    Ok((r.get::<_, i64>(0)?, envelope_at(r, 1)?))
                })
                .map_err(|e| map("claim", e))?;
            for row in rows {
                let (seq, env) = row.map_err(|e| map("claim", e))?;
                out.push((seq, env?));
            }
        }
        tx.commit().map_err(|e| map("commit claim", e))?;
        // RETURNING gives no order: put the batch back in commit order.
        out.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }

    fn ack(&mut self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(&tx, grant)?;
        if !ids.is_empty() {
            // One statement for the whole batch: the ids go in as a JSON
            // array of hex strings.
            let mut acked = std::collections::HashSet::with_capacity(ids.len());
            {
                let mut st = tx
                    .prepare_cached(
                        "UPDATE outbox_events SET status = 'delivered', delivered_at = ?3, lease_until = NULL
                         WHERE id IN (SELECT unhex(value) FROM json_each(?1))
                           AND status = 'pending' AND claimed_epoch = ?2
                         RETURNING id",
                    )
                    .map_err(|e| map("prepare ack", e))?;
                let hex = json_list(ids.iter().map(|id| format!("\"{}\"", id.as_uuid().simple())));
                let rows = st
                    .query_map(params![hex, grant.epoch.0 as i64, now], |r| r.get::<_, Vec<u8>>(0))
                    .map_err(|e| map("ack", e))?;
                for row in rows {
                    acked.insert(row.map_err(|e| map("ack", e))?);
                }
            }
            // Not acked: delivered, dead or unknown (a no-op), or held by
            // another claim (fenced: the whole ack rolls back).
            for id in ids {
                if !acked.contains(&id.to_bytes()[..]) {
                    settleable(&tx, grant, *id)?;
                }
            }
        }
        tx.commit().map_err(|e| map("commit ack", e))
    }

    fn settle(
        &mut self,
        grant: &LeaderGrant,
        id: EventId,
        sql: &str,
        at: Option<i64>,
        error: &str,
    ) -> Result<()> {
        let tx = self.write_tx()?;
        check_fence(&tx, grant)?;
        if let Some(seq) = settleable(&tx, grant, id)? {
            tx.prepare_cached(sql)
                .and_then(|mut st| match at {
                    Some(at) => st.execute(params![seq, error, at]),
                    None => st.execute(params![seq, error]),
                })
                .map_err(|e| map("settle", e))?;
        }
        tx.commit().map_err(|e| map("commit settle", e))
    }

    fn stats(&mut self) -> Result<StoreStats> {
        let now = self.now();
        // Delivered rows are counted on their partial index (no table
        // scan); the undelivered ones are read in full.
        let delivered = self
            .conn
            .prepare_cached("SELECT COUNT(*) FROM outbox_events WHERE status = 'delivered'")
            .and_then(|mut st| st.query_row([], |r| r.get::<_, i64>(0)))
            .map_err(|e| map("stats", e))? as u64;
        let mut s = StoreStats { delivered, ..StoreStats::default() };
        let mut st = self
            .conn
            .prepare_cached(
                "SELECT status, COUNT(*), MIN(created_at), SUM(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END)
                 FROM outbox_events WHERE status <> 'delivered' GROUP BY status",
            )
            .map_err(|e| map("prepare stats", e))?;
        let mut rows = st.query([now]).map_err(|e| map("stats", e))?;
        while let Some(r) = rows.next().map_err(|e| map("stats", e))? {
            let status: String = r.get(0).map_err(|e| map("stats", e))?;
            let count: i64 = r.get(1).map_err(|e| map("stats", e))?;
            match status.as_str() {
                "pending" => {
                    s.pending = count as u64;
                    s.oldest_pending_at =
                        r.get::<_, Option<i64>>(2).map_err(|e| map("stats", e))?.map(Timestamp::from_millis);
                    s.in_flight =
                        r.get::<_, Option<i64>>(3).map_err(|e| map("stats", e))?.unwrap_or(0) as u64;
                }
                "dead" => s.dead = count as u64,
                other => return Err(corrupt(&format!("unknown event status {other:?}"))),
            }
        }
        Ok(s)
    }

    fn list(&mut self, status: &str, limit: usize) -> Result<Vec<Envelope>> {
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT {ENVELOPE_COLS} FROM outbox_events WHERE status = ?1 ORDER BY seq LIMIT ?2"
            ))
            .map_err(|e| map("prepare list", e))?;
        let rows = st.query_map(params![status, limit_i64(limit)], envelope).map_err(|e| map("list", e))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r.map_err(|e| map("list", e))??);
        }
        Ok(out)
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.limits)?;
        let headers =
            commit.events.iter().map(|e| serde_json::to_string(&e.headers)).collect::<Result<Vec<_>, _>>()?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Commit(Member { commit, headers, reply }))?;
        rx.await.map_err(|_| Error::Unavailable {
            message: "the sqlite worker stopped mid-commit".into(),
            source: None,
        })?
    }

    async fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let actor = actor.clone();
        self.call(move |w| {
            let row: Option<(i64, Vec<u8>, i64)> = w
                .conn
                .prepare_cached("SELECT version, snapshot, updated_at FROM outbox_state WHERE actor = ?1")
                .and_then(|mut st| {
                    st.query_row([actor.as_str()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional()
                })
                .map_err(|e| map("load state", e))?;
            Ok(row.map(|(v, bytes, at)| StateSnapshot {
                version: Version(v as u64),
                bytes,
                updated_at: Timestamp::from_millis(at),
            }))
        })
        .await
    }
}

#[async_trait]
impl LeaderStore for SqliteStore {
    async fn acquire_leadership(&self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        if !self.take_file_lock()? {
            return Ok(None);
        }
        let holder = holder.to_owned();
        self.call(move |w| w.acquire(&holder, ttl)).await
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let grant = grant.clone();
        self.call(move |w| w.renew(&grant, ttl)).await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let g = grant.clone();
        if self.call(move |w| w.release(&g)).await?
            && let Some(file) = lock(&self.lock).take()
        {
            let _ = file.unlock();
        }
        Ok(())
    }
}

#[async_trait]
impl DeliveryStore for SqliteStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        if request.lease.is_zero() {
            return Err(Error::invalid_input("claim lease must be positive"));
        }
        let grant = grant.clone();
        self.call(move |w| w.claim(&grant, request)).await
    }

    async fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.call(move |w| w.ack(&grant, &ids)).await
    }

    async fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let (grant, ids) = (grant.clone(), ids.to_vec());
        self.call(move |w| {
            let tx = w.write_tx()?;
            check_fence(&tx, &grant)?;
            for id in ids {
                if let Some(seq) = settleable(&tx, &grant, id)? {
                    tx.prepare_cached(
                        "UPDATE outbox_events SET attempts = max(attempts - 1, 0), lease_until = NULL
                         WHERE seq = ?1 AND lease_until IS NOT NULL",
                    )
                    .and_then(|mut st| st.execute([seq]))
                    .map_err(|e| map("release", e))?;
                }
            }
            tx.commit().map_err(|e| map("commit release", e))
        })
        .await
    }

    async fn retry_later(&self, grant: &LeaderGrant, id: EventId, at: Timestamp, error: &str) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.call(move |w| {
            w.settle(
                &grant,
                id,
                "UPDATE outbox_events SET next_attempt_at = ?3, last_error = ?2, lease_until = NULL WHERE seq = ?1",
                Some(at.as_millis()),
                &error,
            )
        })
        .await
    }

    async fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.call(move |w| {
            w.settle(
                &grant,
                id,
                "UPDATE outbox_events SET status = 'dead', last_error = ?2, lease_until = NULL WHERE seq = ?1",
                None,
                &error,
            )
        })
        .await
    }
}

#[async_trait]
impl InspectStore for SqliteStore {
    async fn stats(&self) -> Result<StoreStats> {
        self.call(|w| w.stats()).await
    }

    async fn list_pending(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call(move |w| w.list("pending", limit)).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call(move |w| w.list("dead", limit)).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.call(move |w| {
            let now = w.now();
            let tx = w.write_tx()?;
            let mut moved = 0;
            for id in &ids {
                moved += tx
                    .prepare_cached(
                        "UPDATE outbox_events SET status = 'pending', attempts = 0, next_attempt_at = ?2,
                         claimed_epoch = NULL, lease_until = NULL WHERE id = ?1 AND status = 'dead'",
                    )
                    .and_then(|mut st| st.execute(params![&id.to_bytes()[..], now]))
                    .map_err(|e| map("requeue", e))? as u64;
            }
            tx.commit().map_err(|e| map("commit requeue", e))?;
            Ok(moved)
        })
        .await
    }

    async fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.call(move |w| {
            w.cap(false)?;
            let n = w
                .conn
                .execute(
                    "DELETE FROM outbox_events WHERE seq IN (
                         SELECT seq FROM outbox_events WHERE status = 'delivered' AND delivered_at < ?1
                         ORDER BY delivered_at LIMIT ?2)",
                    params![before.as_millis(), limit_i64(limit)],
                )
                .map_err(|e| map("prune delivered", e))?;
            Ok(n as u64)
        })
        .await
    }
}

#[async_trait]
impl InboxStore for SqliteStore {
    async fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        let (consumer, origin) = (consumer.clone(), origin.clone());
        self.call(move |w| {
            w.conn
                .prepare_cached(
                    "SELECT 1 FROM outbox_inbox WHERE consumer = ?1 AND origin = ?2 AND event_id = ?3",
                )
                .and_then(|mut st| st.exists(params![consumer.as_str(), origin.as_str(), &id.to_bytes()[..]]))
                .map_err(|e| map("read inbox", e))
        })
        .await
    }

    async fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        self.call(move |w| {
            w.cap(false)?;
            let n = w
                .conn
                .execute(
                    "DELETE FROM outbox_inbox WHERE rowid IN (
                         SELECT rowid FROM outbox_inbox WHERE processed_at < ?1 ORDER BY processed_at LIMIT ?2)",
                    params![before.as_millis(), limit_i64(limit)],
                )
                .map_err(|e| map("prune inbox", e))?;
            Ok(n as u64)
        })
        .await
    }
}

impl DurableStore for SqliteStore {
    fn capabilities(&self) -> Capabilities {
        Capabilities::new("sqlite", true).multi_process(true).limits(self.limits)
    }
}
