//! How to open a [`SledStore`]: [`SledOptions`], [`FlushPolicy`], and
//! opening sled's directory (waiting out a lock a closing handle still
//! holds).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use outbox_core::{Error, Limits, Result, SharedClock, SystemClock};

use crate::error::{SledError, lock_held};
use crate::store::SledStore;
use crate::{durable, worker};

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
    /// itself not durable
    /// ([`Capabilities::durable`](outbox_core::Capabilities::durable) is
    /// false).
    Interval(Duration),
}

/// How to open a [`SledStore`].
#[derive(Clone)]
pub struct SledOptions {
    pub(crate) path: PathBuf,
    pub(crate) flush: FlushPolicy,
    pub(crate) clock: SharedClock,
    pub(crate) limits: Limits,
    pub(crate) cache_capacity: Option<u64>,
    pub(crate) max_batch: usize,
    pub(crate) max_size_bytes: Option<u64>,
    pub(crate) lock_timeout: Duration,
    pub(crate) segment_size: Option<usize>,
    pub(crate) read_only: bool,
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
            .field("segment_size", &self.segment_size)
            .field("read_only", &self.read_only)
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
            segment_size: None,
            read_only: false,
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

    /// sled's log segment size in bytes (a power of two from 256 B to
    /// 16 MiB; sled's default is 512 KiB), fixed when the database is
    /// created: opening it with another is refused as `Corrupted`. For
    /// tests: small segments make sled keep most tree nodes in blob files
    /// (a node larger than a quarter of a segment) and reuse segments
    /// early, as a large database with large values does.
    #[doc(hidden)]
    pub fn segment_size(mut self, bytes: usize) -> Self {
        self.segment_size = Some(bytes);
        self
    }

    /// Opens an existing database for reading only: nothing is created,
    /// upgraded or written where `path` points. sled 0.34 cannot open a
    /// database without writing to it, so the store opens a private copy
    /// of the directory (taken at open, removed when the store is
    /// dropped) and shows what the database held then; a directory
    /// another process has open is copied as it stands and recovered
    /// like a crash would be.
    ///
    /// Refused, with the directory left byte-for-byte as it was: a
    /// missing path or a file (`InvalidInput`), a directory that is not a
    /// sled database or a sled database that is not an outbox
    /// (`Corrupted`), a newer layout (`SchemaTooNew`). Every write
    /// through the store (a commit, leadership, delivery, requeueing,
    /// pruning) fails with `PermissionDenied`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Opens (creating if needed) the database; with
    /// [`SledOptions::read_only`], a copy of an existing one for reading.
    ///
    /// # Errors
    ///
    /// [`Error::SchemaTooNew`] for a database written by a newer layout
    /// (left untouched), [`Error::Corrupted`] for a sled database that is
    /// not an outbox or does not decode, [`Error::Unavailable`] when another
    /// process or handle has it open, [`Error::PermissionDenied`] when the
    /// directory cannot be written.
    pub fn open(self) -> Result<SledStore> {
        if self.read_only {
            return crate::read_only::open(self);
        }
        if durable::is_new(&self.path)? {
            durable::create(|p| self.sled_config(p), &self.path)?;
        }
        let db = open_waiting(&self.sled_config(&self.path), &self.path, self.lock_timeout)?;
        let (tx, handle, counts) = worker::start(db, &self)?;
        Ok(SledStore::new(tx, handle, counts, self))
    }

    /// sled's configuration for a database directory at `path`.
    pub(crate) fn sled_config(&self, path: &Path) -> sled::Config {
        let mut config = sled::Config::new().path(path).mode(sled::Mode::HighThroughput);
        if let Some(n) = self.segment_size {
            config = config.segment_size(n);
        }
        if let Some(c) = self.cache_capacity {
            config = config.cache_capacity(c);
        }
        match self.flush {
            // Flushes happen on the worker, before replies.
            FlushPolicy::EveryWrite => config.flush_every_ms(None),
            FlushPolicy::Interval(d) => config.flush_every_ms(Some(d.as_millis().max(1) as u64)),
        }
    }
}

/// Opens sled, retrying every 10 ms for up to `wait` while another handle
/// holds the directory lock (sled's background threads let go of a closed
/// database a moment after the handle is dropped). A snapshot sled was
/// still writing when the machine stopped is removed first
/// ([`durable::remove_partial_snapshots`]).
pub(crate) fn open_waiting(config: &sled::Config, path: &Path, wait: Duration) -> Result<sled::Db> {
    durable::remove_partial_snapshots(path)?;
    let deadline = Instant::now() + wait;
    // The lock may be let go between sled's attempt and the probe that
    // tells why it failed: one more attempt then says which it was.
    let mut tried_again = false;
    loop {
        match open_db(config, path) {
            Err(SledError::LockHeld { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(SledError::Sled { source: sled::Error::Io(_), .. }) if !tried_again => tried_again = true,
            r => break r.map_err(Error::from),
        }
    }
}

/// Opens sled once, catching a panic on a damaged directory (sled 0.34
/// asserts on some malformed files) as [`SledError::Unreadable`]; an I/O
/// failure while another handle holds the directory lock is
/// [`SledError::LockHeld`].
fn open_db(config: &sled::Config, path: &Path) -> std::result::Result<sled::Db, SledError> {
    let config = config.clone();
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || config.open())) {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(source @ sled::Error::Io(_))) if lock_held(path) => {
            Err(SledError::LockHeld { path: path.to_owned(), source })
        }
        Ok(Err(source)) => Err(SledError::Sled { what: "open", source }),
        Err(_) => Err(SledError::Unreadable { path: path.to_owned() }),
    }
}
