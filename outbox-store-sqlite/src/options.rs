//! How a [`SqliteStore`] is opened: the options and the opening itself
//! (the connection's pragmas, the schema, the worker thread).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outbox_core::{Error, Limits, Result, SharedClock, SystemClock};
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};

use crate::error::{SqliteError, is_busy, map};
use crate::leader::LockFile;
use crate::schema::{self, SCHEMA_VERSION};
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
    read_only: bool,
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
            .field("read_only", &self.read_only)
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
            read_only: false,
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

    /// Opens the store read-only (for inspection): see
    /// [`SqliteOptions::open`].
    ///
    /// A read-only open never creates the file, never migrates it and
    /// writes no pragma that changes it: the connection is opened with
    /// `SQLITE_OPEN_READONLY` and `PRAGMA query_only = 1`. A file with a
    /// `-wal` beside it (a process has it open, or one crashed) is read
    /// through the WAL, as any reader does; a cleanly closed file (no
    /// `-wal`) is read as `immutable`, so no `-wal` or `-shm` is created
    /// beside it (a writer that opens the file afterwards is not seen by
    /// this store). Refusals, with nothing written:
    ///
    /// - a missing path, a directory or anything but a file:
    ///   `InvalidInput` (`PermissionDenied` when the path cannot be read);
    /// - a file that is not an outbox file (another program's database,
    ///   an empty file, not SQLite at all): `Corrupted`;
    /// - an outbox file of a newer schema: `SchemaTooNew`; of an older one:
    ///   `InvalidInput` (reading it needs a migration: open it once with
    ///   [`SqliteOptions::open`] to upgrade it).
    ///
    /// Every write through a read-only store (a commit, leadership,
    /// delivery, requeueing, pruning) fails with `PermissionDenied`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Opens (creating if needed, migrating if older) the store; with
    /// [`SqliteOptions::read_only`], opens an existing outbox file for
    /// reading only.
    ///
    /// A file that is not an outbox file is refused before anything writes
    /// to it (see [`crate::schema`]). Opening waits for other processes
    /// opening, creating or migrating the same file (up to the busy
    /// timeout, retrying what SQLite reports busy), so any number of
    /// processes can open a new file at once.
    pub fn open(self) -> Result<SqliteStore> {
        if self.read_only {
            return self.open_read_only();
        }
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
        Ok(SqliteStore::new(worker, lock, self.path, self.limits, self.synchronous, false))
    }

    /// [`SqliteOptions::open`] with [`SqliteOptions::read_only`].
    fn open_read_only(self) -> Result<SqliteStore> {
        let conn = self.connect_read_only()?;
        let lock = LockFile::for_database(&self.path)?;
        let worker = WorkerHandle::spawn(conn, self.clock, None, self.max_batch)?;
        Ok(SqliteStore::new(worker, lock, self.path, self.limits, self.synchronous, true))
    }

    /// A read-only connection to the existing outbox file at the path, of
    /// this build's schema version (see [`SqliteOptions::read_only`]).
    fn connect_read_only(&self) -> Result<Connection> {
        let shown = self.path.display();
        let meta = std::fs::metadata(&self.path).map_err(|e| match e.kind() {
            io::ErrorKind::PermissionDenied => Error::PermissionDenied {
                message: format!("cannot read {shown}: {e}"),
                source: Some(Box::new(e)),
            },
            _ => Error::invalid_input(format!("no outbox file at {shown}: {e}")),
        })?;
        if meta.is_dir() {
            return Err(Error::invalid_input(format!("{shown} is a directory, not an outbox file")));
        }
        if !meta.is_file() {
            return Err(Error::invalid_input(format!("{shown} is not a regular file")));
        }
        // Without a `-wal` no process has the file open (a connection in
        // WAL mode keeps one while it is open) and everything is in the
        // file itself: read it as immutable, so SQLite creates no `-wal`
        // and `-shm` beside it. With one, read through it as any reader.
        let immutable = !wal_path(&self.path).exists();
        let uri = read_only_uri(&self.path, immutable);
        let flags =
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(uri, flags).map_err(|e| map("open read-only", e))?;
        conn.busy_timeout(self.busy_timeout).map_err(|e| map("set busy timeout", e))?;
        conn.pragma_update(None, "query_only", true).map_err(|e| map("set query_only", e))?;
        match schema::identify(&conn)? {
            schema::Found::Outbox(SCHEMA_VERSION) => Ok(conn),
            schema::Found::Outbox(found) => Err(Error::invalid_input(format!(
                "{shown} has outbox schema version {found}, older than the {SCHEMA_VERSION} this build \
                 reads; a read-only open does not migrate: open it with the library once to upgrade it"
            ))),
            schema::Found::Empty => Err(Error::Corrupted {
                message: format!("not an outbox file, left as it is: {shown} is empty"),
                source: None,
            }),
        }
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

/// The `file:` URI SQLite opens `path` by, read-only (`mode=ro`) and, if
/// `immutable`, as a file nothing changes: every byte of the path but
/// unreserved ones is percent-encoded.
fn read_only_uri(path: &Path, immutable: bool) -> String {
    #[cfg(unix)]
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec();
    #[cfg(not(unix))]
    let bytes = path.to_string_lossy().replace('\\', "/").into_bytes();
    let mut uri = String::from("file:");
    for b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'-' | b'_' | b'~') {
            uri.push(char::from(b));
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str(if immutable { "?mode=ro&immutable=1" } else { "?mode=ro" });
    uri
}

/// Where SQLite keeps the WAL of the database at `path`: beside the file
/// the path leads to (SQLite resolves symbolic links).
fn wal_path(path: &Path) -> PathBuf {
    let mut wal = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()).into_os_string();
    wal.push("-wal");
    wal.into()
}
