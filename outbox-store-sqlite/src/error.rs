//! This backend's failures and their mapping to the outbox's error kinds.
//!
//! Every failure is classified by its type and, for SQLite, its primary
//! (or extended) result code; never by the text of a message.

use std::io;

use outbox_core::Error;
use rusqlite::ErrorCode;

/// A failure of the SQLite store, before it becomes an [`outbox_core::Error`].
#[derive(Debug)]
pub(crate) enum SqliteError {
    /// A SQLite call failed while doing `what`.
    Sqlite { what: &'static str, source: rusqlite::Error },
    /// A call on the leadership lock file failed while doing `what`.
    LockFile { what: &'static str, source: io::Error },
    /// SQLite would not switch the file to WAL mode (it reported `mode`).
    WalRefused { mode: String },
    /// The worker thread could not be started.
    Spawn(io::Error),
    /// The worker thread has stopped (the store is closing); `message`
    /// says when it was found.
    WorkerStopped { message: &'static str },
    /// A stored value breaks the schema's rules.
    Corrupt(String),
}

impl From<SqliteError> for Error {
    /// BUSY / LOCKED are retryable `Unavailable`, FULL is `QuotaExceeded`,
    /// NOTADB / CORRUPT are `Corrupted`, read-only and permission failures
    /// are `PermissionDenied`; a value of the wrong type or range is
    /// `Corrupted`. Lock-file failures map by their `io::ErrorKind`.
    fn from(e: SqliteError) -> Error {
        match e {
            SqliteError::Sqlite { what, source } => from_sqlite(what, source),
            SqliteError::LockFile { what, source } => from_io(what, source),
            SqliteError::WalRefused { mode } => {
                Error::Unavailable { message: format!("sqlite refused WAL mode (got {mode})"), source: None }
            }
            SqliteError::Spawn(source) => Error::Internal {
                message: "cannot start the sqlite worker".into(),
                source: Some(Box::new(source)),
            },
            SqliteError::WorkerStopped { message } => {
                Error::Unavailable { message: message.into(), source: None }
            }
            SqliteError::Corrupt(message) => Error::Corrupted { message, source: None },
        }
    }
}

fn from_sqlite(what: &str, e: rusqlite::Error) -> Error {
    let message = format!("sqlite {what}: {e}");
    match sqlite_code(&e) {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::Unavailable { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::DiskFull) => Error::QuotaExceeded { message, source: Some(Box::new(e)) },
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => {
            Error::Corrupted { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen) => {
            Error::PermissionDenied { message, source: Some(Box::new(e)) }
        }
        Some(ErrorCode::SystemIoFailure | ErrorCode::FileLockingProtocolFailed) => {
            Error::Unavailable { message, source: Some(Box::new(e)) }
        }
        _ => match e {
            // A row our schema always has is missing (the leader row,
            // say): the file was changed under us.
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..)
            | rusqlite::Error::QueryReturnedNoRows => Error::Corrupted { message, source: Some(Box::new(e)) },
            _ => Error::Internal { message, source: Some(Box::new(e)) },
        },
    }
}

fn from_io(what: &str, e: io::Error) -> Error {
    let message = format!("{what}: {e}");
    match e.kind() {
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            Error::PermissionDenied { message, source: Some(Box::new(e)) }
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            Error::QuotaExceeded { message, source: Some(Box::new(e)) }
        }
        _ => Error::Unavailable { message, source: Some(Box::new(e)) },
    }
}

/// Maps a rusqlite error, met while doing `what`, to an outbox error (see
/// [`SqliteError`]'s conversion).
pub(crate) fn map(what: &'static str, e: rusqlite::Error) -> Error {
    SqliteError::Sqlite { what, source: e }.into()
}

/// Maps a lock-file error, met while doing `what`, to an outbox error.
pub(crate) fn io_error(what: &'static str, e: io::Error) -> Error {
    SqliteError::LockFile { what, source: e }.into()
}

/// A `Corrupted` error for a stored value that breaks the schema's rules.
pub(crate) fn corrupt(message: impl Into<String>) -> Error {
    SqliteError::Corrupt(message.into()).into()
}

/// The SQLite primary error code, if `e` came from SQLite.
fn sqlite_code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// Whether `e` is SQLite's BUSY or LOCKED (by its result code, through
/// the error's source): another connection holds a lock right now.
pub(crate) fn is_busy(e: &Error) -> bool {
    let source = match e {
        Error::Unavailable { source: Some(s), .. } => s,
        _ => return false,
    };
    source
        .downcast_ref::<rusqlite::Error>()
        .and_then(sqlite_code)
        .is_some_and(|c| matches!(c, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// Whether `e` is a UNIQUE / PRIMARY KEY constraint failure (by its
/// extended result code).
pub(crate) fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && (f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY))
}
