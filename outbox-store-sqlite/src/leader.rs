//! Leadership: an OS lock that follows the database file's identity (one
//! leader among every process on the file, whatever path each opened it
//! by) plus the epoch row `outbox_leader` (fencing).
//!
//! On Linux the lock is a `flock` on the database file itself, so it is
//! the file (its inode) that is locked, not a path: a symbolic link, a hard
//! link or another mount of the same file meets the same lock, on any
//! local file system (SQLite's WAL mode needs one anyway). `flock` locks
//! are separate from the POSIX record locks SQLite takes on the same file.
//!
//! POSIX record locks have a trap: closing *any* descriptor of a file drops
//! every record lock the process holds on it, SQLite's included. So the
//! descriptor the lock is taken on is opened once per file per process and
//! kept open for the life of the process (one descriptor per database file
//! a process has opened a store on), shared by every store of the process
//! on that file; a process-wide table says which of them leads. Only the
//! descriptor of a file that is gone (deleted) and no store uses any more
//! is closed.
//!
//! Elsewhere (where `flock` and record locks may be one mechanism) the
//! lock is a file beside the database's canonical path,
//! `<canonical path>.lock`: one leader whatever symbolic link leads to the
//! file, but a hard link is another path there.
//!
//! Leadership also takes `<path>.lock` beside the path the store was opened
//! with, the lock file builds before schema version 3 took alone: a process
//! of such a build still running on the file keeps excluding this one (and
//! this one it).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use outbox_core::rules::check_fence;
use outbox_core::{Epoch, LeaderGrant, Result, Timestamp};
use rusqlite::{Connection, params};

use crate::error::{io_error, map};
use crate::worker::{Worker, lock};

/// An OS lock on a file at a path: held by at most one open of it at a
/// time, released by the OS when the process dies.
#[derive(Debug)]
struct PathLock {
    path: PathBuf,
    held: Option<File>,
}

impl PathLock {
    fn new(path: PathBuf) -> Self {
        PathLock { path, held: None }
    }

    /// Takes the lock if not held here: `false` if another open holds it.
    fn take(&mut self) -> Result<bool> {
        if self.held.is_some() {
            return Ok(true);
        }
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.path)
            .map_err(|e| io_error("open the leadership lock file", e))?;
        match file.try_lock() {
            Ok(()) => {
                self.held = Some(file);
                Ok(true)
            }
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(io_error("lock the leadership lock file", e)),
        }
    }

    /// Lets the lock go, if held here (closing the lock file, which is not
    /// a database file).
    fn release(&mut self) {
        if let Some(file) = self.held.take() {
            let _ = file.unlock();
        }
    }
}

/// `path` with `suffix` appended to its last component.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    s.into()
}

#[cfg(any(target_os = "linux", target_os = "android"))]
mod file_lock {
    //! The `flock` on the database file, shared by the stores of a process.

