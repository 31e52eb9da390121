//! The sled store: options, the worker thread, and the store traits.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::channel::oneshot;
use outbox_core::{
    ActorId, Capabilities, ClaimRequest, Commit, CommitReceipt, ConsumerId, DeliveryStore, DurableStore,
    Envelope, Epoch, Error, EventId, InboxStore, InspectStore, LeaderGrant, LeaderStore, Limits, OrderingKey,
    Result, SharedClock, StateSnapshot, StateStore, StoreStats, SystemClock, Timestamp, Version, async_trait,
};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::codec::{
    PendingEntry, Reader, Row, Status, Writer, corrupt, decode_pending, decode_row, encode_pending,
    encode_row, inbox_key, seq_key, seq_of, seq_of_time_seq, time_bytes, time_seq_key,
};
use crate::error::{map, map_tx};

/// The on-disk layout version this build writes and understands.
pub const LAYOUT_VERSION: u32 = 1;

/// The `meta` key holding the layout version (`u32`, big-endian).
const LAYOUT_KEY: &[u8] = b"layout";
/// The `meta` key holding the last leadership epoch granted (`u64`).
const EPOCH_KEY: &[u8] = b"last_epoch";
/// The epoch of a grant not (yet) released: found at open, it was made by
/// a handle that is gone without releasing (a killed process).
const HELD_KEY: &[u8] = b"held_epoch";
/// The `meta` key holding the next commit sequence number (`u64`); it
/// never goes down.
const SEQ_KEY: &[u8] = b"next_seq";
/// The file, beside sled's own in the database directory, recording a
/// sequence number known durable (at open, after recovery, and at close).
/// A database that recovers to less lost committed data.
const WATERMARK_FILE: &str = "outbox.watermark";

/// The trees, in the order of [`Worker::all`] (the transaction view).
const TREES: [&str; 9] = [
    "outbox.meta",
    "outbox.state",
    "outbox.events",
    "outbox.ids",
    "outbox.pending",
    "outbox.dead",
    "outbox.delivered",
    "outbox.inbox",
    "outbox.inbox_time",
];
const META: usize = 0;
const STATE: usize = 1;
const EVENTS: usize = 2;
const IDS: usize = 3;
const PENDING: usize = 4;
const DEAD: usize = 5;
const DELIVERED: usize = 6;
const INBOX: usize = 7;
const INBOX_TIME: usize = 8;

/// When the store makes writes durable.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub enum FlushPolicy {
    /// Flush (write + fsync sled's log) before any write returns `Ok`:
    /// a returned commit survives a crash. Concurrent writes share one
    /// flush (group commit). The default.
    #[default]
    EveryWrite,
    /// Let sled flush in the background every so often. Faster, but a
    /// crash loses the writes of up to that long, so the store reports
    /// itself not durable ([`Capabilities::durable`] is false).
    Interval(Duration),
}

/// How to open a [`SledStore`].
#[derive(Clone)]
pub struct SledOptions {
    path: PathBuf,
    flush: FlushPolicy,
    clock: SharedClock,
    limits: Limits,
    cache_capacity: Option<u64>,
    max_batch: usize,
    max_size_bytes: Option<u64>,
    lock_timeout: Duration,
}

impl fmt::Debug for SledOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SledOptions")
            .field("path", &self.path)
            .field("flush", &self.flush)
            .field("limits", &self.limits)
            .field("cache_capacity", &self.cache_capacity)
            .field("max_batch", &self.max_batch)
            .field("max_size_bytes", &self.max_size_bytes)
            .field("lock_timeout", &self.lock_timeout)
            .finish_non_exhaustive()
    }
}

impl SledOptions {
    /// Defaults for the database directory at `path`: flush every write,
    /// system clock, default limits.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SledOptions {
            path: path.into(),
            flush: FlushPolicy::default(),
            clock: SystemClock::shared(),
            limits: Limits::default(),
            cache_capacity: None,
            max_batch: 256,
            max_size_bytes: None,
            lock_timeout: Duration::from_secs(1),
        }
    }

    /// How long [`SledOptions::open`] waits for sled's directory lock when
    /// another handle holds it (one being closed, whose last users are
    /// still winding down), retrying every 10 ms; then
    /// [`Error::Unavailable`]. Default 1 s; zero fails at once. The wait
    /// blocks the calling thread.
    pub fn lock_timeout(mut self, d: Duration) -> Self {
        self.lock_timeout = d;
        self
    }

    /// Sets the flush policy.
    pub fn flush(mut self, policy: FlushPolicy) -> Self {
        self.flush = policy;
        self
    }

    /// Reads time from `clock`.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Sets the limits commits are checked against.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets sled's page cache size in bytes (sled's default is 1 GiB, an
    /// upper bound, not an allocation).
    pub fn cache_capacity(mut self, bytes: u64) -> Self {
        self.cache_capacity = Some(bytes);
        self
    }

    /// Most writes applied before one shared flush (at least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// Refuses commits with [`Error::QuotaExceeded`] once sled's files
    /// take `bytes` or more. Delivery, pruning and requeueing still run,
    /// so a full outbox can drain.
    pub fn max_size_bytes(mut self, bytes: u64) -> Self {
        self.max_size_bytes = Some(bytes);
        self
    }

    /// Opens (creating if needed) the database.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`] for a database written by a newer layout
    /// (left untouched), [`Error::Corrupted`] for a sled database that is
    /// not an outbox or does not decode, [`Error::Unavailable`] when another
    /// process or handle has it open, [`Error::PermissionDenied`] when the
    /// directory cannot be written.
    pub fn open(self) -> Result<SledStore> {
        SledStore::open_with(self)
    }
}

