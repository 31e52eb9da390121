//! Enlisting in the application's own transaction: [`SqliteStore::enlist`]
//! writes a commit through a transaction the application opened on the
//! outbox file, so the application's tables and the outbox commit (or
//! roll back) together; [`Enlisted::commit`] commits it and calls the
//! store's [listeners](SqliteStore::listen), which wake forwarders.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use outbox_core::{Commit, CommitReceipt, Error, Result, Timestamp};
use rusqlite::{Connection, Transaction};

use crate::commit::write;
use crate::error::map;
use crate::schema::{SCHEMA_VERSION, read_version};
use crate::store::SqliteStore;
use crate::worker::lock;

type Callback = Arc<dyn Fn() + Send + Sync>;

/// The call-backs of one store handle, by subscription number.
#[derive(Default)]
pub(crate) struct Listeners {
    next: Mutex<u64>,
    all: Mutex<Vec<(u64, Callback)>>,
}

impl Listeners {
    fn fire(&self) {
        // Called outside the lock: a call-back may listen or stop.
        let all: Vec<Callback> = lock(&self.all).iter().map(|(_, f)| f.clone()).collect();
        for f in all {
            f();
        }
    }
}

/// A call-back registered with [`SqliteStore::listen`]; dropping it
/// removes it.
pub struct CommitListener {
    id: u64,
    listeners: Arc<Listeners>,
}

impl fmt::Debug for CommitListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitListener").field("id", &self.id).finish()
    }
}

impl Drop for CommitListener {
    fn drop(&mut self) {
        lock(&self.listeners.all).retain(|(id, _)| *id != self.id);
    }
}

/// A commit written inside the application's transaction, not yet
/// committed: commit the transaction through [`Enlisted::commit`] (which
/// then wakes the store's listeners), or roll it back (or drop it), and
/// the outbox commit goes with it.
#[must_use = "commit the transaction through `Enlisted::commit`, or it is rolled back when dropped"]
pub struct Enlisted {
    receipt: CommitReceipt,
    listeners: Arc<Listeners>,
}

impl fmt::Debug for Enlisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enlisted").field("receipt", &self.receipt).finish_non_exhaustive()
    }
}

impl Enlisted {
    /// What the commit will be once the transaction commits: the actor's
    /// new version (if it wrote a state) and the time it was written at.
    pub fn receipt(&self) -> &CommitReceipt {
        &self.receipt
    }

    /// Commits `tx` (the transaction the commit was enlisted in), then
    /// calls the store's [listeners](SqliteStore::listen).
    ///
    /// # Errors
    ///
    /// The commit's failure (`Unavailable` when another connection holds
    /// the file busy, `QuotaExceeded` on a full disk): nothing of the
    /// transaction is committed.
    pub fn commit(self, tx: Transaction<'_>) -> Result<CommitReceipt> {
        tx.commit().map_err(|e| map("commit the enlisted transaction", e))?;
        self.listeners.fire();
        Ok(self.receipt)
    }
}

/// Canonical form of `p`, or `p` as it is when it cannot be resolved.
fn canonical(p: &Path) -> std::path::PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