    use std::collections::HashMap;
    use std::fs::{File, TryLockError};
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, OnceLock};

    use outbox_core::Result;

    use crate::error::io_error;
    use crate::worker::lock;

    /// A file's identity: its device and inode.
    type Identity = (u64, u64);

    /// One database file, as the stores of this process share it.
    #[derive(Debug)]
    struct Shared {
        /// The descriptor the lock is taken on; open while the file lives
        /// (see the module docs of `leader`).
        file: File,
        /// The store (handle number) of this process that leads, if any.
        leader: Option<u64>,
        /// How many stores of this process use the file.
        handles: usize,
    }

    type Table = Mutex<HashMap<Identity, Arc<Mutex<Shared>>>>;

    fn table() -> &'static Table {
        static TABLE: OnceLock<Table> = OnceLock::new();
        TABLE.get_or_init(Table::default)
    }

    static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

    /// One store's share of the lock on its database file.
    #[derive(Debug)]
    pub(super) struct FileLock {
        handle: u64,
        shared: Arc<Mutex<Shared>>,
    }

    impl FileLock {
        /// The lock on the database file `db` (which exists).
        pub(super) fn new(db: &Path) -> Result<Self> {
            let mut table = lock(table());
            // Close the descriptors of deleted files no store uses: nothing
            // can open them again, so no lock of this process on them
            // matters any more.
            table.retain(|_, s| {
                let s = lock(s);
                s.handles > 0 || s.file.metadata().is_ok_and(|m| m.nlink() > 0)
            });
            let meta = std::fs::metadata(db).map_err(|e| io_error("read the database file's identity", e))?;
            let mut id = (meta.dev(), meta.ino());
            if !table.contains_key(&id) {
                let file =
                    File::open(db).map_err(|e| io_error("open the database file for leadership", e))?;
                let meta = file.metadata().map_err(|e| io_error("read the database file's identity", e))?;
                // The file at `db` was replaced between the two looks: use
                // the one opened.
                id = (meta.dev(), meta.ino());
                match table.get(&id) {
                    // Already known: closing this descriptor would drop
                    // this process's record locks on the file, so it is
                    // left open (a race that leaks one descriptor).
                    Some(_) => std::mem::forget(file),
                    None => {
                        table.insert(id, Arc::new(Mutex::new(Shared { file, leader: None, handles: 0 })));
                    }
                }
            }
            let shared = table
                .get(&id)
                .cloned()
                .ok_or_else(|| io_error("register the database file", std::io::ErrorKind::NotFound.into()))?;
            lock(&shared).handles += 1;
            Ok(FileLock { handle: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed), shared })
        }

        /// Takes the lock for this store: `false` if another store of this
        /// process, or another process, leads.
        pub(super) fn take(&self, also: impl FnOnce() -> Result<bool>) -> Result<bool> {
            let mut s = lock(&self.shared);
            if let Some(h) = s.leader {
                return Ok(h == self.handle);
            }
            match s.file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => return Ok(false),
                Err(TryLockError::Error(e)) => {
                    return Err(io_error("lock the database file for leadership", e));
                }
            }
            match also() {
                Ok(true) => {
                    s.leader = Some(self.handle);
                    Ok(true)
                }
                other => {
                    let _ = s.file.unlock();
                    other
                }
            }
        }

        /// Lets the lock go, if this store holds it.
        pub(super) fn release(&self) {
            let mut s = lock(&self.shared);
            if s.leader == Some(self.handle) {
                s.leader = None;
                let _ = s.file.unlock();
            }
        }
    }

    impl Drop for FileLock {
        fn drop(&mut self) {
            self.release();
            lock(&self.shared).handles -= 1;
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
mod file_lock {
    //! The lock file beside the database's canonical path.

    use std::path::Path;
    use std::sync::Mutex;

    use outbox_core::Result;

    use super::{PathLock, suffixed};
    use crate::error::io_error;
    use crate::worker::lock;

    /// One store's lock on `<canonical path>.lock`.
    #[derive(Debug)]
    pub(super) struct FileLock(Mutex<PathLock>);

    impl FileLock {
        pub(super) fn new(db: &Path) -> Result<Self> {
            let canonical =
                std::fs::canonicalize(db).map_err(|e| io_error("resolve the database path", e))?;
            Ok(FileLock(Mutex::new(PathLock::new(suffixed(&canonical, ".lock")))))
        }

        pub(super) fn take(&self, also: impl FnOnce() -> Result<bool>) -> Result<bool> {
            let mut l = lock(&self.0);
            if l.held.is_some() {
                return Ok(true);
            }
            if !l.take()? {
                return Ok(false);
            }
            match also() {
                Ok(true) => Ok(true),
                other => {
                    l.release();
                    other
                }
            }
        }

        pub(super) fn release(&self) {
            lock(&self.0).release();
        }
    }
}

/// A store's leadership lock: the lock on its database file (see the
/// module docs) and the `<path>.lock` of older builds, held together.
#[derive(Debug)]
pub(crate) struct LockFile {
    file: file_lock::FileLock,
    legacy: Mutex<PathLock>,
}

impl LockFile {
    /// The lock of the database file at `db` (which exists).
    pub(crate) fn for_database(db: &Path) -> Result<Self> {
        Ok(LockFile {
            file: file_lock::FileLock::new(db)?,
            legacy: Mutex::new(PathLock::new(suffixed(db, ".lock"))),
        })
    }

    /// Takes the lock if this handle does not hold it: `false` if another
    /// handle or process does.
    pub(crate) fn take(&self) -> Result<bool> {
        self.file.take(|| lock(&self.legacy).take())
    }

    /// Lets the lock go, if this handle holds it.
    pub(crate) fn release(&self) {
        lock(&self.legacy).release();
        self.file.release();
    }
}

/// The current leader's epoch (`None` when nobody leads), as the epoch row
/// says inside the transaction `c`.
pub(crate) fn current_epoch(c: &Connection) -> Result<Option<Epoch>> {
    let (holder, epoch): (Option<String>, i64) = c
        .prepare_cached("SELECT holder, epoch FROM outbox_leader WHERE id = 1")
        .and_then(|mut st| st.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
        .map_err(|e| map("read leader", e))?;
    Ok(holder.map(|_| Epoch(epoch as u64)))
}

impl Worker {
    /// Grants leadership to `holder` unless a live grant of another holder
    /// stands; the caller holds the file lock.
    pub(crate) fn acquire(&mut self, holder: &str, ttl: Duration) -> Result<Option<LeaderGrant>> {
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
                 WHERE status IN ('pending', 'dead') AND lease_until IS NOT NULL",
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

    /// Extends `grant` by `ttl` from now, if it is still current.
    pub(crate) fn renew(&mut self, grant: &LeaderGrant, ttl: Duration) -> Result<LeaderGrant> {
        let now = self.now();
        let tx = self.write_tx()?;
        check_fence(grant, current_epoch(&tx)?)?;
        let expires_at = Timestamp::from_millis(now).saturating_add(ttl);
        tx.execute("UPDATE outbox_leader SET expires_at = ?1 WHERE id = 1", [expires_at.as_millis()])
            .map_err(|e| map("renew leader", e))?;
        tx.commit().map_err(|e| map("commit renew", e))?;
        Ok(LeaderGrant { expires_at, ..grant.clone() })
    }

    /// Releases `grant` if current; says whether this handle now holds no
    /// grant (so the file lock can go).
    pub(crate) fn release_leadership(&mut self, grant: &LeaderGrant) -> Result<bool> {
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
}