/// How much the shared flush coalesced, since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
#[non_exhaustive]
pub struct FlushStats {
    /// Flushes done for writes.
    pub flushes: u64,
    /// Commits made durable by them.
    pub commits: u64,
}

#[derive(Debug, Default)]
struct Counts {
    flushes: AtomicU64,
    commits: AtomicU64,
}

/// The outbox store on a sled database.
///
/// One background thread owns the database. It applies each operation in
/// ONE multi-tree sled transaction (a commit writes the state, its events,
/// their index entries and its inbox marks together), then makes every
/// write of the batch durable with one flush before any of them returns
/// (group commit). Operations never share a transaction, so a failing
/// commit (a version conflict, a duplicate) fails alone.
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
/// batch is claimable at once); leases under a released grant stand. Every delivery operation
/// checks its grant's epoch on the worker thread, where all writes run.
///
/// # Layout
///
/// Trees `outbox.state` (actor → version, time, snapshot), `outbox.events`
/// (commit sequence → event row), `outbox.ids` (event id → sequence),
/// `outbox.pending` (sequence → key, due time, lease: the claim index, so
/// a claim scans pending events only, in commit order), `outbox.dead`,
/// `outbox.delivered` ((time, sequence), for pruning by range),
/// `outbox.inbox` and `outbox.inbox_time`, and `outbox.meta` with the
/// layout version. A newer layout is refused.
pub struct SledStore {
    tx: Mutex<Option<Sender<Msg>>>,
    worker: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
    path: PathBuf,
    limits: Limits,
    flush: FlushPolicy,
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

/// What a finished job hands the worker: whether its result waits for the
/// flush, and how to deliver it (given the flush's error, if any).
struct Finish {
    needs_flush: bool,
    commit: bool,
    deliver: Box<dyn FnOnce(Option<Error>) + Send>,
}

type Job = Box<dyn FnOnce(&mut Worker) -> Finish + Send>;

enum Msg {
    Job(Job),
    Commit(Commit, oneshot::Sender<Result<CommitReceipt>>),
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

    fn open_with(o: SledOptions) -> Result<Self> {
        let mut config = sled::Config::new().path(&o.path).mode(sled::Mode::HighThroughput);
        if let Some(c) = o.cache_capacity {
            config = config.cache_capacity(c);
        }
        config = match o.flush {
            // Flushes happen on the worker, before replies.
            FlushPolicy::EveryWrite => config.flush_every_ms(None),
            FlushPolicy::Interval(d) => config.flush_every_ms(Some(d.as_millis().max(1) as u64)),
        };
        let db = open_waiting(&config, &o.path, o.lock_timeout)?;
        let worker = Worker::new(db, &o)?;
        let counts = worker.counts.clone();
        let (tx, rx) = channel();
        let max_batch = o.max_batch;
        let handle = std::thread::Builder::new()
            .name("outbox-sled".into())
            .spawn(move || run(worker, rx, max_batch))
            .map_err(|e| Error::Internal {
                message: "cannot start the sled worker".into(),
                source: Some(Box::new(e)),
            })?;
        Ok(SledStore {
            tx: Mutex::new(Some(tx)),
            worker: Some(handle),
            counts,
            path: o.path,
            limits: o.limits,
            flush: o.flush,
        })
    }

    fn send(&self, msg: Msg) -> Result<()> {
        lock(&self.tx)
            .as_ref()
            .ok_or(())
            .and_then(|tx| tx.send(msg).map_err(|_| ()))
            .map_err(|()| Error::Unavailable { message: "the sled worker has stopped".into(), source: None })
    }

    /// Runs `f` on the worker; `writes` makes its `Ok` wait for the flush.
    async fn call<T: Send + 'static>(
        &self,
        writes: bool,
        f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static,
    ) -> Result<T> {
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
        rx.await.map_err(|_| Error::Unavailable {
            message: "the sled worker stopped mid-call".into(),
            source: None,
        })?
    }
}

/// Opens sled, retrying for up to `wait` while another handle holds the
/// directory lock (sled's background threads let go of a closed database
/// a moment after the handle is dropped).
fn open_waiting(config: &sled::Config, path: &Path, wait: Duration) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        match open_db(config, path) {
            Err(e) if is_lock_held(&e) && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r,
        }
    }
}

fn is_lock_held(e: &Error) -> bool {
    matches!(e, Error::Unavailable { message, .. } if message.contains(crate::error::LOCK_HELD))
}

/// Opens sled, catching a panic on a damaged directory (sled 0.34 asserts
/// on some malformed files) as [`Error::Corrupted`].
fn open_db(config: &sled::Config, path: &Path) -> Result<sled::Db> {
    let config = config.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open())) {
        Ok(r) => r.map_err(|e| map("open", e)),
        Err(_) => Err(Error::Corrupted {
            message: format!("sled could not read the database at {}", path.display()),
            source: None,
        }),
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
    }
}

