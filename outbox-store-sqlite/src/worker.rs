//! The writer thread: one background thread owns the connection and runs
//! every request in order; runs of concurrent commits are coalesced into
//! one transaction and one fsync (group commit), each commit in its own
//! savepoint so a failing member rolls back alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use outbox_core::{Commit, CommitReceipt, Result, SharedClock, Timestamp, Version};
use rusqlite::{Connection, Transaction, TransactionBehavior};

use crate::commit::apply;
use crate::error::{SqliteError, map};

/// How much group commit coalesced, since the store was opened.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct GroupCommitStats {
    /// Commit transactions (fsyncs) run.
    pub transactions: u64,
    /// `put_state_and_events` calls they carried, failed members included.
    pub commits: u64,
}

#[derive(Debug, Default)]
struct Counts {
    transactions: AtomicU64,
    commits: AtomicU64,
}

type Job = Box<dyn FnOnce(&mut Worker) + Send>;

enum Msg {
    Commit(Member),
    Job(Job),
}

/// One `put_state_and_events` call waiting for its group commit.
pub(crate) struct Member {
    pub(crate) commit: Commit,
    /// The events' headers, encoded as JSON by the caller.
    pub(crate) headers: Vec<String>,
    reply: oneshot::Sender<Result<CommitReceipt>>,
}

/// Locks `m`, ignoring poisoning (no invariant spans a panic here).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The store's side of the worker thread: sends it requests; dropping it
/// lets queued work finish, then joins the thread (closing, and
/// checkpointing, the connection).
pub(crate) struct WorkerHandle {
    tx: Mutex<Option<Sender<Msg>>>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
    /// The worker's clock, for writes made on other connections
    /// (enlisted commits).
    clock: SharedClock,
}

impl WorkerHandle {
    /// Starts the worker thread on `conn`. `cap_pages` is the commit size
    /// cap in pages; `max_batch` the most commits one transaction carries.
    pub(crate) fn spawn(
        conn: Connection,
        clock: SharedClock,
        cap_pages: Option<i64>,
        max_batch: usize,
    ) -> Result<Self> {
        let (tx, rx) = channel();
        let counts = Arc::new(Counts::default());
        let worker = Worker {
            conn,
            clock: clock.clone(),
            granted: None,
            counts: counts.clone(),
            cap_pages,
            capped: None,
        };
        let thread = std::thread::Builder::new()
            .name("outbox-sqlite".into())
            .spawn(move || run(worker, rx, max_batch))
            .map_err(SqliteError::Spawn)?;
        Ok(WorkerHandle { tx: Mutex::new(Some(tx)), thread: Some(thread), counts, clock })
    }

    /// The clock's time, in milliseconds (as the worker reads it).
    pub(crate) fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// How many transactions the commits so far took.
    pub(crate) fn group_commit_stats(&self) -> GroupCommitStats {
        GroupCommitStats {
            transactions: self.counts.transactions.load(Ordering::Relaxed),
            commits: self.counts.commits.load(Ordering::Relaxed),
        }
    }

    fn send(&self, msg: Msg) -> Result<()> {
        lock(&self.tx)
            .as_ref()
            .ok_or(())
            .and_then(|tx| tx.send(msg).map_err(|_| ()))
            .map_err(|()| SqliteError::WorkerStopped { message: "the sqlite worker has stopped" }.into())
    }

    /// Runs `f` on the worker thread, in order with every other request.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Worker) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Job(Box::new(move |w| {
            let _ = reply.send(f(w));
        })))?;
        rx.await.map_err(|_| SqliteError::WorkerStopped { message: "the sqlite worker stopped mid-call" })?
    }

    /// Queues `commit` for the next group commit and waits until the
    /// transaction holding it is durable (or failed).
    pub(crate) async fn commit(&self, commit: Commit, headers: Vec<String>) -> Result<CommitReceipt> {
        let (reply, rx) = oneshot::channel();
        self.send(Msg::Commit(Member { commit, headers, reply }))?;
        rx.await
            .map_err(|_| SqliteError::WorkerStopped { message: "the sqlite worker stopped mid-commit" })?
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        drop(lock(&self.tx).take());
        if let Some(h) = self.thread.take() {
            let _ = h.join();
        }
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
    let start = Instant::now();
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

/// The state the worker thread owns: the connection and what it knows
/// about it.
pub(crate) struct Worker {
    pub(crate) conn: Connection,
    clock: SharedClock,
    /// The epoch this handle granted last and has not released.
    pub(crate) granted: Option<u64>,
    counts: Arc<Counts>,
    /// The size cap in pages, for commits only: delivery and pruning get
    /// headroom above it, so a full outbox can still drain.
    cap_pages: Option<i64>,
    /// Whether the cap (rather than the headroom) is in force now; `None`
    /// before the first write.
    capped: Option<bool>,
}

impl Worker {
    /// The clock's time, in milliseconds.
    pub(crate) fn now(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// Puts the commit cap (`for_commit`) or the headroom above it in
    /// force; does nothing without a cap.
    pub(crate) fn cap(&mut self, for_commit: bool) -> Result<()> {
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

    /// A write transaction for anything but a commit (the headroom above
    /// the size cap in force).
    pub(crate) fn write_tx(&mut self) -> Result<Transaction<'_>> {
        self.cap(false)?;
        self.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| map("begin", e))
    }

    /// Writes `batch` in one transaction, each member in its own savepoint
    /// (a lone member needs none), and answers every member.
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
                    let _ = m.reply.send(r.map(|version| CommitReceipt {
                        version,
                        committed_at: at,
                        durable: true,
                    }));
                }
            }
            Err(e) => {
                for m in batch {
                    let _ = m.reply.send(Err(e.shared_failure()));
                }
            }
        }
    }
}