impl SqliteStore {
    /// Writes `commit` (the actor's state, if any, its events and inbox
    /// marks) through the application's open transaction `tx` on this
    /// store's file, next to whatever the application wrote there: the
    /// two commit or roll back together. Commit with
    /// [`Enlisted::commit`], which then wakes this store's
    /// [listeners](SqliteStore::listen) (or commit `tx` yourself and call
    /// [`notify_committed`](SqliteStore::notify_committed); a forwarder
    /// that is not woken finds the events at its next poll).
    ///
    /// `tx` is any connection to the file with a transaction open
    /// (a [`rusqlite::Transaction`] or `Savepoint`), opened by the
    /// application with its own settings: a busy timeout, since this
    /// store's own connection writes to the file too, and
    /// `BEGIN IMMEDIATE` ([`rusqlite::TransactionBehavior::Immediate`]) so
    /// the transaction does not fail on its first write when another
    /// commit got in first. How durable the commit is follows that
    /// connection's `synchronous` setting (`FULL` for a commit that
    /// survives power loss; the receipt's `durable` says which).
    ///
    /// The outbox's writes run in a savepoint: if they fail, they are
    /// rolled back and `tx` is left as it was, still open, for the
    /// application to commit or roll back. Events written this way are
    /// ordered with every other commit to the file (SQLite has one writer
    /// at a time): per key, in the order their transactions committed.
    ///
    /// # Errors
    ///
    /// What [`put_state_and_events`](outbox_core::StateStore::put_state_and_events)
    /// returns (`Conflict`, `DuplicateEvent`, `AlreadyProcessed`, invalid
    /// input); `InvalidInput` when `tx` has no transaction open or is on
    /// another file, or the file's schema is older than this build's
    /// (open the store on it first); `SchemaTooNew` for a newer one;
    /// `PermissionDenied` on a store opened read-only.
    pub fn enlist(&self, tx: &Connection, commit: Commit) -> Result<Enlisted> {
        self.writable("enlist")?;
        if tx.is_autocommit() {
            return Err(Error::invalid_input(
                "enlist: the connection has no transaction open (begin one, and commit it through Enlisted::commit)",
            ));
        }
        if let Some(on) = tx.path().filter(|p| !p.is_empty())
            && canonical(Path::new(on)) != canonical(&self.path)
        {
            return Err(Error::invalid_input(format!(
                "enlist: the transaction is on {on}, not on the store's file {}",
                self.path.display()
            )));
        }
        match read_version(tx)? {
            v if v == SCHEMA_VERSION => {}
            v if v > SCHEMA_VERSION => {
                return Err(Error::SchemaTooNew { found: v, supported: SCHEMA_VERSION });
            }
            v => {
                return Err(Error::invalid_input(format!(
                    "enlist: the file's outbox schema is version {v}, not {SCHEMA_VERSION}: open the store on it first"
                )));
            }
        }
        commit.validate(&self.limits)?;
        let headers =
            commit.events.iter().map(|e| serde_json::to_string(&e.headers)).collect::<Result<Vec<_>, _>>()?;
        let synchronous: i64 = tx
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .map_err(|e| map("read synchronous", e))?;
        let now = self.worker.now();
        tx.execute_batch("SAVEPOINT outbox_enlist").map_err(|e| map("enlist", e))?;
        match write(tx, &commit, &headers, now) {
            Ok(version) => {
                tx.execute_batch("RELEASE outbox_enlist").map_err(|e| map("enlist", e))?;
                Ok(Enlisted {
                    receipt: CommitReceipt {
                        version,
                        committed_at: Timestamp::from_millis(now),
                        // FULL (2) or EXTRA (3), in WAL mode.
                        durable: synchronous >= 2,
                    },
                    listeners: self.listeners.clone(),
                })
            }
            Err(e) => {
                tx.execute_batch("ROLLBACK TO outbox_enlist; RELEASE outbox_enlist")
                    .map_err(|e| map("roll back the enlisted writes", e))?;
                Err(e)
            }
        }
    }

    /// Calls `on_commit` after every commit enlisted through this handle
    /// and committed with [`Enlisted::commit`] (or announced with
    /// [`notify_committed`](SqliteStore::notify_committed)), on the
    /// committing thread; for waking a forwarder
    /// (`forwarder.waker().wake()`). Dropping the returned listener stops
    /// the calls. Commits made through the store's own
    /// `put_state_and_events` are not announced here (their caller wakes
    /// the forwarder), nor are other processes' commits (the forwarder's
    /// polling finds them).
    pub fn listen(&self, on_commit: impl Fn() + Send + Sync + 'static) -> CommitListener {
        let id = {
            let mut next = lock(&self.listeners.next);
            *next += 1;
            *next
        };
        lock(&self.listeners.all).push((id, Arc::new(on_commit)));
        CommitListener { id, listeners: self.listeners.clone() }
    }

    /// Calls the [listeners](SqliteStore::listen): for an application
    /// that committed an enlisted transaction itself rather than through
    /// [`Enlisted::commit`].
    pub fn notify_committed(&self) {
        self.listeners.fire();
    }
}
