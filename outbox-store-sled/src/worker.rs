//! The worker thread that owns the database: it runs jobs in arrival
//! order, applies each in ONE multi-tree sled transaction, and makes every
//! write of a run of queued jobs durable with one flush and one fsync
//! before any of them returns (group flush; sled's flush alone does not
//! survive a power loss: see [`durable`](crate::durable)). Queued commits
//! are checked one by one and written together ([`Worker::commit_group`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use futures::channel::oneshot;
use outbox_core::{Commit, CommitReceipt, Error, LeaderGrant, Result, SharedClock, Timestamp, rules};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::codec::{Row, Status, encode_pending, encode_row, pending_of};
use crate::durable::Files;
use crate::error::{SledError, map, map_tx};
use crate::options::{FlushPolicy, SledOptions};
use crate::schema::{
    self, DEAD, DELIVERED, DISCARDED, EVENTS, HELD_KEY, META, PENDING, SKIPPED, seq_key, seq_of, time_seq_key,
};

/// What a finished job hands the worker: whether its result waits for the
/// flush, and how to deliver it (given the flush's error, if any).
pub(crate) struct Finish {
    pub(crate) needs_flush: bool,
    pub(crate) commit: bool,
    pub(crate) deliver: Box<dyn FnOnce(Option<Error>) + Send>,
}

pub(crate) type Job = Box<dyn FnOnce(&mut Worker) -> Finish + Send>;

/// A message to the worker.
pub(crate) enum Msg {
    /// Run a job.
    Job(Job),
    /// Apply a commit (queued commits are written together).
    Commit(Commit, oneshot::Sender<Result<CommitReceipt>>),
}

/// How many flushes the writes took, since the store was opened.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) flushes: AtomicU64,
    pub(crate) commits: AtomicU64,
}

/// The state the worker thread owns.
pub(crate) struct Worker {
    pub(crate) db: sled::Db,
    /// The trees, indexed by [`schema::META`] ..
    /// [`schema::QUARANTINE`].
    pub(crate) all: Vec<sled::Tree>,
    clock: SharedClock,
    flush_each: bool,
    counts: Arc<Counts>,
    pub(crate) next_seq: u64,
    pub(crate) leader: Option<LeaderGrant>,
    pub(crate) last_epoch: u64,
    /// Set when a flush (or its fsync) failed: what was applied may not
    /// be durable, so nothing more is done through this handle.
    pub(crate) failed: Option<Error>,
    /// sled's files, fsynced after each flush.
    files: Files,
    /// A failure to fsync blob files after a transaction, reported by
    /// the next flush.
    blob_error: Option<Error>,
    max_size: Option<u64>,
    /// Whether the size cap was hit, measured once per batch.
    capped: Option<bool>,
    watermark: PathBuf,
    /// The sequence number the watermark file holds.
    recorded: u64,
}

