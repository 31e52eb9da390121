//! What sled 0.34 leaves undone for durability across a power loss, done
//! here.
//!
//! sled makes its log "durable" with `sync_file_range` on Linux, which
//! writes neither the file's metadata (its new size) nor the disk's cache
//! (spacejam/sled#1452); it never fsyncs its `conf` file, its blob files
//! or a directory; a power loss while it writes a snapshot leaves a
//! `snap.*.generating` file that it then reads and refuses as corrupt
//! (spacejam/sled#1527); and a database cut short while being created may
//! not open again. So:
//!
//! - a new database is created in a temporary sibling directory, made
//!   durable (every file and the directory fsynced), renamed into place,
//!   and the parent directory fsynced ([`create`]): the database's path
//!   holds a whole database or none. A leftover temporary directory (one
//!   no creator still holds open) is removed by the next creation;
//! - before sled opens a database, leftover `snap.*.generating` files are
//!   removed ([`remove_partial_snapshots`]): sled renames a snapshot into
//!   place only once it is written and fsynced, so one still generating
//!   is never needed (the previous snapshot, or none, and the log are);
//! - at open, the log, `conf`, the blob files, the directory and its
//!   parent are fsynced ([`Files::open`]); after every transaction, the
//!   blob files it made and their directory ([`Files::sync_new_blobs`]);
//!   after every flush that a reply waits for, the log, before any reply
//!   ([`Files::sync`]).
//!
//! Not covered: a log entry pointing to a blob file that sled writes
//! before the transaction that made the blob ends (its log buffer filled
//! within that transaction) can reach the disk before the blob is fsynced.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_core::{Error, Result};

use crate::error::{SledError, lock_held};
use crate::options::open_waiting;
use crate::schema;

/// sled's directory of blob files (values too large for its log), each
/// named by the log sequence number that refers to it.
const BLOBS: &str = "blobs";

/// The most a creation waits for sled to let go of the database it has
/// just closed in the temporary directory.
const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Maps an I/O failure while doing `what`.
fn file_error(what: &'static str) -> impl Fn(io::Error) -> Error + Copy {
    move |source| SledError::File { what, source }.into()
}

/// The directory holding `path` (`.` for a bare name), if it has one.
fn parent_of(path: &Path) -> Option<PathBuf> {
    path.parent().map(|p| if p.as_os_str().is_empty() { PathBuf::from(".") } else { p.to_owned() })
}

/// fsyncs the directory `dir`, making the names created, renamed or
/// removed in it durable (Unix; elsewhere a directory cannot be opened
/// for it, and this does nothing).
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// fsyncs the file at `path`.
fn sync_file(path: &Path) -> io::Result<()> {
    // Windows flushes only a handle opened for writing.
    OpenOptions::new().read(true).write(!cfg!(unix)).open(path)?.sync_all()
}

/// fsyncs every file under `dir`, its subdirectories, then `dir`.
fn sync_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        } else {
            sync_file(&entry.path())?;
        }
    }
    sync_dir(dir)
}

/// sled's files of an open database that need fsyncs sled does not make.
#[derive(Debug)]
pub(crate) struct Files {
    /// sled's log, opened once.
    db: File,
    blobs: PathBuf,
    /// The highest blob file (by the sequence number it is named by)
    /// fsynced so far.
    blob_high: Option<i64>,
}

impl Files {
    /// Opens the log of the (open) database in `dir` and fsyncs the log,
    /// `conf`, the blob files (and their directory), `dir` and its parent:
    /// what sled recovered and wrote while opening (its snapshot, its
    /// `conf` when it created the database in place) is durable from here.
    pub(crate) fn open(dir: &Path) -> Result<Files> {
        let io = file_error("fsync the database at open");
        let db = OpenOptions::new().read(true).write(true).open(dir.join("db")).map_err(io)?;
        db.sync_all().map_err(io)?;
        match sync_file(&dir.join("conf")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io(e)),
            _ => {}
        }
        let mut files = Files { db, blobs: dir.join(BLOBS), blob_high: None };
        // The blob files, and their directory if it holds any.
        files.sync_new_blobs()?;
        sync_dir(dir).map_err(io)?;
        if let Some(parent) = parent_of(dir) {
            sync_dir(&parent).map_err(io)?;
        }
        Ok(files)
    }

    /// Makes everything sled has written durable: the blob files written
    /// since the last call (and their names), then the log (data and
    /// size). Called after sled's `flush`, before any reply it covers.
    pub(crate) fn sync(&mut self) -> Result<()> {
        self.sync_new_blobs()?;
        self.db.sync_data().map_err(file_error("fsync the log"))
    }

    /// fsyncs the blob files newer than [`Files::blob_high`], then, if
    /// there were any, their directory.
    ///
    /// sled creates a blob file (a tree node larger than a quarter of a
    /// log segment: 128 KiB by default) before it writes the log entry
    /// that points to it, and fsyncs neither; were the entry to reach the
    /// disk and the file's name not, sled would skip that node version at
    /// recovery and open a database with a transaction half applied, or
    /// none at all. The worker calls this after every transaction, so the
    /// file is durable before the flush writes the entry. (An entry sled
    /// writes earlier, because its log buffer filled within the same
    /// transaction, is not covered.)
    pub(crate) fn sync_new_blobs(&mut self) -> Result<()> {
        let io = file_error("fsync a blob file");
        let entries = match fs::read_dir(&self.blobs) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(e)),
        };
        let mut high = self.blob_high;
        for entry in entries {
            let entry = entry.map_err(io)?;
            let Some(lsn) = entry.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else {
                continue;
            };
            if self.blob_high.is_some_and(|h| lsn <= h) {
                continue;
            }
            match sync_file(&entry.path()) {
                // Collected by sled since it was listed: nothing to keep.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                r => r.map_err(io)?,
            }
            high = high.max(Some(lsn));
        }
        if high != self.blob_high {
            sync_dir(&self.blobs).map_err(io)?;
            self.blob_high = high;
        }
        Ok(())
    }
}

