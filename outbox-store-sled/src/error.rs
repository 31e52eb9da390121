//! This backend's failures and their mapping to the outbox's error kinds.
//!
//! Every failure is classified by its type: the [`sled::Error`] variant
//! and, for I/O, the [`io::ErrorKind`] of the error that carries the OS
//! code (found by walking the wrapped errors); never by the text of a
//! message. sled reports a held directory lock as an I/O error whose only
//! detail is its message, so that case is asked of the OS directly
//! ([`lock_held`]).

use std::fs::{File, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use outbox_core::Error;
use sled::transaction::TransactionError;

/// A failure of the sled store, before it becomes an [`outbox_core::Error`].
#[derive(Debug)]
pub(crate) enum SledError {
    /// A sled call failed while doing `what`.
    Sled { what: &'static str, source: sled::Error },
    /// A file of the store's own beside sled's (the watermark) failed
    /// while doing `what`.
    File { what: &'static str, source: io::Error },
    /// Another handle or process holds sled's directory lock on `path`;
    /// `source` is the error sled's open returned.
    LockHeld { path: PathBuf, source: sled::Error },
    /// sled panicked reading the directory at `path` (sled 0.34 asserts
    /// on some malformed files).
    Unreadable { path: PathBuf },
    /// The directory holds a sled database that is not an outbox.
    Foreign,
    /// The database at `path` recovered fewer events than were known
    /// durable.
    LostCommits { path: PathBuf, recovered: u64, known: u64 },
    /// The files reached [`SledOptions::max_size_bytes`](crate::SledOptions::max_size_bytes).
    SizeCap,
    /// The worker thread could not be started.
    Spawn(io::Error),
    /// The worker thread has stopped; `message` says when it was found.
    WorkerStopped { message: &'static str },
}

impl From<SledError> for Error {
    /// A held directory lock is `Unavailable`, corruption (and a foreign
    /// or unreadable database) is `Corrupted`, a full disk or the size cap
    /// is `QuotaExceeded`, permission and read-only failures are
    /// `PermissionDenied`; other I/O failures are `Unavailable`.
    fn from(e: SledError) -> Error {
        match e {
            SledError::Sled { what, source } => from_sled(what, source),
            SledError::File { what, source } => {
                let message = format!("sled {what}: {source}");
                from_io(message, source)
            }
            SledError::LockHeld { path, source } => Error::Unavailable {
                message: format!(
                    "sled open: the database at {} is open in another process or handle (sled locks its directory): {source}",
                    path.display()
                ),
                source: Some(Box::new(source)),
            },
            SledError::Unreadable { path } => Error::Corrupted {
                message: format!("sled could not read the database at {}", path.display()),
                source: None,
            },
            SledError::Foreign => Error::Corrupted {
                message: "the directory holds a sled database that is not an outbox".into(),
                source: None,
            },
            SledError::LostCommits { path, recovered, known } => Error::Corrupted {
                message: format!(
                    "the sled database at {} recovered only {recovered} of {known} committed events: its files were damaged or replaced",
                    path.display()
                ),
                source: None,
            },
            SledError::SizeCap => Error::QuotaExceeded {
                message: "the sled outbox reached its size cap (max_size_bytes)".into(),
                source: None,
            },
            SledError::Spawn(source) => Error::Internal {
                message: "cannot start the sled worker".into(),
                source: Some(Box::new(source)),
            },
            SledError::WorkerStopped { message } => {
                Error::Unavailable { message: message.into(), source: None }
            }
        }
    }
}

fn from_sled(what: &str, e: sled::Error) -> Error {
    let message = format!("sled {what}: {e}");
    match e {
        sled::Error::Io(io) => from_io(message, io),
        sled::Error::Corruption { .. } | sled::Error::CollectionNotFound(_) | sled::Error::Unsupported(_) => {
            Error::Corrupted { message, source: Some(Box::new(e)) }
        }
        // ReportableBug (and sled's test-only failpoints).
        _ => Error::Internal { message, source: Some(Box::new(e)) },
    }
}

fn from_io(message: String, io: io::Error) -> Error {
    match os_error(&io).kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            Error::PermissionDenied { message, source: Some(Box::new(io)) }
        }
        // ENOSPC, EDQUOT.
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            Error::QuotaExceeded { message, source: Some(Box::new(io)) }
        }
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => {
            Error::Corrupted { message, source: Some(Box::new(io)) }
        }
        _ => Error::Unavailable { message, source: Some(Box::new(io)) },
    }
}

/// The error in `e`'s chain that carries the OS error code: `e` itself,
/// or the innermost [`io::Error`] it wraps (an `io::Error::new(kind, inner)`
/// keeps `inner` as its source); `e` when none has a code.
fn os_error(e: &io::Error) -> &io::Error {
    let mut at = e;
    while at.raw_os_error().is_none() {
        match at.get_ref().and_then(|inner| inner.downcast_ref::<io::Error>()) {
            Some(inner) => at = inner,
            None => return e,
        }
    }
    at
}

/// Whether another handle or process holds sled's directory lock on the
/// database at `path`: a non-blocking exclusive lock on sled's `db` file
/// (the lock sled takes, `flock` / `LockFileEx`) fails with
/// `EWOULDBLOCK` / `ERROR_LOCK_VIOLATION`. A lock the probe gets is let
/// go at once (the file is closed).
pub(crate) fn lock_held(path: &Path) -> bool {
    match File::open(path.join("db")) {
        Ok(file) => matches!(file.try_lock(), Err(TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// Maps a sled error, met while doing `what`, to an outbox error (see
/// [`SledError`]'s conversion).
pub(crate) fn map(what: &'static str, e: sled::Error) -> Error {
    SledError::Sled { what, source: e }.into()
}

/// Maps a transaction's result error: an abort carries our own error.
pub(crate) fn map_tx(what: &'static str, e: TransactionError<Error>) -> Error {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => map(what, e),
    }
}

#[cfg(test)]
mod tests {
    use outbox_core::ErrorKind;

    use super::*;

    fn kind_of(io: io::Error) -> ErrorKind {
        Error::from(SledError::Sled { what: "test", source: sled::Error::Io(io) }).kind()
    }

    #[test]
    fn io_errors_map_by_kind() {
        assert_eq!(kind_of(io::Error::from(io::ErrorKind::StorageFull)), ErrorKind::QuotaExceeded);
        assert_eq!(kind_of(io::Error::from(io::ErrorKind::PermissionDenied)), ErrorKind::PermissionDenied);
        assert_eq!(kind_of(io::Error::from(io::ErrorKind::UnexpectedEof)), ErrorKind::Corrupted);
        assert_eq!(kind_of(io::Error::from(io::ErrorKind::TimedOut)), ErrorKind::Unavailable);
    }

    #[test]
    fn a_wrapped_os_error_maps_by_its_code() {
        // ENOSPC is 28 on Linux and macOS; the wrapper's own kind is Other.
        #[cfg(unix)]
        {
            let wrapped = io::Error::other(io::Error::from_raw_os_error(28));
            assert_eq!(kind_of(wrapped), ErrorKind::QuotaExceeded);
        }
    }

    #[test]
    fn a_held_lock_is_seen_and_a_free_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let free = dir.path().join("free");
        std::fs::create_dir(&free).unwrap();
        std::fs::write(free.join("db"), b"").unwrap();
        assert!(!lock_held(&free), "a db file nobody locks");
        let path = dir.path().join("outbox.sled");
        assert!(!lock_held(&path), "no database yet");
        let db = sled::open(&path).unwrap();
        assert!(lock_held(&path));
        let other = sled::Config::new().path(&path).open().unwrap_err();
        let e = Error::from(SledError::LockHeld { path: path.clone(), source: other });
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        assert!(e.is_retryable());
        drop(db);
    }
}
