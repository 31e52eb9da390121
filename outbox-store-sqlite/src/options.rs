//! How a [`SqliteStore`] is opened: the options and the opening itself
//! (the connection's pragmas, the schema, the worker thread).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outbox_core::{Limits, Result, SharedClock, SystemClock};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::error::{SqliteError, is_busy, map};
use crate::leader::LockFile;
use crate::schema;
use crate::store::SqliteStore;
use crate::worker::WorkerHandle;

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
    /// failing with a retryable `Unavailable`; also how long opening keeps
    /// retrying while other processes open, create or migrate the file.
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
    ///
    /// A file that is not an outbox file is refused before anything writes
    /// to it (see [`crate::schema`]). Opening waits for other processes
    /// opening, creating or migrating the same file (up to the busy
    /// timeout, retrying what SQLite reports busy), so any number of
    /// processes can open a new file at once.
    pub fn open(self) -> Result<SqliteStore> {
        let conn = self.connect_retrying()?;
        let cap_pages = match self.max_size_bytes {
            Some(bytes) => {
                let page: i64 = conn
                    .pragma_query_value(None, "page_size", |r| r.get(0))
                    .map_err(|e| map("page size", e))?;
                Some((i64::try_from(bytes).unwrap_or(i64::MAX) / page.max(512)).max(1))
            }
            None => None,
        };
        let lock = LockFile::for_database(&self.path)?;
        let worker = WorkerHandle::spawn(conn, self.clock, cap_pages, self.max_batch)?;
        Ok(SqliteStore::new(worker, lock, self.path, self.limits, self.synchronous))
    }

    /// [`SqliteOptions::connect`], again while it fails with SQLite's BUSY
    /// or LOCKED (some steps of opening, such as the switch to WAL, fail at
    /// once instead of waiting on the busy handler), until the busy
    /// timeout has passed.
    fn connect_retrying(&self) -> Result<Connection> {
        let deadline = Instant::now() + self.busy_timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            match self.connect() {
                Err(e) if is_busy(&e) && Instant::now() + pause < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// The connection, in WAL mode with the chosen `synchronous`, its
    /// schema checked and migrated.
    fn connect(&self) -> Result<Connection> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        // A WAL left beside the file (by another program, or one that
        // crashed) is not ours to checkpoint into it until the file is
        // known to be ours: until then, closing the connection leaves it.
        let wal_before = wal_path(&self.path).exists();
        let mut conn = Connection::open_with_flags(&self.path, flags).map_err(|e| map("open", e))?;
        if wal_before {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
                .map_err(|e| map("hold checkpoints", e))?;
        }
        conn.busy_timeout(self.busy_timeout).map_err(|e| map("set busy timeout", e))?;
        // Refuse a newer or foreign file before any pragma changes it.
        schema::identify(&conn)?;
        if wal_before {
            conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, false)
                .map_err(|e| map("release checkpoints", e))?;
        }
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(|e| map("enable WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(SqliteError::WalRefused { mode }.into());
        }
        let sync = match self.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(|e| map("set synchronous", e))?;
        schema::migrate(&mut conn)?;
        Ok(conn)
    }
}

/// Where SQLite keeps the WAL of the database at `path`: beside the file
/// the path leads to (SQLite resolves symbolic links).
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).into_os_string();
    wal.push("-wal");
    wal.into()
}
