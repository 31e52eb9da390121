//! Leadership: an OS file lock on `<file>.lock` (one leader among every
//! process on the file) plus the epoch row `outbox_leader` (fencing).

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use outbox_core::rules::check_fence;
use outbox_core::{Epoch, LeaderGrant, Result, Timestamp};
use rusqlite::{Connection, params};

use crate::error::{io_error, map};
use crate::worker::{Worker, lock};

/// The OS lock on `<file>.lock`: held by at most one handle of one process
/// at a time, released by the OS when that process dies.
#[derive(Debug)]
pub(crate) struct LockFile {
    path: PathBuf,
    held: Mutex<Option<File>>,
}

impl LockFile {
    /// The lock beside the database file `db`.
    pub(crate) fn beside(db: &Path) -> Self {
        let mut path = db.to_path_buf().into_os_string();
        path.push(".lock");
        LockFile { path: path.into(), held: Mutex::new(None) }
    }

    /// Takes the lock if this handle does not hold it: `false` if another
    /// handle or process does.
    pub(crate) fn take(&self) -> Result<bool> {
        let mut held = lock(&self.held);
        if held.is_some() {
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
                *held = Some(file);
                Ok(true)
            }
            Err(TryLockError::WouldBlock) => Ok(false),
            Err(TryLockError::Error(e)) => Err(io_error("lock the leadership lock file", e)),
        }
    }

    /// Lets the lock go, if this handle holds it.
    pub(crate) fn release(&self) {
        if let Some(file) = lock(&self.held).take() {
            let _ = file.unlock();
        }
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