/// Opens the layout of `db` and starts the worker thread on it.
pub(crate) fn start(db: sled::Db, o: &SledOptions) -> Result<(Sender<Msg>, JoinHandle<()>, Arc<Counts>)> {
    let worker = Worker::new(db, o)?;
    let counts = worker.counts.clone();
    let (tx, rx) = channel();
    let max_batch = o.max_batch;
    let handle = std::thread::Builder::new()
        .name("outbox-sled".into())
        .spawn(move || run(worker, rx, max_batch))
        .map_err(SledError::Spawn)?;
    Ok((tx, handle, counts))
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
                    w.sync_new_blobs();
                }
            }
        }
        run_group(&mut w, &mut group, &mut finished);
        let flush_error = if w.flush_each && finished.iter().any(|f| f.needs_flush) {
            match w.flush_durable() {
                Ok(()) => {
                    w.counts.flushes.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(e) => {
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
    // The watermark records only what is durable.
    if w.failed.is_none() && w.flush_durable().is_ok() && w.next_seq != w.recorded {
        let _ = schema::write_watermark(&w.watermark, w.next_seq);
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
    w.sync_new_blobs();
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

pub(crate) type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

/// Writes the row at `seq` in a transaction over all trees.
pub(crate) fn put_row(v: &[TransactionalTree], seq: u64, row: &Row) -> TxResult<()> {
    v[EVENTS].insert(&seq_key(seq), encode_row(row))?;
    Ok(())
}

/// The index entry of an event at `seq` with `status`: its tree and key.
pub(crate) fn index_key(seq: u64, status: Status) -> (usize, Vec<u8>) {
    match status {
        Status::Pending => (PENDING, seq_key(seq).to_vec()),
        Status::Dead { skipped: false } => (DEAD, seq_key(seq).to_vec()),
        Status::Dead { skipped: true } => (SKIPPED, seq_key(seq).to_vec()),
        Status::Delivered(at) => (DELIVERED, time_seq_key(at, seq).to_vec()),
        Status::Discarded(at) => (DISCARDED, time_seq_key(at, seq).to_vec()),
    }
}

/// The value of `row`'s index entry: the pending entry, the ordering key
/// (dead letters), or nothing (delivered and discarded events).
pub(crate) fn index_value(row: &Row) -> Vec<u8> {
    match row.status {
        Status::Pending => encode_pending(&pending_of(row)),
        Status::Dead { .. } => row.env.key.as_str().as_bytes().to_vec(),
        Status::Delivered(_) | Status::Discarded(_) => Vec::new(),
    }
}

/// Writes `row` at `seq`, moving its index entry from where an event with
/// status `was` has it to where `row`'s status puts it.
pub(crate) fn put_indexed(v: &[TransactionalTree], seq: u64, was: Status, row: &Row) -> TxResult<()> {
    put_row(v, seq, row)?;
    let (old_tree, old_key) = index_key(seq, was);
    let (tree, key) = index_key(seq, row.status);
    if (old_tree, &old_key) != (tree, &key) {
        v[old_tree].remove(old_key)?;
    }
    v[tree].insert(key, index_value(row))?;
    Ok(())
}

impl Worker {
    /// Opens the layout ([`schema::open_trees`]), makes what sled
    /// recovered durable ([`Files::open`]), checks recovery against the
    /// watermark, and voids the leases of a grant left held.
    pub(crate) fn new(db: sled::Db, o: &SledOptions) -> Result<Self> {
        let all = schema::open_trees(&db)?;
        let files = Files::open(&o.path)?;
        let next_seq = schema::next_seq(&all)?;
        schema::check_watermark(&o.path, next_seq)?;
        let last_epoch = schema::last_epoch(&all)?;
        let mut w = Worker {
            db,
            all,
            clock: o.clock.clone(),
            flush_each: o.flush == FlushPolicy::EveryWrite,
            counts: Arc::default(),
            next_seq,
            leader: None,
            last_epoch,
            failed: None,
            files,
            blob_error: None,
            max_size: o.max_size_bytes,
            capped: None,
            watermark: schema::watermark_path(&o.path),
            recorded: next_seq,
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
    fn void_inherited_leases(&mut self) -> Result<()> {
        if !schema::grant_left_held(&self.all)? {
            return Ok(());
        }
        let rows = self.healing(|w| {
            let mut rows = Vec::new();
            for item in w.all[PENDING].iter() {
                let (k, v) = item.map_err(|e| map("scan pending", e))?;
                let seq = seq_of(&k)?;
                if Self::pending_entry(seq, &v)?.lease_until.is_none() {
                    continue;
                }
                let mut row = w.pending_row(seq)?;
                row.lease_until = None;
                rows.push((seq, row));
            }
            Ok(rows)
        })?;
        self.write_settled("void leases", &rows)?;
        self.all[META].remove(HELD_KEY).map_err(|e| map("clear held epoch", e))?;
        self.flush_durable()
    }

    /// Flushes sled, then fsyncs what it wrote ([`Files::sync`]): sled's
    /// flush alone reaches neither the file's metadata nor the disk. A
    /// blob fsync that failed since the last flush fails it.
    pub(crate) fn flush_durable(&mut self) -> Result<()> {
        if let Some(e) = self.blob_error.take() {
            return Err(e);
        }
        self.db.flush().map_err(|e| map("flush", e))?;
        self.files.sync()
    }

    /// After a transaction: fsyncs the blob files it made, before sled
    /// writes (at the latest at the flush) the log entries that point to
    /// them ([`Files::sync_new_blobs`]). Only when every write is flushed
    /// (the interval policy promises no durability). A failure is kept for
    /// the next flush to report.
    fn sync_new_blobs(&mut self) {
        if self.flush_each
            && self.blob_error.is_none()
            && let Err(e) = self.files.sync_new_blobs()
        {
            self.blob_error = Some(e);
        }
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// Runs `f` as one transaction over all trees.
    pub(crate) fn tx<T>(
        &self,
        what: &'static str,
        f: impl Fn(&[TransactionalTree]) -> TxResult<T>,
    ) -> Result<T> {
        self.all.as_slice().transaction(|v: &Vec<TransactionalTree>| f(v)).map_err(|e| map_tx(what, e))
    }

    /// `Fenced` unless `grant` is the handle's current grant.
    pub(crate) fn check_fence(&self, grant: &LeaderGrant) -> Result<()> {
        rules::check_fence(grant, self.leader.as_ref().map(|g| g.epoch))
    }

    /// Whether sled's files reached the size cap (measured once per run
    /// of queued jobs).
    pub(crate) fn over_cap(&mut self) -> Result<bool> {
        let Some(max) = self.max_size else { return Ok(false) };
        if let Some(c) = self.capped {
            return Ok(c);
        }
        let over = self.db.size_on_disk().map_err(|e| map("measure size", e))? >= max;
        self.capped = Some(over);
        Ok(over)
    }
}