/// Whether `path` holds no database yet: it does not exist, or is an
/// empty directory.
pub(crate) fn is_new(path: &Path) -> Result<bool> {
    match fs::read_dir(path) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        // A file where the directory should be: sled's open says what.
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => Ok(false),
        Err(source) => Err(SledError::File { what: "read the database directory", source }.into()),
    }
}

/// The name prefix of the temporary directories creations of `path` use,
/// beside it: `.<name>.creating-`.
fn temp_prefix(path: &Path) -> Option<String> {
    path.file_name().and_then(|n| n.to_str()).map(|n| format!(".{n}.creating-"))
}

/// Creates the database at `path` (which [`is_new`]) durably: sled
/// creates it, with this build's layout, in a temporary sibling directory
/// (configured by `config`); once sled has closed it, every file and the
/// directory are fsynced, the directory is renamed to `path` and the
/// parent directory fsynced. A crash at any point leaves `path` as it was
/// (no database) or holding the whole new one; the temporary directory it
/// may leave is removed by the next creation. When another opener moved
/// its new database into place first, that one stands and this one is
/// removed. A `path` without a final name (`..`) is left to sled.
pub(crate) fn create(config: impl Fn(&Path) -> sled::Config, path: &Path) -> Result<()> {
    let (Some(prefix), Some(parent)) = (temp_prefix(path), parent_of(path)) else {
        return Ok(());
    };
    create_dir_all_durable(&parent)?;
    remove_leftovers(&parent, &prefix);
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = parent.join(format!("{prefix}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let r = build(&config(&tmp), &tmp).and_then(|lock| {
        // Windows refuses to rename a directory with a file open in it.
        #[cfg(not(unix))]
        drop(lock);
        let moved = move_into_place(&tmp, path, &parent);
        #[cfg(unix)]
        drop(lock);
        moved
    });
    match r {
        Ok(true) => Ok(()),
        Ok(false) => {
            let _ = fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Creates the database in `tmp`, closes it, and fsyncs it whole. Returns
/// its `db` file holding sled's lock (taken as soon as sled lets go of
/// it), so that no other creation removes it as a leftover.
fn build(config: &sled::Config, tmp: &Path) -> Result<File> {
    let db = open_waiting(config, tmp, Duration::ZERO)?;
    // The layout, written and flushed.
    let trees = schema::open_trees(&db)?;
    drop(trees);
    drop(db);
    // sled's last writes (its close) are done once it lets go of its
    // lock.
    let io = file_error("lock the new database");
    let lock = File::open(tmp.join("db")).map_err(io)?;
    let deadline = Instant::now() + RELEASE_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(Error::Unavailable {
                    message: format!("sled did not close the new database at {} in time", tmp.display()),
                    source: None,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    sync_tree(tmp).map_err(file_error("fsync the new database"))?;
    Ok(lock)
}

/// Renames the built database `tmp` to `path` and fsyncs `parent`.
/// `Ok(false)` when it was not moved and `path` is to be opened as it is:
/// another opener's new database is there, or `path` is an empty
/// directory that cannot be replaced (a mount point): sled then creates
/// the database in it, in place.
fn move_into_place(tmp: &Path, path: &Path, parent: &Path) -> Result<bool> {
    // Unix's rename replaces an empty directory; elsewhere it is removed
    // first (this fails, harmlessly, when it is not empty or not there).
    #[cfg(not(unix))]
    let _ = fs::remove_dir(path);
    match fs::rename(tmp, path) {
        Ok(()) => {}
        // Another opener's new database is in place: it stands.
        Err(e) if matches!(e.kind(), io::ErrorKind::DirectoryNotEmpty | io::ErrorKind::AlreadyExists) => {
            return Ok(false);
        }
        Err(e) if path.is_dir() => {
            tracing::warn!(target: "outbox", path = %path.display(), error = %e, "outbox: cannot move the new sled database over its empty directory; creating it in place (a crash during this first open can leave it unopenable)");
            return Ok(false);
        }
        Err(source) => {
            return Err(SledError::File { what: "move the new database into place", source }.into());
        }
    }
    sync_dir(parent).map_err(file_error("fsync the directory of the new database"))?;
    Ok(true)
}

/// Creates `dir` and the missing directories above it, each made durable
/// (its parent fsynced).
fn create_dir_all_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let io = file_error("create the database's parent directory");
    let up = parent_of(dir);
    if let Some(up) = &up {
        create_dir_all_durable(up)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(e)),
    }
    match up {
        Some(up) => sync_dir(&up).map_err(io),
        None => Ok(()),
    }
}

/// Removes the temporary directories named `<prefix>*` in `parent` that
/// no creator holds open (left by a creation cut short). Best effort: one
/// that cannot be removed is logged and left.
fn remove_leftovers(parent: &Path, prefix: &str) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix)) {
            continue;
        }
        let p = entry.path();
        if lock_held(&p) {
            continue; // a creation at work
        }
        match fs::remove_dir_all(&p) {
            Ok(()) => {
                tracing::info!(target: "outbox", path = %p.display(), "outbox: removed a sled database creation cut short");
            }
            Err(e) => {
                tracing::warn!(target: "outbox", path = %p.display(), error = %e, "outbox: cannot remove a sled database creation cut short");
            }
        }
    }
}