/// The worker thread: runs jobs in arrival order and flushes once per run
/// of queued jobs.
fn run(mut w: Worker, rx: Receiver<Msg>, max_batch: usize) {
    let mut finished: Vec<Finish> = Vec::new();
    let mut queued: Vec<Msg> = Vec::new();
    let mut group: Vec<(Commit, oneshot::Sender<Result<CommitReceipt>>)> = Vec::new();
    while let Ok(first) = rx.recv() {
        w.capped = None;
        queued.push(first);
        while queued.len() < max_batch {
            match rx.try_recv() {
                Ok(m) => queued.push(m),
                Err(_) => break,
            }
        }
        for m in queued.drain(..) {
            match m {
                Msg::Commit(c, reply) => group.push((c, reply)),
                Msg::Job(job) => {
                    run_group(&mut w, &mut group, &mut finished);
                    finished.push(job(&mut w));
                }
            }
        }
        run_group(&mut w, &mut group, &mut finished);
        let flush_error = if w.flush_each && finished.iter().any(|f| f.needs_flush) {
            match w.db.flush() {
                Ok(_) => {
                    w.counts.flushes.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(e) => {
                    let e = map("flush", e);
                    tracing::error!(target: "outbox", error = %e, "outbox: sled flush failed; the store refuses further work until reopened");
                    w.failed = Some(e.shared_failure());
                    Some(e)
                }
            }
        } else {
            None
        };
        let commits = finished.iter().filter(|f| f.commit).count() as u64;
        if flush_error.is_none() {
            w.counts.commits.fetch_add(commits, Ordering::Relaxed);
        }
        for f in finished.drain(..) {
            let err = if f.needs_flush { flush_error.as_ref().map(Error::shared_failure) } else { None };
            (f.deliver)(err);
        }
    }
    if w.failed.is_none() && w.db.flush().is_ok() {
        let _ = write_watermark(&w.watermark, w.next_seq);
    }
}

/// Commits the queued `group` (see [`Worker::commit_group`]).
fn run_group(
    w: &mut Worker,
    group: &mut Vec<(Commit, oneshot::Sender<Result<CommitReceipt>>)>,
    finished: &mut Vec<Finish>,
) {
    if group.is_empty() {
        return;
    }
    let (commits, replies): (Vec<Commit>, Vec<_>) = group.drain(..).unzip();
    let results = match &w.failed {
        Some(e) => commits.iter().map(|_| Err(e.shared_failure())).collect(),
        None => w.commit_group(&commits),
    };
    for (r, reply) in results.into_iter().zip(replies) {
        let ok = r.is_ok();
        finished.push(Finish {
            needs_flush: ok,
            commit: ok,
            deliver: Box::new(move |flush_error| {
                let _ = reply.send(match flush_error {
                    Some(e) => Err(e),
                    None => r,
                });
            }),
        });
    }
}

/// The durable sequence number recorded in `path`, if the file exists.
fn read_watermark(path: &Path) -> Result<Option<u64>> {
    match std::fs::read(path) {
        Ok(b) => {
            let b: [u8; 8] =
                b.as_slice().try_into().map_err(|_| corrupt("the watermark file is malformed"))?;
            Ok(Some(u64::from_be_bytes(b)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(map("read the watermark", sled::Error::Io(e))),
    }
}

/// Records `seq` in `path` atomically (write, fsync, rename).
fn write_watermark(path: &Path, seq: u64) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let io = |e| map("write the watermark", sled::Error::Io(e));
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(&seq.to_be_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The state the worker thread owns.
struct Worker {
    db: sled::Db,
    all: Vec<sled::Tree>,
    clock: SharedClock,
    flush_each: bool,
    counts: Arc<Counts>,
    next_seq: u64,
    leader: Option<LeaderGrant>,
    last_epoch: u64,
    /// Set when a flush failed: what was applied may not be durable, so
    /// nothing more is done through this handle.
    failed: Option<Error>,
    max_size: Option<u64>,
    /// Whether the size cap was hit, measured once per batch.
    capped: Option<bool>,
    watermark: PathBuf,
}

type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

fn abort<T>(e: Error) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn get_row(t: &TransactionalTree, seq: u64) -> TxResult<Option<Row>> {
    match t.get(seq_key(seq))? {
        Some(b) => Ok(Some(decode_row(&b).or_else(abort)?)),
        None => Ok(None),
    }
}

fn put_row(v: &[TransactionalTree], seq: u64, row: &Row) -> TxResult<()> {
    v[EVENTS].insert(&seq_key(seq), encode_row(row))?;
    Ok(())
}

/// The encoded writes of one checked commit.
struct Write {
    state: Option<(Vec<u8>, Vec<u8>)>,
    /// (seq, id, row, pending index entry)
    events: Vec<(u64, EventId, Vec<u8>, Vec<u8>)>,
    marks: Vec<Vec<u8>>,
}

fn prepare(commit: &Commit, now: Timestamp, seq0: u64, marks: Vec<Vec<u8>>) -> Write {
    let state = commit.state.as_ref().map(|s| {
        let mut w = Writer(Vec::with_capacity(16 + s.snapshot.len()));
        w.u64(s.expected_version.next().0);
        w.time(now);
        w.0.extend_from_slice(&s.snapshot);
        (s.actor.as_str().as_bytes().to_vec(), w.0)
    });
    let events = commit
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let row = Row {
                env: Envelope::committed(e.clone(), now),
                status: Status::Pending,
                claimed_by: None,
                lease_until: None,
            };
            (seq0 + i as u64, e.id, encode_row(&row), encode_pending(&PendingEntry::of(&row)))
        })
        .collect();
    Write { state, events, marks }
}

impl Worker {
    fn new(db: sled::Db, o: &SledOptions) -> Result<Self> {
        // Read the layout before writing anything: a newer or foreign
        // database is refused untouched.
        let names: HashSet<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
        let meta_exists = names.contains(TREES[META].as_bytes());
        let found = if meta_exists {
            let meta = db.open_tree(TREES[META]).map_err(|e| map("open meta", e))?;
            match meta.get(LAYOUT_KEY).map_err(|e| map("read layout", e))? {
                Some(v) => {
                    let b: [u8; 4] =
                        v.as_ref().try_into().map_err(|_| corrupt("layout version is malformed"))?;
                    Some(u32::from_be_bytes(b))
                }
                None => None,
            }
        } else {
            None
        };
        match found {
            Some(v) if v > LAYOUT_VERSION => {
                return Err(Error::SchemaTooNew { found: v, supported: LAYOUT_VERSION });
            }
            Some(_) => {}
            None => {
                // sled's own default tree is always there; any other tree
                // or any default-tree data means somebody else's database.
                let foreign = names.iter().any(|n| n.as_slice() != b"__sled__default") || !db.is_empty();
                if foreign {
                    return Err(corrupt("the directory holds a sled database that is not an outbox"));
                }
            }
        }
        let mut all = Vec::with_capacity(TREES.len());
        for name in TREES {
            all.push(db.open_tree(name).map_err(|e| map("open tree", e))?);
        }
        if found.is_none() {
            all[META]
                .insert(LAYOUT_KEY, &LAYOUT_VERSION.to_be_bytes())
                .map_err(|e| map("write layout", e))?;
            db.flush().map_err(|e| map("flush layout", e))?;
        }
        let after_last = match all[EVENTS].last().map_err(|e| map("read last event", e))? {
            Some((k, _)) => seq_of(&k)? + 1,
            None => 0,
        };
        let stored = match all[META].get(SEQ_KEY).map_err(|e| map("read sequence", e))? {
            Some(v) => {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| corrupt("sequence is malformed"))?)
            }
            None => 0,
        };
        let next_seq = after_last.max(stored);
        let watermark = o.path.join(WATERMARK_FILE);
        if let Some(known) = read_watermark(&watermark)?
            && next_seq < known
        {
            return Err(Error::Corrupted {
                message: format!(
                    "the sled database at {} recovered only {next_seq} of {known} committed events: its files were damaged or replaced",
                    o.path.display()
                ),
                source: None,
            });
        }
        write_watermark(&watermark, next_seq)?;
        let last_epoch = match all[META].get(EPOCH_KEY).map_err(|e| map("read epoch", e))? {
            Some(v) => {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| corrupt("epoch is malformed"))?;
                u64::from_be_bytes(b)
            }
            None => 0,
        };
        let w = Worker {
            db,
            all,
            clock: o.clock.clone(),
            flush_each: o.flush == FlushPolicy::EveryWrite,
            counts: Arc::default(),
            next_seq,
            leader: None,
            last_epoch,
            failed: None,
            max_size: o.max_size_bytes,
            capped: None,
            watermark,
        };
        w.void_inherited_leases()?;
        Ok(w)
    }

    /// A grant still held when the last handle went away means that handle
    /// died mid-lease (sled's directory lock allows one handle at a time,
    /// so nothing else can be delivering): its leases are voided, so the
    /// batch it had in flight is claimable at once instead of after its
    /// lease. The lost attempt stays counted. Leases of a released grant
    /// stand, as they do in a live store.
    fn void_inherited_leases(&self) -> Result<()> {
        if self.all[META].get(HELD_KEY).map_err(|e| map("read held epoch", e))?.is_none() {
            return Ok(());
        }
        let mut rows = Vec::new();
        for item in self.all[PENDING].iter() {
            let (k, v) = item.map_err(|e| map("scan pending", e))?;
            if decode_pending(&v)?.lease_until.is_none() {
                continue;
            }
            let seq = seq_of(&k)?;
            let b = self.all[EVENTS].get(&k).map_err(|e| map("read event", e))?;
            let mut row = decode_row(&b.ok_or_else(|| corrupt("pending index names a missing event"))?)?;
            row.lease_until = None;
            rows.push((seq, row));
        }
        self.write_settled("void leases", &rows)?;
        self.all[META].remove(HELD_KEY).map_err(|e| map("clear held epoch", e))?;
        self.db.flush().map_err(|e| map("flush", e))?;
        Ok(())
    }

    fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs `f` as one transaction over all trees.
    fn tx<T>(&self, what: &str, f: impl Fn(&[TransactionalTree]) -> TxResult<T>) -> Result<T> {
        self.all.as_slice().transaction(|v: &Vec<TransactionalTree>| f(v)).map_err(|e| map_tx(what, e))
    }

    fn check_fence(&self, grant: &LeaderGrant) -> Result<()> {
        let current = self.leader.as_ref().map(|g| g.epoch);
        if current != Some(grant.epoch) {
            return Err(Error::Fenced { epoch: grant.epoch, current });
        }
        Ok(())
    }

    fn over_cap(&mut self) -> Result<bool> {
        let Some(max) = self.max_size else { return Ok(false) };
        if let Some(c) = self.capped {
            return Ok(c);
        }
        let over = self.db.size_on_disk().map_err(|e| map("measure size", e))? >= max;
        self.capped = Some(over);
        Ok(over)
    }

    /// Applies a run of queued commits: each is checked on its own (against
    /// the trees and the members before it), and those that pass are
    /// written together in ONE transaction. A member that fails its checks
    /// (a version conflict, a duplicate) fails alone and writes nothing.
    /// Checking outside the transaction is sound because every write to
    /// the database runs on this thread.
    fn commit_group(&mut self, commits: &[Commit]) -> Vec<Result<CommitReceipt>> {
        match self.over_cap() {
            Ok(false) => {}
            Ok(true) => {
                return commits
                    .iter()
                    .map(|_| {
                        Err(Error::QuotaExceeded {
                            message: "the sled outbox reached its size cap (max_size_bytes)".into(),
                            source: None,
                        })
                    })
                    .collect();
            }
            Err(e) => return commits.iter().map(|_| Err(e.shared_failure())).collect(),
        }
        let now = self.now();
        let mut next_seq = self.next_seq;
        let mut versions: HashMap<&ActorId, Version> = HashMap::new();
        let mut ids: HashSet<EventId> = HashSet::new();
        let mut marks: HashSet<Vec<u8>> = HashSet::new();
        let mut writes: Vec<Write> = Vec::new();
        let mut results: Vec<Result<CommitReceipt>> = Vec::with_capacity(commits.len());
        for commit in commits {
            match self.check(commit, &versions, &ids, &marks) {
                Err(e) => results.push(Err(e)),
                Ok(member_marks) => {
                    let w = prepare(commit, now, next_seq, member_marks);
                    next_seq += commit.events.len() as u64;
                    if let Some(s) = &commit.state {
                        versions.insert(&s.actor, s.expected_version.next());
                    }
                    ids.extend(commit.events.iter().map(|e| e.id));
                    marks.extend(w.marks.iter().cloned());
                    results.push(Ok(CommitReceipt {
                        version: commit.state.as_ref().map(|s| s.expected_version.next()),
                        committed_at: now,
                    }));
                    writes.push(w);
                }
            }
        }
        if writes.is_empty() {
            return results;
        }
        let applied = self.tx("commit", |v| {
            for w in &writes {
                if let Some((key, value)) = &w.state {
                    v[STATE].insert(key.as_slice(), value.as_slice())?;
                }
                for (seq, id, row, pending) in &w.events {
                    let seq = seq_key(*seq);
                    v[IDS].insert(&id.to_bytes(), &seq)?;
                    v[EVENTS].insert(&seq, row.as_slice())?;
                    v[PENDING].insert(&seq, pending.as_slice())?;
                }
                for key in &w.marks {
                    v[INBOX].insert(key.as_slice(), &time_bytes(now))?;
                    let mut tk = time_bytes(now).to_vec();
                    tk.extend_from_slice(key);
                    v[INBOX_TIME].insert(tk, &[])?;
                }
            }
            if next_seq != self.next_seq {
                v[META].insert(SEQ_KEY, &next_seq.to_be_bytes())?;
            }
            Ok(())
        });
        match applied {
            Ok(()) => {
                self.next_seq = next_seq;
                results
            }
            Err(e) => results.into_iter().map(|r| r.and_then(|_| Err(e.shared_failure()))).collect(),
        }
    }

    /// Checks one commit against the trees and the earlier members of its
    /// group; returns its inbox keys.
    fn check(
        &self,
        commit: &Commit,
        versions: &HashMap<&ActorId, Version>,
        ids: &HashSet<EventId>,
        marks: &HashSet<Vec<u8>>,
    ) -> Result<Vec<Vec<u8>>> {
        if let Some(s) = &commit.state {
            let actual = match versions.get(&s.actor) {
                Some(v) => *v,
                None => self.load_state(&s.actor)?.map_or(Version::NONE, |st| st.version),
            };
            if actual != s.expected_version {
                return Err(Error::Conflict { actor: s.actor.clone(), expected: s.expected_version, actual });
            }
        }
        let mut own = HashSet::new();
        for e in &commit.events {
            if !own.insert(e.id)
                || ids.contains(&e.id)
                || self.all[IDS].contains_key(e.id.to_bytes()).map_err(|e| map("read id", e))?
            {
                return Err(Error::DuplicateEvent { id: e.id });
            }
        }
        let mut keys = Vec::with_capacity(commit.inbox.len());
        for m in &commit.inbox {
            let key = inbox_key(&m.consumer, &m.origin, m.event_id);
            if keys.contains(&key)
                || marks.contains(&key)
                || self.all[INBOX].contains_key(&key).map_err(|e| map("read inbox", e))?
            {
                return Err(Error::AlreadyProcessed {
                    consumer: m.consumer.clone(),
                    origin: m.origin.clone(),
                    id: m.event_id,
                });
            }
            keys.push(key);
        }
        Ok(keys)
    }

    fn load_state(&self, actor: &ActorId) -> Result<Option<StateSnapshot>> {
        let Some(b) = self.all[STATE].get(actor.as_str()).map_err(|e| map("load state", e))? else {
            return Ok(None);
        };
        let mut r = Reader::new(&b);
        let version = Version(r.u64()?);
        let updated_at = r.time()?;
        let bytes = b.get(16..).ok_or_else(|| corrupt("short state value"))?.to_vec();
        Ok(Some(StateSnapshot { version, bytes, updated_at }))
    }

    fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
        let now = self.now();
        if let Some(cur) = &self.leader
            && cur.holder != holder
            && cur.expires_at > now
        {
            return Ok(None);
        }
        let epoch = self.last_epoch + 1;
        self.all[META].insert(EPOCH_KEY, &epoch.to_be_bytes()).map_err(|e| map("write epoch", e))?;
        self.all[META].insert(HELD_KEY, &epoch.to_be_bytes()).map_err(|e| map("write held epoch", e))?;
        self.last_epoch = epoch;
        let grant = LeaderGrant {
            holder: holder.to_owned(),
            epoch: Epoch(epoch),
            expires_at: now.saturating_add(ttl),
        };
        self.leader = Some(grant.clone());
        Ok(Some(grant))
    }

    fn claim(&mut self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        self.check_fence(grant)?;
        if request.limit == 0 {
            return Ok(Vec::new());
        }
        let now = self.now();
        // Dead events block later events of their key when parking.
        let mut dead_from: HashMap<OrderingKey, u64> = HashMap::new();
        if request.park_dead_keys {
            for item in self.all[DEAD].iter() {
                let (k, v) = item.map_err(|e| map("scan dead", e))?;
                let key = OrderingKey::new(String::from_utf8_lossy(&v).into_owned())
                    .map_err(|_| corrupt("dead index key is invalid"))?;
                let seq = seq_of(&k)?;
                dead_from.entry(key).and_modify(|s| *s = (*s).min(seq)).or_insert(seq);
            }
        }
        let mut blocked: HashSet<OrderingKey> = HashSet::new();
        let mut picked: Vec<(u64, PendingEntry)> = Vec::new();
        for item in self.all[PENDING].iter() {
            if picked.len() >= request.limit {
                break;
            }
            let (k, v) = item.map_err(|e| map("scan pending", e))?;
            let seq = seq_of(&k)?;
            let entry = decode_pending(&v)?;
            if blocked.contains(&entry.key) {
                continue;
            }
            if dead_from.get(&entry.key).is_some_and(|&d| d < seq) {
                blocked.insert(entry.key);
                continue;
            }
            if entry.leased_at(now) || entry.next_attempt_at > now {
                blocked.insert(entry.key);
                continue;
            }
            picked.push((seq, entry));
        }
        let lease_until = now.saturating_add(request.lease);
        let mut rows = Vec::with_capacity(picked.len());
        for (seq, entry) in picked {
            let b = self.all[EVENTS]
                .get(seq_key(seq))
                .map_err(|e| map("read event", e))?
                .ok_or_else(|| corrupt("pending index names a missing event"))?;
            let mut row = decode_row(&b)?;
            row.env.attempts = row.env.attempts.saturating_add(1);
            row.claimed_by = Some(grant.epoch.0);
            row.lease_until = Some(lease_until);
            let entry = PendingEntry { lease_until: Some(lease_until), ..entry };
            rows.push((seq_key(seq), encode_row(&row), encode_pending(&entry), row.env));
        }
        // Read outside, write inside: every write runs on this thread.
        self.tx("claim", |v| {
            for (k, row, entry, _) in &rows {
                v[EVENTS].insert(k, row.as_slice())?;
                v[PENDING].insert(k, entry.as_slice())?;
            }
            Ok(())
        })?;
        Ok(rows.into_iter().map(|(_, _, _, env)| env).collect())
    }

    /// The rows `grant` may settle, by seq; `Fenced` if any id is held by
    /// another claim. Delivered, dead and unknown ids are skipped.
    fn settleable(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<Vec<(u64, Row)>> {
        self.check_fence(grant)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(s) = self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? else { continue };
            let seq = seq_of(&s)?;
            let Some(b) = self.all[EVENTS].get(s).map_err(|e| map("read event", e))? else { continue };
            let row = decode_row(&b)?;
            if row.status != Status::Pending {
                continue;
            }
            if row.claimed_by != Some(grant.epoch.0) {
                return Err(Error::Fenced { epoch: grant.epoch, current: row.claimed_by.map(Epoch) });
            }
            out.push((seq, row));
        }
        Ok(out)
    }

    /// Writes back settled rows: pending ones update the claim index,
    /// others leave it for the dead or delivered index.
    fn write_settled(&self, what: &str, rows: &[(u64, Row)]) -> Result<()> {
        self.tx(what, |v| {
            for (seq, row) in rows {
                put_row(v, *seq, row)?;
                let k = seq_key(*seq);
                match row.status {
                    Status::Pending => {
                        v[PENDING].insert(&k, encode_pending(&PendingEntry::of(row)))?;
                    }
                    Status::Dead => {
                        v[PENDING].remove(&k)?;
                        v[DEAD].insert(&k, row.env.key.as_str().as_bytes())?;
                    }
                    Status::Delivered(at) => {
                        v[PENDING].remove(&k)?;
                        v[DELIVERED].insert(&time_seq_key(at, *seq), &[])?;
                    }
                }
            }
            Ok(())
        })
    }

    fn ack(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let now = self.now();
        let mut rows = self.settleable(grant, ids)?;
        for (_, row) in &mut rows {
            row.status = Status::Delivered(now);
            row.lease_until = None;
        }
        self.write_settled("ack", &rows)
    }

    fn release(&self, grant: &LeaderGrant, ids: &[EventId]) -> Result<()> {
        let mut rows = self.settleable(grant, ids)?;
        rows.retain(|(_, r)| r.lease_until.is_some());
        for (_, row) in &mut rows {
            row.env.attempts = row.env.attempts.saturating_sub(1);
            row.lease_until = None;
        }
        self.write_settled("release", &rows)
    }

    fn retry_later(&self, grant: &LeaderGrant, id: EventId, at: Timestamp, error: &str) -> Result<()> {
        let mut rows = self.settleable(grant, &[id])?;
        for (_, row) in &mut rows {
            row.env.next_attempt_at = at;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        }
        self.write_settled("retry later", &rows)
    }

    fn dead_letter(&self, grant: &LeaderGrant, id: EventId, error: &str) -> Result<()> {
        let mut rows = self.settleable(grant, &[id])?;
        for (_, row) in &mut rows {
            row.status = Status::Dead;
            row.env.last_error = Some(error.to_owned());
            row.lease_until = None;
        }
        self.write_settled("dead letter", &rows)
    }

    fn stats(&self) -> Result<StoreStats> {
        let now = self.now();
        let mut s = StoreStats::default();
        for item in self.all[PENDING].iter() {
            let (_, v) = item.map_err(|e| map("scan pending", e))?;
            let p = decode_pending(&v)?;
            s.pending += 1;
            if p.leased_at(now) {
                s.in_flight += 1;
            }
            s.oldest_pending_at = Some(s.oldest_pending_at.map_or(p.created_at, |o| o.min(p.created_at)));
        }
        s.dead = self.all[DEAD].len() as u64;
        s.delivered = self.all[DELIVERED].len() as u64;
        Ok(s)
    }

    fn list(&self, index: usize, limit: usize) -> Result<Vec<Envelope>> {
        let mut out = Vec::new();
        for item in self.all[index].iter().take(limit) {
            let (k, _) = item.map_err(|e| map("scan index", e))?;
            let b = self.all[EVENTS]
                .get(&k)
                .map_err(|e| map("read event", e))?
                .ok_or_else(|| corrupt("index names a missing event"))?;
            out.push(decode_row(&b)?.env);
        }
        Ok(out)
    }

    fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let now = self.now();
        let mut rows = Vec::new();
        let mut seen = HashSet::new();
        for id in ids {
            let Some(s) = self.all[IDS].get(id.to_bytes()).map_err(|e| map("read id", e))? else { continue };
            let seq = seq_of(&s)?;
            let Some(b) = self.all[EVENTS].get(&s).map_err(|e| map("read event", e))? else { continue };
            let mut row = decode_row(&b)?;
            if row.status != Status::Dead || !seen.insert(seq) {
                continue;
            }
            row.status = Status::Pending;
            row.env.attempts = 0;
            row.env.next_attempt_at = now;
            row.claimed_by = None;
            row.lease_until = None;
            rows.push((seq, row));
        }
        self.tx("requeue", |v| {
            for (seq, row) in &rows {
                put_row(v, *seq, row)?;
                v[DEAD].remove(&seq_key(*seq))?;
                v[PENDING].insert(&seq_key(*seq), encode_pending(&PendingEntry::of(row)))?;
            }
            Ok(())
        })?;
        Ok(rows.len() as u64)
    }

    fn prune_delivered(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut doomed: Vec<(sled::IVec, u64)> = Vec::new();
        for item in self.all[DELIVERED].range(..time_bytes(before).to_vec()).take(limit) {
            let (k, _) = item.map_err(|e| map("scan delivered", e))?;
            let seq = seq_of_time_seq(&k)?;
            doomed.push((k, seq));
        }
        self.tx("prune delivered", |v| {
            for (k, seq) in &doomed {
                if let Some(row) = get_row(&v[EVENTS], *seq)? {
                    v[IDS].remove(&row.env.id.to_bytes())?;
                }
                v[EVENTS].remove(&seq_key(*seq))?;
                v[DELIVERED].remove(k)?;
            }
            Ok(())
        })?;
        Ok(doomed.len() as u64)
    }

    fn is_processed(&self, consumer: &ConsumerId, origin: &ActorId, id: EventId) -> Result<bool> {
        self.all[INBOX].contains_key(inbox_key(consumer, origin, id)).map_err(|e| map("read inbox", e))
    }

    fn prune_inbox(&self, before: Timestamp, limit: usize) -> Result<u64> {
        let mut doomed = Vec::new();
        for item in self.all[INBOX_TIME].range(..time_bytes(before).to_vec()).take(limit) {
            let (k, _) = item.map_err(|e| map("scan inbox", e))?;
            doomed.push(k);
        }
        self.tx("prune inbox", |v| {
            for k in &doomed {
                v[INBOX].remove(k.get(8..).unwrap_or_default())?;
                v[INBOX_TIME].remove(k)?;
            }
            Ok(())
        })?;
        Ok(doomed.len() as u64)
    }
}