/// Removes the `snap.*.generating` files in the database directory `dir`
/// (a snapshot sled was writing when the machine stopped), under sled's
/// lock so that no live handle's snapshot is touched: sled writes
/// snapshots only while opening, holding the lock. When another handle
/// holds it, nothing is removed (sled's open then reports the held lock).
pub(crate) fn remove_partial_snapshots(dir: &Path) -> Result<()> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(()); // no database yet, or not a directory: sled's open says what
    };
    let partial: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| n.starts_with("snap.") && n.ends_with(".generating"))
        })
        .map(|e| e.path())
        .collect();
    if partial.is_empty() {
        return Ok(());
    }
    let io = file_error("remove a partial sled snapshot");
    let lock = match File::open(dir.join("db")) {
        Ok(f) => Some(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(e)),
    };
    if let Some(f) = &lock {
        match f.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(()),
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    for p in &partial {
        match fs::remove_file(p) {
            Ok(()) => {
                tracing::warn!(target: "outbox", path = %p.display(), "outbox: removed a partial sled snapshot (a crash while sled wrote it)");
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
    }
    sync_dir(dir).map_err(io)?;
    drop(lock); // let go of the lock: sled takes it next
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use futures::executor::block_on;
    use outbox_core::prelude::*;
    use outbox_core::{ActorId, Commit, NewEvent, Version};

    use crate::SledStore;

    fn commit_one(store: &SledStore, v: u64) {
        let a = ActorId::new("a").unwrap();
        let e = NewEvent::json(a.clone(), "T", &v).unwrap();
        block_on(store.put_state_and_events(Commit::state(a, Version(v - 1), vec![1]).event(e))).unwrap();
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        n.sort();
        n
    }

    /// A creation cut short (its temporary directory left half written)
    /// is removed by the next open, which creates the database whole; a
    /// creation leaves nothing beside the database.
    #[test]
    fn a_creation_cut_short_is_removed_and_the_database_created() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join(".outbox.sled.creating-1-0");
        std::fs::create_dir_all(left.join("blobs")).unwrap();
        std::fs::write(left.join("conf"), b"segment_size: 5").unwrap();
        std::fs::write(left.join("db"), [0u8; 100]).unwrap();
        let path = dir.path().join("outbox.sled");
        let store = SledStore::open(&path).unwrap();
        commit_one(&store, 1);
        drop(store);
        assert_eq!(names(dir.path()), vec!["outbox.sled"]);
        let store = SledStore::open(&path).unwrap();
        assert_eq!(block_on(store.current_version(&ActorId::new("a").unwrap())).unwrap(), Version(1));
    }

    /// An empty directory at the path (one made for the database) is
    /// where the new database goes.
    #[test]
    fn an_empty_directory_becomes_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("outbox.sled");
        std::fs::create_dir_all(&path).unwrap();
        commit_one(&SledStore::open(&path).unwrap(), 1);
        assert!(path.join("db").is_file() && path.join("conf").is_file());
        assert_eq!(names(path.parent().unwrap()), vec!["outbox.sled"]);
        commit_one(&SledStore::open(&path).unwrap(), 2);
    }

    /// A snapshot sled was writing when the machine stopped (named
    /// `.generating`, its bytes not all on disk) sorts after the finished
    /// one; sled would read it and refuse the database as corrupted. It
    /// is removed at open and the database opens with everything.
    #[test]
    fn a_partial_snapshot_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox.sled");
        let store = SledStore::open(&path).unwrap();
        commit_one(&store, 1);
        drop(store);
        let partial = path.join("snap.FFFFFFFFFFFFFFFF.generating");
        std::fs::write(&partial, [0u8; 40]).unwrap();
        let store = SledStore::open(&path).unwrap();
        assert!(!partial.exists());
        assert_eq!(block_on(store.current_version(&ActorId::new("a").unwrap())).unwrap(), Version(1));
        commit_one(&store, 2);
    }
}