#[async_trait]
impl StateStore for SledStore {
    async fn put_state_and_events(&self, commit: Commit) -> Result<CommitReceipt> {
        commit.validate(&self.limits)?;
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Commit(commit, reply))?;
        rx.await.map_err(|_| Error::Unavailable {
            message: "the sled worker stopped mid-commit".into(),
            source: None,
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
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let holder = holder.to_owned();
        self.call(true, move |w| w.acquire(&holder, ttl)).await
    }

    async fn renew_leadership(&self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        if ttl.is_zero() {
            return Err(Error::invalid_input("leadership ttl must be positive"));
        }
        let grant = grant.clone();
        self.call(false, move |w| {
            w.check_fence(&grant)?;
            let renewed = LeaderGrant { expires_at: w.now().saturating_add(ttl), ..grant };
            w.leader = Some(renewed.clone());
            Ok(renewed)
        })
        .await
    }

    async fn release_leadership(&self, grant: &LeaderGrant) -> Result<()> {
        let epoch = grant.epoch;
        self.call(false, move |w| {
            if w.leader.as_ref().is_some_and(|g| g.epoch == epoch) {
                w.leader = None;
                w.all[META].remove(HELD_KEY).map_err(|e| map("clear held epoch", e))?;
            }
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl DeliveryStore for SledStore {
    async fn claim(&self, grant: &LeaderGrant, request: ClaimRequest) -> Result<Vec<Envelope>> {
        if request.lease.is_zero() {
            return Err(Error::invalid_input("claim lease must be positive"));
        }
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

    async fn retry_later(&self, grant: &LeaderGrant, id: EventId, at: Timestamp, error: &str) -> Result<()> {
        let (grant, error) = (grant.clone(), error.to_owned());
        self.call(true, move |w| w.retry_later(&grant, id, at, &error)).await
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
        self.call(false, move |w| w.list(PENDING, limit)).await
    }

    async fn list_dead(&self, limit: usize) -> Result<Vec<Envelope>> {
        self.call(false, move |w| w.list(DEAD, limit)).await
    }

    async fn requeue_dead(&self, ids: &[EventId]) -> Result<u64> {
        let ids = ids.to_vec();
        self.call(true, move |w| w.requeue_dead(&ids)).await
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
        Capabilities::new("sled", durable).survives_reopen(true).limits(self.limits)
    }
}

/// Everything in a database, read raw after checking that its indexes
/// agree with its rows (for crash tests and debugging; see
/// [`dump`](crate::debug::dump)).
#[derive(Debug, Default)]
pub struct Contents {
    /// Every actor's state.
    pub states: Vec<(ActorId, StateSnapshot)>,
    /// Every stored event in commit order, with whether it is delivered.
    pub events: Vec<(Envelope, bool)>,
}

pub(crate) fn dump(path: &Path) -> Result<Contents> {
    let o = SledOptions::new(path);
    let db = open_waiting(&sled::Config::new().path(path), path, o.lock_timeout)?;
    let w = Worker::new(db, &o)?;
    let mut c = Contents::default();
    for item in w.all[STATE].iter() {
        let (k, _) = item.map_err(|e| map("scan state", e))?;
        let actor = ActorId::new(String::from_utf8_lossy(&k).into_owned())?;
        let snap = w.load_state(&actor)?.ok_or_else(|| corrupt("state vanished"))?;
        c.states.push((actor, snap));
    }
    let (mut pending, mut dead, mut delivered) = (0usize, 0usize, 0usize);
    for item in w.all[EVENTS].iter() {
        let (k, v) = item.map_err(|e| map("scan events", e))?;
        let seq = seq_of(&k)?;
        let row = decode_row(&v)?;
        let id_seq = w.all[IDS].get(row.env.id.to_bytes()).map_err(|e| map("read id", e))?;
        if id_seq.as_deref() != Some(&k[..]) {
            return Err(corrupt(&format!("event {} is missing from the id index", row.env.id)));
        }
        let in_pending = w.all[PENDING].get(&k).map_err(|e| map("read pending", e))?;
        let in_dead = w.all[DEAD].contains_key(&k).map_err(|e| map("read dead", e))?;
        let ok = match row.status {
            Status::Pending => {
                pending += 1;
                in_pending.map(|p| decode_pending(&p)).transpose()? == Some(PendingEntry::of(&row))
                    && !in_dead
            }
            Status::Dead => {
                dead += 1;
                in_pending.is_none() && in_dead
            }
            Status::Delivered(at) => {
                delivered += 1;
                in_pending.is_none()
                    && !in_dead
                    && w.all[DELIVERED]
                        .contains_key(time_seq_key(at, seq))
                        .map_err(|e| map("read delivered", e))?
            }
        };
        if !ok {
            return Err(corrupt(&format!(
                "event {} ({:?}) disagrees with the indexes",
                row.env.id, row.status
            )));
        }
        c.events.push((row.env, matches!(row.status, Status::Delivered(_))));
    }
    if w.all[PENDING].len() != pending
        || w.all[DEAD].len() != dead
        || w.all[DELIVERED].len() != delivered
        || w.all[IDS].len() != c.events.len()
    {
        return Err(corrupt("an index names events that do not exist"));
    }
    Ok(c)
}
